"""Alert quality judged event by event against labelled fault episodes.

Pure numpy/python, no I/O.  All timestamps are integer nanoseconds since the epoch on
the readings' clock (the CSV's ``ts``); alerts must be stamped on the same clock.

Definitions
-----------
Episode
    A maximal run of consecutive readings of one device (in ts order) that carry the
    same fault label other than a normal token (``none``, ``normal``, ``""``, ... as in
    :data:`model.dataset.NORMAL_TOKENS`).  ``start_ns``/``end_ns`` are the ts of its
    first and last reading, ``n_readings`` the length of the run.
Dropout episode
    Lost readings leave no row.  A jump ``d = seq[i+1] - seq[i] > 1`` between two
    consecutive readings of a device is one ``dropout`` episode of ``d - 1`` lost
    samples (``n_readings = d - 1``).  With the sampling interval ``I`` (``interval_s``,
    else the gap's own mean spacing ``(ts[i+1] - ts[i]) / d``), ``start_ns = ts[i] + I``
    and ``end_ns = ts[i+1] - I``: the nominal times of the first and the last lost
    sample (``end_ns`` is clamped to ``>= start_ns`` if ts jitter makes them cross).
    A dropout at the very start or end of a device's data has no reading on one side
    and is not seen; seq going backwards (a node restart) is not a gap.  Rows labelled
    ``dropout`` (other sources) form runs like any other label; they are not merged
    with a seq gap next to them.
Matching (:func:`match`)
    Episode window = ``[start_ns, end_ns + grace]``.  Each alert goes to at most one
    episode of its own device whose window contains it: the one in progress
    (``start <= ts <= end``) if any, else the one that ended most recently.  Assigned
    alerts are true, all others false; so a grace window that reaches into the next
    episode never lets one alert detect two episodes or count twice.  An episode is
    detected iff at least one alert was assigned to it; delay = first assigned alert's
    ts - ``start_ns`` (>= 0).
False alerts per machine-day
    false alerts / machine-days, where machine-days = sum over devices of (ts of last
    reading - ts of first reading) / 1 day, i.e. number of devices x their mean
    observed span (:func:`device_spans`, :func:`machine_days`).
Machine state
    See :mod:`backtest.machine_state`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from backtest.machine_state import StateTrack
from backtest.rows import as_keys, as_ns, by_device, check_lengths, segments
from model.dataset import NORMAL_TOKENS
from sensors.faults import DROPOUT, FAULT_TYPES

NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
DEFAULT_GRACE_S = 30.0
DEFAULT_NEAR_S = 60.0
OVERALL = "all"
NAN = float("nan")


@dataclass(frozen=True, slots=True)
class Episode:
    """One labelled fault episode of one device (see the module doc for dropouts)."""

    device: str  # "line1/press-01"
    kind: str  # fault type, e.g. "stuck"
    start_ns: int
    end_ns: int
    n_readings: int  # dropout: samples lost

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / NS_PER_S


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A new firing transition (repeats and renotifications are not events)."""

    device: str
    ts_ns: int
    kind: str  # "process_anomaly", "sensor_fault", ...
    detail: str = ""  # sub-kind: "stuck", "impossible_jump", "dropout", ...

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.detail}" if self.detail else self.kind


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else NAN


# --------------------------------------------------------------------------- episodes


