"""The InfluxDB writer thread: large line-protocol batches, a quick spool, late acks.

Scored batches arrive on a bounded queue (full queue = back-pressure on scoring).
The writer merges them into writes of up to ``batch_max_points`` points or
``flush_interval_ms``, whichever comes first, and acknowledges the MQTT messages of
a batch only once every point is settled: stored, spooled, or (refused by InfluxDB)
dead-lettered (see ``gateway.store``).

With a spool (the default), InfluxDB gets ``spool_after_s`` (1 s) to answer a
write; a batch it does not take in that time, because it is down *or* hung (accepts
connections, never answers), goes to the on-disk spool and is acknowledged once
committed there.  While the spool holds anything, new batches queue behind it, and
the :class:`~gateway.drainer.Drainer` thread writes them to InfluxDB oldest first,
with the full ``timeout_s``.  So the intake never waits behind a slow InfluxDB.
Without a spool nothing is acknowledged until InfluxDB takes it: the broker keeps
the readings, and the gateway's flow-control bound stops the intake.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.logs import RateLimitedLog
from gateway.config import InfluxConfig
from gateway.metrics import GatewayMetrics
from gateway.sinks import WriteError
from gateway.spool import Spool
from gateway.store import Origin, Points, Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WriteBatch:
    lines: list[str]
    # (session, mid, qos) of every MQTT message the batch covers, rejected ones included, so
    # acknowledgements go out in the order the messages arrived.
    acks: list[tuple[Any, int, int]]
    readings: int = 0
    # Line index -> the reading message it encodes, for dead-lettering a refused point.
    origins: dict[int, Origin] = field(default_factory=dict)


class Writer(threading.Thread):
    def __init__(
        self,
        store: Store,
        cfg: InfluxConfig,
        metrics: GatewayMetrics,
        ack: Callable[[list[tuple[Any, int, int]]], None],
        max_batches: int,
        health_point: Callable[[], str] | None = None,
        health_interval_s: float = 0.0,
        spool: Spool | None = None,
        on_settled: Callable[[], None] | None = None,
        on_spooled: Callable[[], None] | None = None,
    ):
        super().__init__(name="influx-writer", daemon=True)
        self._store = store
        self._cfg = cfg
        self._metrics = metrics
        self._ack = ack
        self._queue: queue.Queue[WriteBatch] = queue.Queue(maxsize=max_batches)
        self._health_point = health_point
        self._health_interval = health_interval_s
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._ratelog = RateLimitedLog(log, 10.0)
        self.unacked = 0
        self._unacked_lock = threading.Lock()
        self._spool = spool
        # Called after each acknowledgement: the intake may take more messages.
        self._on_settled = on_settled
        # Called when the spool gets a batch (wakes the drainer).
        self._on_spooled = on_spooled
        # Updated every loop and every retry wait: the watchdog's proof of life.
        self.heartbeat = time.monotonic()

    def submit(self, batch: WriteBatch) -> None:
        with self._unacked_lock:
            self.unacked += len(batch.acks)
        self._queue.put(batch)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        return self._queue.full()

    def stop(self, timeout_s: float) -> bool:
        """Flush what is queued; give up after ``timeout_s`` (unflushed = not acked)."""
        self._stopping.set()
        self.join(timeout_s)
        if self.is_alive():
            self._abandon.set()
            self.join(5.0)
            return False
        return True

    def _collect(self) -> list[WriteBatch]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batches = [first]
        points = len(first.lines)
        deadline = time.monotonic() + self._cfg.flush_interval_ms / 1000
        while points < self._cfg.batch_max_points:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self._stopping.is_set():
                break
            try:
                if remaining > 0:
                    nxt = self._queue.get(timeout=remaining)
                else:  # stopping: drain without waiting
                    nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            batches.append(nxt)
            points += len(nxt.lines)
        return batches

    def run(self) -> None:
        next_health = time.monotonic() + self._health_interval
        while True:
            self.heartbeat = time.monotonic()
            batches = self._collect()
            points = Points.merge([Points(b.lines, b.origins, b.readings) for b in batches or []])
            if self._health_point and self._health_interval and time.monotonic() >= next_health:
                points.lines.append(self._health_point())
                next_health = time.monotonic() + self._health_interval
            if points.lines and not self._settle(points):
                return  # abandoned at shutdown: nothing acked, the broker redelivers
            for b in batches:
                self._ack(b.acks)
                with self._unacked_lock:
                    self.unacked -= len(b.acks)
            if batches and self._on_settled is not None:
                self._on_settled()
            if self._stopping.is_set() and self._queue.empty() and not batches:
                return

    def _settle(self, points: Points) -> bool:
        """Make a batch durable: InfluxDB, else the spool, else wait (no ack)."""
        if self._spool is None:
            return self._write_retrying(points)
        # While the spool holds anything, new batches queue behind it so that
        # InfluxDB receives everything in order.
        if self._spool.empty:
            try:
                self._store.write(points, self._cfg.spool_after_s)
                return True
            except WriteError as exc:
                self._ratelog.warning("write", "%s; spooling", exc)
        delay = self._cfg.retry_min_s
        while not self._spool.append(points):
            self._metrics.count_spool_full()
            self._ratelog.warning(
                "spool-full",
                "spool full (%d bytes); not acknowledging until InfluxDB drains it",
                self._spool.bytes,
            )
            self.heartbeat = time.monotonic()
            if self._abandon.wait(delay):
                return False
            delay = min(delay * 2, self._cfg.retry_max_s)
        self._metrics.count_spooled(len(points.lines), self._spool)
        if self._on_spooled is not None:
            self._on_spooled()
        return True

    def _write_retrying(self, points: Points) -> bool:
        """Without a spool: retry until written; False only when abandoned at shutdown."""
        delay = self._cfg.retry_min_s
        while True:
            try:
                self._store.write(points, self._cfg.timeout_s)
                return True
            except WriteError as exc:
                self._ratelog.warning("write", "%s", exc)
            self.heartbeat = time.monotonic()
            if self._abandon.wait(delay):
                return False
            delay = min(delay * 2, self._cfg.retry_max_s)
