"""Publish a simulation to the broker and count exactly what the broker accepted."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from common.mqtt import MqttSettings
from common.progress import Progress
from contract import encode_reading
from sensors.dataset_writer import DatasetWriter
from sensors.pacing import Pacer, ms_after
from sensors.publisher import DeliveryStats, ReadingPublisher
from sensors.simulator import Simulator

log = logging.getLogger(__name__)

# Two readings of one device must differ by at least a millisecond (the ts resolution).
_MIN_DEVICE_GAP_S = 0.002
_ROOM_POLL_S = 0.05


@dataclass
class PublishStats(DeliveryStats):
    dropped: int = 0  # samples lost to dropout faults: never sent, by design
    # Queued readings per label (fault type or "none"), and fault episodes per type.
    labels: Counter[str] = field(default_factory=Counter)
    episodes: Counter[str] = field(default_factory=Counter)


def wait_for_room(publisher: ReadingPublisher, max_pending: int, stop: threading.Event) -> bool:
    """Back-pressure that a signal can interrupt (a blocking publish() cannot be).

    Only for a single producer thread: then room seen here is room in publish().
    """
    while publisher.pending >= max_pending:
        if stop.wait(_ROOM_POLL_S):
            return False
    return True


def run_publish(
    settings: MqttSettings,
    sim: Simulator,
    *,
    count: int | None = None,
    duration_s: float | None = None,
    speed: float = 0.0,
    stop: threading.Event | None = None,
    labels_out: TextIO | None = None,
    client_id: str | None = None,
    max_pending: int = 10_000,
    connect_timeout_s: float = 10.0,
    flush_timeout_s: float = 30.0,
) -> PublishStats:
    """Publish ``count`` readings and/or ``duration_s`` simulated seconds, QoS 1.

    ``speed`` 0 publishes as fast as possible on a simulated clock that ends before
    now; ``speed`` > 0 paces devices in wall-clock time (1 = real time) and stamps
    readings with the wall clock.  Without count and duration (paced only) it runs
    until ``stop`` is set.  ``labels_out`` receives the labelled rows of what was
    queued (dataset CSV layout, with the timestamps actually sent).
    """
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError("speed must be >= 0")
    if speed == 0 and count is None and duration_s is None:
        raise ValueError("as fast as possible needs a count or a duration")
    if speed > 0 and sim.interval_s / speed < _MIN_DEVICE_GAP_S:
        raise ValueError("interval / speed is below 2 ms: timestamps would collide")
    stop = stop or threading.Event()
    max_steps = sim.steps_for_duration(duration_s) if duration_s is not None else None
    if speed == 0:
        if count is not None and max_steps is not None:
            steps = min(max_steps, sim.steps_for_count(count))
            start = sim.backdated_start(duration_s=steps * sim.interval_s)
        else:
            start = sim.backdated_start(count=count, duration_s=duration_s)
        pacer = None
    else:
        start = 0.0
        pacer = Pacer(speed, stop)
    run = sim.run(start_ts=start, max_steps=max_steps)
    total = count if count is not None else (max_steps or 0) * len(sim.devices)
    progress = Progress(total or None, "simulate", log)
    labels = DatasetWriter(labels_out) if labels_out is not None else None
    stats = PublishStats()
    last_ts: dict[str, float] = {}
    publisher = ReadingPublisher(
        settings, client_id or f"sensors-simulate-{os.getpid()}", max_pending
    )
    began = time.monotonic()
    publisher.start(connect_timeout_s)
    try:
        for reading in run:
            if stop.is_set():
                break
            ts = reading.ts
            if pacer is not None:
                scheduled = pacer.wait(reading.ts - start)
                if scheduled is None:
                    break
                ts = ms_after(scheduled, last_ts.get(reading.device))
                last_ts[reading.device] = ts
            if not wait_for_room(publisher, max_pending, stop):
                break
            payload = encode_reading(reading.values, ts=ts, seq=reading.seq)
            if not publisher.publish(reading.line, reading.device, payload):
                continue
            stats.queued += 1
            stats.per_device[reading.line, reading.device] += 1
            stats.labels[reading.fault] += 1
            if labels is not None:
                labels.write(reading, ts)
            progress.advance()
            if count is not None and stats.queued >= count:
                break
    finally:
        stats.settle(publisher, flush_timeout_s, stop, began)
        stats.dropped = run.dropped
        stats.episodes = run.episodes
    progress.done()
    return stats


def _pairs(counts: Counter[str]) -> str:
    return ",".join(f"{key}:{n}" for key, n in sorted(counts.items())) or "-"


def summary_line(stats: PublishStats) -> str:
    """One machine-readable line for scripts and tests (published count first)."""
    return (
        f"published={stats.published} queued={stats.queued} refused={stats.refused} "
        f"unacknowledged={stats.unacknowledged} dropped={stats.dropped} "
        f"labels={_pairs(stats.labels)} episodes={_pairs(stats.episodes)}\n"
    )


def log_publish_summary(stats: PublishStats) -> None:
    log.info(
        "published %d readings (acknowledged by the broker) in %.1f s%s",
        stats.published,
        stats.elapsed_s,
        " (interrupted)" if stats.interrupted else "",
    )
    log.info("readings per label: %s", dict(sorted(stats.labels.items())))
    log.info("fault episodes: %s", dict(sorted(stats.episodes.items())))
    log.info("dropped (dropout faults, not sent): %d", stats.dropped)
    if not stats.complete:
        log.warning(
            "%d queued, %d refused by the broker, %d not acknowledged",
            stats.queued,
            stats.refused,
            stats.unacknowledged,
        )
