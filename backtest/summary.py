"""Per fault type and overall: episodes caught, delays, false alerts per machine-day, and
where false alerts fall against the machines' running/idle state (see
:mod:`backtest.episodes` for the definitions)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from backtest.episodes import (
    DEFAULT_NEAR_S,
    NAN,
    NS_PER_S,
    OVERALL,
    Detection,
    Matching,
    Pointwise,
    machine_days,
)
from backtest.machine_state import StateTrack
from backtest.rows import ratio
from sensors.faults import FAULT_TYPES


@dataclass(frozen=True, slots=True)
class FaultStats:
    kind: str  # a fault type, or OVERALL
    episodes: int
    detected: int
    recall: float  # NaN without episodes
    delay_median_s: float  # NaN when nothing detected
    delay_p90_s: float  # numpy's linear-interpolated 90th percentile
    first_by: tuple[tuple[str, int], ...]  # (alert label, episodes it detected first), most first


@dataclass(frozen=True, slots=True)
class Summary:
    per_fault: tuple[FaultStats, ...]
    overall: FaultStats
    alerts: int
    true_alerts: int
    false_alerts: int
    devices: int  # devices with a span
    machine_days: float  # NaN without spans
    false_per_machine_day: float
    grace_s: float
    near_s: float
    # Where false alerts fall; None/NaN when no state information was given.
    false_near_change: int | None
    false_near_change_share: float
    false_running: int | None
    false_idle: int | None
    false_unknown_state: int | None
    false_running_share: float
    false_idle_share: float
    # Baselines for the shares above, over the devices' spans: the share of the time
    # within +-near_s of a change, and the share of the time running (what false
    # alerts at random times would give).  NaN without spans or state information.
    near_change_time_share: float
    running_time_share: float
    pointwise: Pointwise | None

    def fault(self, kind: str) -> FaultStats:
        if kind == OVERALL:
            return self.overall
        for stats in self.per_fault:
            if stats.kind == kind:
                return stats
        raise KeyError(kind)


def _fault_stats(kind: str, detections: Sequence[Detection]) -> FaultStats:
    hits = [d for d in detections if d.first_alert is not None]
    delays = np.array([d.delay_s for d in hits], dtype=np.float64)
    first_by = Counter(d.first_alert.label for d in hits if d.first_alert is not None)
    return FaultStats(
        kind=kind,
        episodes=len(detections),
        detected=len(hits),
        recall=ratio(len(hits), len(detections)),
        delay_median_s=float(np.median(delays)) if delays.size else NAN,
        delay_p90_s=float(np.percentile(delays, 90)) if delays.size else NAN,
        first_by=tuple(sorted(first_by.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def _near(ts: int, changes: np.ndarray, near_ns: int) -> bool:
    if changes.size == 0:
        return False
    i = int(np.searchsorted(changes, ts))
    neighbours = changes[max(i - 1, 0) : i + 1]
    return bool(np.min(np.abs(neighbours - ts)) <= near_ns)


def _near_time_ns(changes: np.ndarray, first: int, last: int, near_ns: int) -> int:
    """Length of the union of [c - near, c + near] over changes, clipped to the span."""
    covered, reach = 0, first
    for c in changes.tolist():
        lo, hi = max(c - near_ns, reach), min(c + near_ns, last)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return covered


def _running_time_ns(track: StateTrack, first: int, last: int) -> int:
    bounds = [first, *(c for c in track.changes_ns if first < c < last), last]
    return sum(b - a for a, b in pairwise(bounds) if track.running_at(a))


def summarize(
    matching: Matching,
    *,
    spans: Mapping[str, tuple[int, int]] | None = None,
    changes: Mapping[str, Sequence[int]] | None = None,
    states: Mapping[str, StateTrack] | None = None,
    near_s: float = DEFAULT_NEAR_S,
    pointwise: Pointwise | None = None,
    fault_types: Sequence[str] = FAULT_TYPES,
) -> Summary:
    """Per-fault and overall figures.

    ``spans`` (:func:`device_spans`) gives machine-days; ``changes`` (device -> ts_ns)
    or ``states`` (:func:`machine_states`, which also gives running/idle) say where
    false alerts fall: the share within +-``near_s`` of a state change of their device
    (devices without changes count as not near).  Shares are over all false alerts.
    Every type in ``fault_types`` gets a row, even without episodes; other kinds
    found follow, sorted.
    """
    by_kind: dict[str, list[Detection]] = {kind: [] for kind in fault_types}
    for det in matching.detections:
        by_kind.setdefault(det.episode.kind, []).append(det)
    extra = sorted(set(by_kind) - set(fault_types))
    per_fault = tuple(_fault_stats(kind, by_kind[kind]) for kind in (*fault_types, *extra))
    overall = _fault_stats(OVERALL, matching.detections)

    false = matching.false_alerts
    n_false = len(false)
    days = machine_days(spans) if spans is not None else NAN

    if changes is None and states is not None:
        changes = {device: track.changes_ns for device, track in states.items()}
    near_count: int | None = None
    near_time = running_time = NAN
    total_ns = sum(last - first for first, last in spans.values()) if spans else 0
    if changes is not None:
        near_ns = round(near_s * NS_PER_S)
        sorted_changes = {d: np.sort(np.asarray(c, dtype=np.int64)) for d, c in changes.items()}
        empty = np.zeros(0, dtype=np.int64)
        near_count = sum(
            _near(a.ts_ns, sorted_changes.get(a.device, empty), near_ns) for a in false
        )
        if spans:
            covered = sum(
                _near_time_ns(sorted_changes.get(d, empty), first, last, near_ns)
                for d, (first, last) in spans.items()
            )
            near_time = ratio(covered, total_ns)
    if states is not None and spans:
        # Only devices with a known state count, as in false_running_share's numerator.
        known = {d: span for d, span in spans.items() if d in states}
        running_time = ratio(
            sum(_running_time_ns(states[d], a, b) for d, (a, b) in known.items()),
            sum(b - a for a, b in known.values()),
        )

    running = idle = unknown = None
    if states is not None:
        running = idle = unknown = 0
        for alert in false:
            track = states.get(alert.device)
            if track is None:
                unknown += 1
            elif track.running_at(alert.ts_ns):
                running += 1
            else:
                idle += 1

    return Summary(
        per_fault=per_fault,
        overall=overall,
        alerts=len(matching.alerts),
        true_alerts=len(matching.alerts) - n_false,
        false_alerts=n_false,
        devices=0 if spans is None else len(spans),
        machine_days=days,
        false_per_machine_day=ratio(n_false, days) if math.isfinite(days) else NAN,
        grace_s=matching.grace_s,
        near_s=float(near_s),
        false_near_change=near_count,
        false_near_change_share=NAN if near_count is None else ratio(near_count, n_false),
        false_running=running,
        false_idle=idle,
        false_unknown_state=unknown,
        false_running_share=NAN if running is None else ratio(running, n_false),
        false_idle_share=NAN if idle is None else ratio(idle, n_false),
        near_change_time_share=near_time,
        running_time_share=running_time,
        pointwise=pointwise,
    )