def episodes_from_labels(
    keys: Sequence[str] | np.ndarray,
    ts_ns: Sequence[int] | np.ndarray,
    faults: Sequence[str] | np.ndarray,
    seq: Sequence[int] | np.ndarray | None = None,
    interval_s: float | None = None,
) -> list[Episode]:
    """Fault episodes from per-reading labels, rows in any order; sorted by start.

    ``keys``: device key per row; ``faults``: label per row; ``seq``: the device's
    sample counter, whose gaps are dropouts (module doc).  Kinds are lower-cased.
    """
    k = as_keys(keys)
    ts = as_ns(ts_ns)
    labels = np.asarray(faults).astype(str)
    seqs = None if seq is None else np.asarray(seq).astype(np.int64)
    n = check_lengths(keys=k, ts_ns=ts, faults=labels, seq=seqs)
    if n == 0:
        return []
    names, dev, order = by_device(k, ts, seqs)
    t = ts[order]
    uniq, lab = np.unique(np.char.lower(np.char.strip(labels[order])), return_inverse=True)
    lab = lab.ravel()
    kinds = uniq.tolist()
    normal = np.array([kind in NORMAL_TOKENS for kind in kinds])

    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (dev[1:] != dev[:-1]) | (lab[1:] != lab[:-1])
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:] - 1, n - 1)
    keep = ~normal[lab[starts]]
    out = [
        Episode(str(names[dev[s]]), kinds[lab[s]], int(t[s]), int(t[e]), int(e - s + 1))
        for s, e in zip(starts[keep].tolist(), ends[keep].tolist(), strict=True)
    ]

    if seqs is not None:
        s_sorted = seqs[order]
        step = np.diff(s_sorted)
        gaps = np.flatnonzero((dev[1:] == dev[:-1]) & (step > 1))
        fixed_ns = None if interval_s is None else float(interval_s) * NS_PER_S
        for i in gaps.tolist():
            d = int(step[i])
            before, after = int(t[i]), int(t[i + 1])
            spacing = fixed_ns if fixed_ns is not None else (after - before) / d
            start = round(before + spacing)
            end = max(start, round(after - spacing))
            out.append(Episode(str(names[dev[i]]), DROPOUT, start, end, d - 1))

    out.sort(key=lambda e: (e.start_ns, e.device, e.kind))
    return out


def device_spans(
    keys: Sequence[str] | np.ndarray, ts_ns: Sequence[int] | np.ndarray
) -> dict[str, tuple[int, int]]:
    """Device -> (ts of its first reading, ts of its last reading)."""
    k = as_keys(keys)
    ts = as_ns(ts_ns)
    check_lengths(keys=k, ts_ns=ts)
    names, dev, order = by_device(k, ts)
    t = ts[order]
    return {str(names[dev[a]]): (int(t[a]), int(t[b - 1])) for a, b in segments(dev)}


def machine_days(spans: Mapping[str, tuple[int, int]]) -> float:
    """Sum of the devices' observed spans, in days."""
    return sum(last - first for first, last in spans.values()) / NS_PER_DAY


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class Detection:
    """How one episode fared: the first alert assigned to it and how many there were."""

    episode: Episode
    first_alert: AlertEvent | None
    n_alerts: int

    @property
    def detected(self) -> bool:
        return self.first_alert is not None

    @property
    def delay_s(self) -> float:
        """First alert ts - episode start, seconds; NaN when not detected."""
        if self.first_alert is None:
            return NAN
        return (self.first_alert.ts_ns - self.episode.start_ns) / NS_PER_S


@dataclass(frozen=True, slots=True)
class Matching:
    detections: tuple[Detection, ...]  # one per episode, in the order given
    alerts: tuple[AlertEvent, ...]  # sorted by ts
    assigned: tuple[int, ...]  # per alert: index into detections, -1 = false alert
    grace_s: float

    @property
    def true_alerts(self) -> tuple[AlertEvent, ...]:
        return tuple(a for a, j in zip(self.alerts, self.assigned, strict=True) if j >= 0)

    @property
    def false_alerts(self) -> tuple[AlertEvent, ...]:
        return tuple(a for a, j in zip(self.alerts, self.assigned, strict=True) if j < 0)


