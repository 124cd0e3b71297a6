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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from backtest.rows import as_keys, as_ns, by_device, check_lengths, ratio, segments
from model.dataset import NORMAL_TOKENS
from sensors.faults import DROPOUT

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
        precision=ratio(tp, tp + fp),
        recall=ratio(tp, tp + fn),
        f1=ratio(2 * tp, 2 * tp + fp + fn),
        fpr=ratio(fp, fp + tn),
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
