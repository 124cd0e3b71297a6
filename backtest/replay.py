"""Replay a labelled file through the gateway's own detection code, offline.

The readings go, in time order and in one-second batches of their own clock, through
:class:`gateway.detection.Detection`: the same model inputs, scorer, alert
lifecycle and sensor-fault rules (the deadman included, on the readings' clock) that
the running gateway uses, with the rules of a gateway config file.  What comes out
is every alert the gateway would have raised, and each reading's score.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from backtest.episodes import AlertEvent
from contract import Reading
from gateway.alerts import FIRING, RESOLVED
from gateway.config import AlertConfig, SensorFaultConfig
from gateway.detection import PROCESS_ANOMALY, SENSOR_FAULT, Detection
from model.scorer import Scorer

_LOG = logging.getLogger(__name__)
NS = 1_000_000_000
# The gateway checks its deadman about once a second; so does the replay, on the
# readings' clock.
BATCH_NS = NS


@dataclass(frozen=True)
class Recording:
    """What the file says, in time order: who, when, values, labels."""

    lines: np.ndarray  # str per row
    devices: np.ndarray
    ts_ns: np.ndarray  # int64
    values: np.ndarray  # (n, k) in ``fields`` order
    fields: tuple[str, ...]
    seq: np.ndarray | None = None  # int64, -1 where absent
    labels: np.ndarray | None = None  # 0/1
    faults: np.ndarray | None = None  # fault type per row

    @property
    def keys(self) -> np.ndarray:
        return np.char.add(np.char.add(self.lines.astype(str), "/"), self.devices.astype(str))

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def of_history(cls, history, rows: np.ndarray) -> Recording:
        """Rows ``rows`` (in that order) of stored readings
        (:class:`model.influx_history.History`)."""
        lines, devices = history.line_device()
        return cls(
            lines=lines[rows],
            devices=devices[rows],
            ts_ns=history.ts_ns[rows],
            values=history.X[rows],
            fields=history.fields,
        )


@dataclass(frozen=True)
class Replay:
    scores: np.ndarray  # per row, NaN = not scored
    flags: np.ndarray  # per row
    alerts: list[AlertEvent]  # new firings only (reminders are not new alerts)
    reminders: list[AlertEvent]  # repeats of an alert already firing (renotify_s)
    seconds: float
    # Alerts going back to normal (same kind and detail as their firing): with
    # ``alerts`` they give each alert's period (:func:`alert_periods`).
    resolutions: list[AlertEvent] = field(default_factory=list)


def _batches(ts_ns: np.ndarray) -> Iterator[tuple[int, int]]:
    """Row ranges covering one second of the readings' clock each."""
    if ts_ns.size == 0:
        return
    second = (ts_ns - ts_ns[0]) // BATCH_NS
    bounds = np.flatnonzero(np.diff(second)) + 1
    starts = np.r_[0, bounds]
    stops = np.r_[bounds, ts_ns.size]
    yield from zip(starts.tolist(), stops.tolist(), strict=True)


def replay(
    recording: Recording,
    scorer: Scorer,
    alerts: AlertConfig,
    sensor_faults: SensorFaultConfig,
) -> Replay:
    missing = [f for f in scorer.raw_fields if f not in recording.fields]
    if missing:
        raise ValueError(f"the file has no column for the model's field(s) {missing}")
    columns = [recording.fields.index(f) for f in scorer.raw_fields]
    detection = Detection(alerts, sensor_faults)
    n = len(recording)
    scores = np.full(n, np.nan)
    flags = np.zeros(n, dtype=bool)
    events: list[AlertEvent] = []
    reminders: list[AlertEvent] = []
    resolutions: list[AlertEvent] = []
    started = time.perf_counter()
    lines, devices, ts = recording.lines, recording.devices, recording.ts_ns
    values = recording.values[:, columns]
    seq = recording.seq
    for start, stop in _batches(ts):
        readings = [
            Reading(
                str(lines[i]),
                str(devices[i]),
                int(ts[i]),
                dict(zip(scorer.raw_fields, values[i].tolist(), strict=True)),
                None if seq is None or seq[i] < 0 else int(seq[i]),
            )
            for i in range(start, stop)
        ]
        now = int(ts[stop - 1])
        decided = detection.decide(readings, scorer, now / NS)
        scores[start:stop] = decided.scores
        flags[start:stop] = decided.flags
        for alert in decided.alerts:
            r = readings[alert.at]
            if alert.state == FIRING:
                detail = alert.drivers[0][0] if alert.drivers else ""
                event = AlertEvent(f"{r.line}/{r.device}", r.ts_ns, PROCESS_ANOMALY, detail)
                (reminders if alert.repeat else events).append(event)
            elif alert.state == RESOLVED:
                resolutions.append(AlertEvent(f"{r.line}/{r.device}", r.ts_ns, PROCESS_ANOMALY))
        fault_events = [tr for _, tr in decided.faults] + detection.check_deadman(now / NS, now)
        for tr in fault_events:
            if tr.state in (FIRING, RESOLVED):
                event = AlertEvent(f"{tr.line}/{tr.device}", tr.ts_ns, SENSOR_FAULT, tr.fault)
                (events if tr.state == FIRING else resolutions).append(event)
    seconds = time.perf_counter() - started
    _LOG.info(
        "replayed %d readings in %.1f s (%.0f readings/s)", n, seconds, n / max(seconds, 1e-9)
    )
    return Replay(scores, flags, events, reminders, seconds, resolutions)


@dataclass(frozen=True, slots=True)
class AlertPeriod:
    """One alert of a replay, from its firing to its resolution (or the replay's end)."""

    device: str  # "line/device"
    kind: str  # process_anomaly, sensor_fault
    detail: str  # first driver, or the sensor fault's type
    start_ns: int
    end_ns: int
    resolved: bool


def alert_periods(result: Replay, end_ns: int) -> list[AlertPeriod]:
    """Each firing paired with the next resolution of the same device and kind (and,
    for sensor faults, fault type); one still firing runs to ``end_ns``."""
    open_: dict[tuple[str, str, str], AlertEvent] = {}
    out: list[AlertPeriod] = []

    def key(e: AlertEvent) -> tuple[str, str, str]:
        return (e.device, e.kind, e.detail if e.kind == SENSOR_FAULT else "")

    events = [(e.ts_ns, 1, e) for e in result.alerts]
    events += [(e.ts_ns, 0, e) for e in result.resolutions]
    # At one instant a resolution comes before a new firing.
    for _, firing, e in sorted(events, key=lambda x: (x[0], x[1])):
        k = key(e)
        if firing:
            open_[k] = e
        elif k in open_:
            f = open_.pop(k)
            out.append(AlertPeriod(f.device, f.kind, f.detail, f.ts_ns, e.ts_ns, True))
    for f in open_.values():
        out.append(AlertPeriod(f.device, f.kind, f.detail, f.ts_ns, max(end_ns, f.ts_ns), False))
    return sorted(out, key=lambda p: (p.start_ns, p.device, p.kind))