def match(
    episodes: Sequence[Episode],
    alerts: Sequence[AlertEvent],
    *,
    grace_s: float = DEFAULT_GRACE_S,
) -> Matching:
    """Assign alerts to episodes (module doc): detections, delays, true/false alerts."""
    if grace_s < 0:
        raise ValueError("grace must be >= 0")
    eps = list(episodes)
    grace_ns = round(grace_s * NS_PER_S)
    windows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    per_device: dict[str, list[int]] = {}
    for j, ep in enumerate(eps):
        per_device.setdefault(ep.device, []).append(j)
    for device, ids in per_device.items():
        windows[device] = (
            np.array([eps[j].start_ns for j in ids], dtype=np.int64),
            np.array([eps[j].end_ns for j in ids], dtype=np.int64),
            np.array(ids, dtype=np.int64),
        )

    ordered = sorted(alerts, key=lambda a: (a.ts_ns, a.device, a.kind, a.detail))
    first: list[AlertEvent | None] = [None] * len(eps)
    counts = [0] * len(eps)
    assigned: list[int] = []
    for alert in ordered:
        j = -1
        win = windows.get(alert.device)
        if win is not None:
            starts, ends, ids = win
            ts = alert.ts_ns
            cand = np.flatnonzero((starts <= ts) & (ts <= ends + grace_ns))
            if cand.size:
                running = cand[ends[cand] >= ts]
                # In progress beats "just ended": the alert belongs to the live fault.
                pick = (
                    running[np.argmax(starts[running])]
                    if running.size
                    else cand[np.argmax(ends[cand])]
                )
                j = int(ids[pick])
        assigned.append(j)
        if j >= 0:
            counts[j] += 1
            if first[j] is None:
                first[j] = alert
    detections = tuple(Detection(ep, first[j], counts[j]) for j, ep in enumerate(eps))
    return Matching(detections, tuple(ordered), tuple(assigned), float(grace_s))


# --------------------------------------------------------------------------- pointwise


@dataclass(frozen=True, slots=True)
class Pointwise:
    """Per-reading figures; undefined ratios are NaN.

    Unscored rows (warm-up) count as not flagged: an anomaly there is a miss, a normal
    row a true negative; ``unscored``/``unscored_anomalies`` say how many there were.
    """

    rows: int
    anomalies: int
    unscored: int
    unscored_anomalies: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float
    fpr: float  # false positives / normal rows


def pointwise(
    flags: Sequence[bool] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    scored: Sequence[bool] | np.ndarray | None = None,
) -> Pointwise:
    """Precision/recall/F1/FPR of per-reading ``flags`` against 0/1 ``labels``.

    ``scored`` (optional mask): rows that had a score; a flag on an unscored row is
    ignored.
    """
    flag = np.asarray(flags).astype(bool).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    ok = np.ones_like(flag) if scored is None else np.asarray(scored).astype(bool).ravel()
    check_lengths(flags=flag, labels=y, scored=ok)
    flag &= ok
    tp = int(np.count_nonzero(flag & y))
    fp = int(np.count_nonzero(flag & ~y))
    fn = int(np.count_nonzero(~flag & y))
    tn = int(np.count_nonzero(~flag & ~y))
    return Pointwise(
        rows=int(y.size),
        anomalies=tp + fn,
        unscored=int(np.count_nonzero(~ok)),
        unscored_anomalies=int(np.count_nonzero(~ok & y)),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        fpr=_ratio(fp, fp + tn),
    )


def pointwise_from_scores(
    scores: Sequence[float] | np.ndarray,
    threshold: float,
    labels: Sequence[int] | np.ndarray,
) -> Pointwise:
    """As :func:`pointwise` with flag = ``score >= threshold``; NaN score = unscored."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    scored = np.isfinite(s)
    flags = np.zeros(s.shape, dtype=bool)
    flags[scored] = s[scored] >= threshold
    return pointwise(flags, labels, scored=scored)


# --------------------------------------------------------------------------- summary


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
        recall=_ratio(len(hits), len(detections)),
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
            near_time = _ratio(covered, total_ns)
    if states is not None and spans:
        # Only devices with a known state count, as in false_running_share's numerator.
        known = {d: span for d, span in spans.items() if d in states}
        running_time = _ratio(
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
        false_per_machine_day=_ratio(n_false, days) if math.isfinite(days) else NAN,
        grace_s=matching.grace_s,
        near_s=float(near_s),
        false_near_change=near_count,
        false_near_change_share=NAN if near_count is None else _ratio(near_count, n_false),
        false_running=running,
        false_idle=idle,
        false_unknown_state=unknown,
        false_running_share=NAN if running is None else _ratio(running, n_false),
        false_idle_share=NAN if idle is None else _ratio(idle, n_false),
        near_change_time_share=near_time,
        running_time_share=running_time,
        pointwise=pointwise,
    )
