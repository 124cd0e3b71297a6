"""Retrain from InfluxDB history; promote only if the backtest says it is not worse.

1. Read the gateway's scored readings for the time range (and line / device filter)
   from InfluxDB (:mod:`model.influx_history`), and its ``sensor_fault`` periods.
2. Split the history in time: the latest ``holdout_fraction`` of the readings is held
   out; the candidate learns from the older part.  What must not be learnt as normal
   is the readings flagged ``is_anomaly`` when they were scored and those of a device
   within ``fault_margin_s`` of one of its sensor-fault periods:

   * ``isolation_forest`` / ``pca_t2q`` are simply not trained on them (nor, with
     stream features, on readings whose window holds one, nor on warm-up readings);
   * the time-aware detector (``dynamics``) learns per device from each device's
     whole history in time order; dropping rows would splice readings minutes apart
     into one series and teach it jumps.  So it gets every reading, with the excluded
     ones labelled anomalous: its control limits ignore them (and the
     ``fault_margin_s`` after them), and its per-device fit does not learn from large
     residuals anyway.

3. Replay the held-out part through the gateway's own decision code
   (:func:`backtest.replay.replay`, the alert and sensor-fault rules of the gateway
   config) with the active model and with the candidate.  Each replay starts
   ``history_readings`` readings per device before the split, so per-device state
   is complete where counting starts; only alerts from the split on count.
4. Judge events (:mod:`backtest.episodes`).  The history has no labels, so every
   process-anomaly alert counts as false, unless it falls within ``fault_margin_s``
   (+ the matching grace) of a recorded sensor-fault period: those periods are the
   only known episodes.  With a labelled CSV both models are also replayed over it
   and compared on episode recall per fault type.
5. Save the candidate as a new version (always, for inspection) and activate it only
   if it is not worse, or with ``force``.

Operators' labels (``alert_label``, :mod:`model.alert_labels`; ``labels="use"``, the
default; ``"gate"`` judges by them only, ``"ignore"`` / ``--no-labels`` is the behaviour
without labels):

* training: flagged readings of a device inside the period of a process-anomaly alert
  labelled ``false_alarm`` are trained on as normal operation (they are no longer
  excluded); readings inside, or within ``fault_margin_s`` of, an alert labelled
  ``real_fault`` are excluded, flagged or not.  The summary counts both.
* held-out backtest: confirmed faults are known episodes (an alert on one is not false).
* label gate: both models are replayed (``history_readings`` of context per device
  before each labelled period) over the labelled process-anomaly periods and judged by
  :func:`backtest.labels.judge_labels`.  **The gate deliberately ignores the time
  split**: a labelled period in the training part is judged too, and the candidate
  has (rightly) learnt from it.  The labels are what operators told us about those
  very periods; the gate checks the candidate now agrees with them, while the held-out
  check still guards against a candidate that is worse on data it has not seen.

"Not worse" (all must hold; tolerances in :class:`Tolerances`):

* held-out false alerts per machine-day: candidate <= active + tolerance;
* with a labelled CSV, for every fault type with episodes: episode recall
  candidate >= active - tolerance (default 0: no episode type may be lost);
* with labelled false alarms: the candidate's alerts on them < the active model's
  (<= when the active model raised none);
* with confirmed faults: the candidate catches every one the active model caught.

Pointwise figures of the old rule (the share of clean held-out readings at or above
the threshold, the flap rate) are still reported, as side figures.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backtest.episodes import (
    DEFAULT_GRACE_S,
    Episode,
    device_spans,
    episodes_from_labels,
    match,
    pointwise,
)
from backtest.load import read_recording
from backtest.replay import Recording, replay
from backtest.report import json_safe
from backtest.summary import summarize
from contract.timestamps import CSV_DEFAULT
from gateway.config import GatewayConfig, load_gateway_config
from gateway.detection import PROCESS_ANOMALY
from model.alert_labels import (
    LabelledAlert,
    LabelMasks,
    count_labels,
    label_masks,
    read_labels,
)
from model.artifact import ModelError, activate, active_version, save_artifact
from model.config import RetrainSettings
from model.dataset import Dataset, DatasetError
from model.detectors import TIME_AWARE
from model.influx_history import (
    NS,
    FaultPeriod,
    History,
    HistoryFilter,
    InfluxV1,
    fault_intervals,
    iso_ns,
    near_faults,
    read_fault_periods,
    read_history,
)
from model.label_gate import backtest_labels, label_checks, label_rows
from model.scorer import Scorer, load_scorer
from model.stream_features import DeviceRows, StreamSpec, compute_offline
from model.training import MIN_FIT_ROWS, train

_LOG = logging.getLogger(__name__)

MIN_HOLDOUT_ROWS = 20
DEFAULT_GATEWAY_CONFIG = Path("config/gateway.toml")
# A dynamics model aims at about 1 false alert per machine-day: half of that again is
# noise, not a worse model.
DEFAULT_FALSE_ALERTS_TOLERANCE = 0.5
DEFAULT_RECALL_TOLERANCE = 0.0
# What retraining does with operators' labels (alert_label): learn from them and judge
# by them; only judge by them (training as without labels); ignore them.
LABELS_USE, LABELS_GATE, LABELS_IGNORE = "use", "gate", "ignore"
LABEL_MODES = (LABELS_USE, LABELS_GATE, LABELS_IGNORE)


class RetrainError(ValueError):
    """The history or options cannot produce a comparable candidate; says why."""


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the active model still counts as "not worse"."""

    false_alerts_per_machine_day: float = DEFAULT_FALSE_ALERTS_TOLERANCE
    recall: float = DEFAULT_RECALL_TOLERANCE

    def __post_init__(self) -> None:
        if self.false_alerts_per_machine_day < 0 or not 0 <= self.recall <= 1:
            raise ValueError("tolerances: false alerts >= 0, recall in [0, 1]")


@dataclass(frozen=True)
class RetrainRequest:
    models_dir: Path
    since_ns: int
    until_ns: int
    settings: RetrainSettings
    detector: str | None = None  # None: the active model's (else default_detector)
    default_detector: str = TIME_AWARE
    # Configured parameters per detector; ``params`` (--param) override them.
    detector_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] | None = None  # None: the active model's (else default)
    default_features: tuple[str, ...] = ("temperature_c", "humidity_pct", "sound_db")
    line: str | None = None
    device_regex: str | None = None
    force: bool = False
    seed: int = 42
    envelope_weight: float = 0.1
    labelled_csv: Path | None = None
    label_column: str | None = None
    fault_column: str | None = None
    # The [alerts] and [sensor_faults] rules the backtest replays; None: the defaults.
    gateway_config: Path | None = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    grace_s: float = DEFAULT_GRACE_S
    labels: str = LABELS_USE  # LABEL_MODES

    def __post_init__(self) -> None:
        if self.labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {self.labels!r}")


@dataclass
class ModelFigures:
    version: str
    detector: str
    threshold: float
    # Event-level backtest of the held-out history: what the rule compares.
    backtest: dict[str, Any]
    # Pointwise side figures on the clean held-out readings (the old rule's).
    holdout: dict[str, float | None] = field(default_factory=dict)
    # Backtest of the labelled CSV, if one was given.
    labelled: dict[str, Any] | None = None
    # The model replayed over the operators' labelled alerts (backtest.labels).
    labels: dict[str, Any] | None = None


@dataclass
class RetrainReport:
    history: dict[str, Any]
    candidate: ModelFigures
    active: ModelFigures | None
    checks: list[dict[str, Any]]
    promoted: bool
    forced: bool
    candidate_dir: Path
    previous: str | None
    # The recorded sensor-fault periods: [{"device", "kind", "start_ns", "end_ns"}].
    sensor_fault_periods: list[dict[str, Any]] = field(default_factory=list)
    # The operators' labelled alerts read (LabelledAlert.to_dict()).
    labelled_alerts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def not_worse(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        def figures(m: ModelFigures | None) -> dict[str, Any] | None:
            return None if m is None else json_safe(m.__dict__)

        return {
            "history": self.history,
            "candidate": figures(self.candidate),
            "active": figures(self.active),
            "checks": json_safe(self.checks),
            "not_worse": self.not_worse,
            "promoted": self.promoted,
            "forced": self.forced,
            "candidate_version": self.candidate_dir.name,
            "previous_version": self.previous,
            "sensor_fault_periods": self.sensor_fault_periods,
            "labelled_alerts": self.labelled_alerts,
        }


# --- comparison ------------------------------------------------------------------------


def holdout_figures(
    scores: np.ndarray, threshold: float, keys: np.ndarray
) -> dict[str, float | None]:
    """False-alarm rate, flap rate and mean |Δscore| on clean held-out readings.

    ``keys`` (device per row) must be grouped by device, time-ordered within each.
    """
    flagged = scores >= threshold
    same = keys[1:] == keys[:-1]
    pairs = int(same.sum())
    flips = int(np.count_nonzero((flagged[1:] != flagged[:-1]) & same))
    jumps = np.abs(np.diff(scores))[same]
    return {
        "rows": int(scores.size),
        "false_alarm_rate": float(flagged.mean()) if scores.size else None,
        "flap_rate": flips / pairs if pairs else None,
        "mean_abs_score_change": float(jumps.mean()) if pairs else None,
        "score_p99": float(np.quantile(scores, 0.99)) if scores.size else None,
    }


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def not_worse(
    candidate: ModelFigures, active: ModelFigures, tolerances: Tolerances
) -> list[dict[str, Any]]:
    """The rule in the module docstring: one entry per check with both values."""
    tol = tolerances.false_alerts_per_machine_day
    c_far = _number(candidate.backtest.get("false_alerts_per_machine_day"))
    a_far = _number(active.backtest.get("false_alerts_per_machine_day"))
    checks = [
        {
            "check": "held-out false alerts per machine-day",
            "candidate": c_far,
            "active": a_far,
            "rule": f"candidate <= active + {tol:g}",
            # Not comparable (no span of time held out): not evidence of "not worse".
            "ok": c_far is not None and a_far is not None and c_far <= a_far + tol + 1e-12,
        }
    ]
    if candidate.labelled is not None and active.labelled is not None:
        c_faults = candidate.labelled["per_fault"]
        for kind, a_stats in sorted(active.labelled["per_fault"].items()):
            c_stats = c_faults.get(kind, {})
            c_rec, a_rec = _number(c_stats.get("recall")), _number(a_stats.get("recall"))
            if a_rec is None:  # no episodes of this kind
                continue
            checks.append(
                {
                    "check": f"labelled episode recall: {kind}",
                    "candidate": c_rec,
                    "active": a_rec,
                    "detected": [c_stats.get("detected", 0), a_stats.get("detected")],
                    "episodes": a_stats.get("episodes"),
                    "rule": f"candidate >= active - {tolerances.recall:g}",
                    "ok": (c_rec or 0.0) >= a_rec - tolerances.recall - 1e-12,
                }
            )
    if candidate.labels is not None and active.labels is not None:
        checks += label_checks(candidate.labels, active.labels)
    return checks


# --- history preparation ---------------------------------------------------------------


def clean_windows(keys: np.ndarray, excluded: np.ndarray, length: int) -> np.ndarray:
    """True where none of the last ``length`` readings of the device is excluded.

    Rows grouped by device, time-ordered within each (as :class:`History` is).
    """
    if length <= 1:
        return ~excluded
    out = np.zeros(keys.size, dtype=bool)
    if keys.size == 0:
        return out
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.size]
    for s, e in zip(starts, ends, strict=True):
        c = np.r_[0, np.cumsum(excluded[s:e])]
        idx = np.arange(e - s)
        lo = np.maximum(idx - length + 1, 0)
        out[s:e] = (c[idx + 1] - c[lo]) == 0
    return out


@dataclass(frozen=True, eq=False)
class PreparedHistory:
    X: np.ndarray  # (n, k) union features, all history rows (NaN in warm-up)
    features: tuple[str, ...]
    excluded: np.ndarray  # (n,) flagged or near a sensor fault
    usable: np.ndarray  # (n,) clean, window clean, not warming up
    cutoff_ns: int  # held out from here on
    train: np.ndarray  # row indices the candidate learns from
    holdout: np.ndarray  # row indices from the cutoff on (all of them)
    summary: dict[str, Any]


def prepare(
    history: History,
    periods: dict[str, np.ndarray],
    features: tuple[str, ...],
    settings: RetrainSettings,
    *,
    time_aware: bool = False,
    masks: LabelMasks | None = None,
) -> PreparedHistory:
    """Features over each device's full series, exclusions, then the time split.

    ``masks`` (operators' labels): flagged readings inside a false alarm's period are
    trained on as normal; readings inside or near a confirmed fault are not.
    """
    spec = StreamSpec.from_features(features)
    column = {f: j for j, f in enumerate(history.fields)}
    rows = DeviceRows(
        keys=history.keys,
        ts_ns=history.ts_ns,
        values={f: history.X[:, column[f]] for f in spec.raw_fields},
    )
    X, ready = compute_offline(rows, features)
    faulty = near_faults(history.keys, history.ts_ns, periods, settings.fault_margin_s)
    flagged = history.anomalous
    if masks is not None:
        # A confirmed fault outranks a false alarm next to it; a sensor fault stays out.
        flagged = flagged & ~masks.false_alarm
        excluded = flagged | faulty | masks.real_fault
    else:
        excluded = flagged | faulty
    clean = clean_windows(history.keys, excluded, spec.longest)
    usable = clean & ready
    # The split is by time over all readings: the time-aware candidate needs whole
    # device histories up to it, and the replay needs the readings after it.
    cutoff = int(np.quantile(history.ts_ns, 1.0 - settings.holdout_fraction))
    before = history.ts_ns < cutoff
    train_rows = np.flatnonzero(before if time_aware else before & usable)
    holdout_rows = np.flatnonzero(~before)
    summary: dict[str, Any] = {
        "readings": len(history),
        "devices": int(np.unique(history.keys).size),
        "anomalous": int(history.anomalous.sum()),
        "near_sensor_fault": int(faulty.sum()),
        "near_sensor_fault_only": int((faulty & ~history.anomalous).sum()),
        "window_touched": int((~clean & ~excluded).sum()),
        "warmup": int((clean & ~ready).sum()),
        "incomplete_points": history.incomplete,
        "duplicate_points": history.duplicates,
        "usable": int(usable.sum()),
        "fault_margin_s": settings.fault_margin_s,
        # How the excluded readings were kept out: left out, or labelled anomalous.
        "exclusion": "labelled" if time_aware else "dropped",
        "train": int(train_rows.size),
        "train_labelled_anomalous": int(excluded[train_rows].sum()) if time_aware else 0,
        "holdout": int(holdout_rows.size),
        "holdout_clean": int((usable & ~before).sum()),
        "holdout_from_ns": cutoff,
    }
    if masks is not None:
        others = faulty | masks.real_fault
        summary["labels_used"] = {
            # Readings inside false-alarm periods, and the flagged ones among them now
            # trained on as normal (none near a sensor fault or a confirmed fault).
            "false_alarm_readings": int(masks.false_alarm.sum()),
            "false_alarm_kept": int((history.anomalous & masks.false_alarm & ~others).sum()),
            # Readings inside or within fault_margin_s of a confirmed fault, and those
            # left out only because of it (not flagged, not near a sensor fault).
            "real_fault_readings": int(masks.real_fault.sum()),
            "real_fault_excluded_only": int(
                (masks.real_fault & ~history.anomalous & ~faulty).sum()
            ),
        }
    need = MIN_FIT_ROWS * 2
    if train_rows.size < need or holdout_rows.size < MIN_HOLDOUT_ROWS:
        raise RetrainError(
            f"too little clean history: {train_rows.size} readings to train on and "
            f"{holdout_rows.size} to hold out (need {need} and {MIN_HOLDOUT_ROWS}); "
            "widen --since/--until"
        )
    return PreparedHistory(
        X=X,
        features=features,
        excluded=excluded,
        usable=usable,
        cutoff_ns=cutoff,
        train=train_rows,
        holdout=holdout_rows,
        summary=summary,
    )


def _union(*feature_lists: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for names in feature_lists for f in names))


def _columns(all_features: tuple[str, ...], wanted: tuple[str, ...]) -> list[int]:
    return [all_features.index(f) for f in wanted]


def _inputs_of(scorer: Scorer) -> tuple[str, ...]:
    """What another model can be trained on in this model's place: its features, or
    for the time-aware detector (whose columns are its own statistics) its fields."""
    return scorer.raw_fields if scorer.dynamics is not None else scorer.features


# --- the backtests -----------------------------------------------------------------------


def replay_rows(history: History, cutoff_ns: int, context: int) -> np.ndarray:
    """Rows to replay, in time order: per device its readings from ``context`` readings
    before the first held-out one on (its state must be complete at the cutoff)."""
    keep = np.zeros(len(history), dtype=bool)
    keys = history.keys
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], keys.size]
    for s, e in zip(starts, ends, strict=True):
        first = s + int(np.searchsorted(history.ts_ns[s:e], cutoff_ns))
        keep[max(s, first - context) : e] = True
    rows = np.flatnonzero(keep)
    return rows[np.lexsort((keys[rows], history.ts_ns[rows]))]


def backtest_history(
    history: History,
    rows: np.ndarray,
    prepared: PreparedHistory,
    periods: list[FaultPeriod],
    scorer: Scorer,
    gateway: GatewayConfig,
    *,
    margin_s: float,
    grace_s: float,
    confirmed: list[LabelledAlert] | None = None,
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """(event figures from the cutoff on, pointwise side figures) of one model.

    ``confirmed``: alerts labelled real faults; like sensor-fault periods, they are
    known episodes, so an alert on one is not false."""
    recording = Recording.of_history(history, rows)
    result = replay(recording, scorer, gateway.alerts, gateway.sensor_faults)
    cutoff = prepared.cutoff_ns
    # Only the model's own alerts: the sensor-fault rules are the same for both models.
    alerts = [a for a in result.alerts if a.kind == PROCESS_ANOMALY and a.ts_ns >= cutoff]
    margin = int(margin_s * NS)
    # Readings within the margin of a sensor-fault period were not trained on as
    # normal; an alert there is not held against the model either.
    episodes = [
        Episode(p.device, p.kind, p.start_ns - margin, p.end_ns + margin, 0)
        for p in periods
        if p.end_ns + margin >= cutoff
    ]
    episodes += [
        Episode(a.key, a.episode_kind, a.start_ns - margin, a.end_ns + margin, 0)
        for a in confirmed or ()
        if a.end_ns + margin >= cutoff
    ]
    matching = match(episodes, alerts, grace_s=grace_s)
    detections = matching.detections
    n_sensor = len(episodes) - sum(1 for a in confirmed or () if a.end_ns + margin >= cutoff)
    hold = prepared.holdout
    spans = device_spans(history.keys[hold], history.ts_ns[hold])
    summary = summarize(matching, spans=spans, fault_types=())
    scores = np.full(len(history), np.nan)
    scores[rows] = result.scores
    events = {
        "alerts": summary.alerts,
        "false_alerts": summary.false_alerts,
        "machine_days": summary.machine_days,
        "false_alerts_per_machine_day": summary.false_per_machine_day,
        "devices": summary.devices,
        "sensor_fault_episodes": n_sensor,
        "sensor_fault_episodes_alerted": sum(d.detected for d in detections[:n_sensor]),
        "confirmed_fault_episodes": len(detections) - n_sensor,
        "confirmed_fault_episodes_alerted": sum(d.detected for d in detections[n_sensor:]),
        "readings": int(hold.size),
        "unscored": int(np.isnan(scores[hold]).sum()),
        "replayed": int(rows.size),
        "replay_seconds": round(result.seconds, 2),
    }
    clean = hold[prepared.usable[hold] & np.isfinite(scores[hold])]  # device-grouped order
    side = holdout_figures(scores[clean], scorer.threshold, history.keys[clean])
    return json_safe(events), side


def backtest_labelled(
    req: RetrainRequest, scorers: list[Scorer], gateway: GatewayConfig
) -> list[dict[str, Any]] | None:
    """Each model replayed over the labelled CSV: episode recall per fault type."""
    if req.labelled_csv is None:
        return None
    fields = _union(*(s.raw_fields for s in scorers))
    try:
        rec = read_recording(
            req.labelled_csv,
            fields,
            label_column=req.label_column,
            fault_column=req.fault_column,
            time_rules=CSV_DEFAULT,
        )
    except ValueError as exc:  # TimestampError and the like
        raise DatasetError(f"{req.labelled_csv}: {exc}") from None
    if rec.faults is None and rec.labels is None:
        raise DatasetError(f"{req.labelled_csv}: no label or fault column to compare on")
    kinds = rec.faults if rec.faults is not None else np.where(rec.labels > 0, "anomaly", "none")
    keys = rec.keys
    episodes = episodes_from_labels(keys, rec.ts_ns, kinds, seq=rec.seq)
    spans = device_spans(keys, rec.ts_ns)
    out = []
    for scorer in scorers:
        result = replay(rec, scorer, gateway.alerts, gateway.sensor_faults)
        # All alerts, as `python -m backtest` counts them: what the gateway would catch.
        matching = match(episodes, result.alerts, grace_s=req.grace_s)
        point = None
        if rec.labels is not None:
            point = pointwise(result.flags, rec.labels, scored=~np.isnan(result.scores))
        s = summarize(matching, spans=spans, pointwise=point, fault_types=())
        out.append(
            {
                "rows": len(rec),
                "episodes": s.overall.episodes,
                "per_fault": {
                    f.kind: {
                        "episodes": f.episodes,
                        "detected": f.detected,
                        "recall": f.recall,
                        "delay_median_s": f.delay_median_s,
                    }
                    for f in s.per_fault
                },
                "recall": s.overall.recall,
                "false_alerts": s.false_alerts,
                "false_alerts_per_machine_day": s.false_per_machine_day,
                "machine_days": s.machine_days,
                "pointwise": None
                if point is None
                else {
                    "precision": point.precision,
                    "recall": point.recall,
                    "f1": point.f1,
                    "false_positive_rate": point.fpr,
                },
            }
        )
    return json_safe(out)


# --- the run ---------------------------------------------------------------------------


def _load_active(models_dir: Path) -> Scorer | None:
    if active_version(models_dir) is None:
        return None
    try:
        return load_scorer(models_dir)
    except ModelError as exc:
        _LOG.warning("the active model cannot be loaded (%s); no comparison possible", exc)
        return None


def _candidate_features(
    req: RetrainRequest, detector: str, active: Scorer | None
) -> tuple[str, ...]:
    features = req.features or (_inputs_of(active) if active else req.default_features)
    if detector != TIME_AWARE:
        return tuple(features)
    spec = StreamSpec.from_features(features)
    if req.features and spec.has_derived:
        raise RetrainError(
            f"the time-aware detector takes reading fields, not stream features: {features}"
        )
    # It computes its own statistics: an active stream-feature model lends its fields.
    return spec.raw_fields


def run_retrain(req: RetrainRequest) -> RetrainReport:
    settings = req.settings
    models_dir = req.models_dir
    active = _load_active(models_dir)
    previous = active_version(models_dir)
    detector = req.detector or (active.detector if active else req.default_detector)
    time_aware = detector == TIME_AWARE
    features = _candidate_features(req, detector, active)
    params = {**req.detector_settings.get(detector, {}), **req.params}
    union = _union(features, _inputs_of(active) if active else ())
    spec = StreamSpec.from_features(union)
    gateway = load_gateway_config(req.gateway_config)
    client = InfluxV1(
        settings.influx_url,
        settings.database,
        username=settings.username,
        password=settings.resolved_password(),
        retention_policy=settings.retention_policy,
        timeout_s=settings.timeout_s,
        chunk_size=settings.chunk_size,
    )
    flt = HistoryFilter(req.since_ns, req.until_ns, req.line, req.device_regex)
    history = read_history(
        client,
        spec.raw_fields,
        flt,
        window_s=settings.query_window_s,
        max_rows=settings.max_rows,
    )
    if len(history) == 0:
        where = "".join(
            f", {name} {value!r}"
            for name, value in (("line", req.line), ("device regex", req.device_regex))
            if value is not None
        )
        raise RetrainError(
            f"no readings with {list(spec.raw_fields)} in database {settings.database} "
            f"between {iso_ns(req.since_ns)} and {iso_ns(req.until_ns)}{where}"
        )
    periods = read_fault_periods(
        client, flt, settings.fault_margin_s, window_s=settings.query_window_s
    )
    labels: list[LabelledAlert] = []
    if req.labels != LABELS_IGNORE:
        labels = read_labels(client, flt)
    masks = None
    if labels and req.labels == LABELS_USE:
        masks = label_masks(history.keys, history.ts_ns, labels, settings.fault_margin_s)
    prepared = prepare(
        history, fault_intervals(periods), union, settings, time_aware=time_aware, masks=masks
    )
    summary = {
        **prepared.summary,
        "since_ns": req.since_ns,
        "until_ns": req.until_ns,
        "line": req.line,
        "device_regex": req.device_regex,
        "database": settings.database,
        "gateway_config": str(req.gateway_config) if req.gateway_config else "default",
        "labels": req.labels,
        "labelled_alerts": count_labels(labels),
    }
    _LOG.info("history: %s", summary)

    rows = prepared.train
    dataset = Dataset(
        X=prepared.X[np.ix_(rows, _columns(union, features))],
        # The time-aware detector gets every reading in time order; the ones that must
        # not be learnt as normal are labelled, so its limits leave them out.
        y=prepared.excluded[rows].astype(np.int8) if time_aware else None,
        faults=None,
        ts=None,
        feature_names=tuple(features),
        source=f"influxdb:{settings.database}",
        groups=history.keys[rows],
        ts_ns=history.ts_ns[rows],
    )
    pipeline, metadata = train(
        dataset,
        detector=detector,
        random_state=req.seed,
        validation_fraction=0.2,
        test_fraction=0.0,
        fit_on="normal" if time_aware else "all",
        contamination=settings.contamination,
        envelope_weight=req.envelope_weight,
        params=params,
    )
    candidate = Scorer(pipeline, {**metadata, "version": "candidate"}, models_dir)
    scorers = [candidate] + ([active] if active else [])

    context = max(s.history_readings for s in scorers)
    replayed = replay_rows(history, prepared.cutoff_ns, context)
    summary["replay_context_readings"] = context
    # The label gate judges process-anomaly alerts on the labelled periods themselves,
    # wherever they lie (training part included): that is what operators told us.
    gate_labels = [a for a in labels if a.kind == PROCESS_ANOMALY]
    gate_rows = label_rows(history, gate_labels, context, req.grace_s)
    summary["label_gate_readings"] = int(gate_rows.size)
    confirmed = [a for a in labels if a.is_real_fault]

    def figures(scorer: Scorer, version: str) -> ModelFigures:
        events, side = backtest_history(
            history,
            replayed,
            prepared,
            periods,
            scorer,
            gateway,
            margin_s=settings.fault_margin_s,
            grace_s=req.grace_s,
            confirmed=confirmed,
        )
        fig = ModelFigures(version, scorer.detector, scorer.threshold, events, side)
        if gate_labels:
            fig.labels = backtest_labels(
                history, gate_rows, gate_labels, scorer, gateway, grace_s=req.grace_s
            )
        return fig

    cand_fig = figures(candidate, "candidate")
    active_fig = figures(active, active.version) if active is not None else None
    labelled = backtest_labelled(req, scorers, gateway)
    if labelled is not None:
        cand_fig.labelled = labelled[0]
        if active_fig is not None:
            active_fig.labelled = labelled[1]
    if active_fig is not None:
        checks = not_worse(cand_fig, active_fig, req.tolerances)
    else:
        reason = "no active model" if previous is None else "the active model cannot be loaded"
        checks = [
            {"check": reason, "candidate": None, "active": None, "rule": "", "ok": previous is None}
        ]
    decided = all(c["ok"] for c in checks)
    promote = decided or req.force

    metadata["retrain"] = json_safe(
        {
            "history": summary,
            "backtest": cand_fig.backtest,
            "holdout": cand_fig.holdout,
            "labelled": cand_fig.labelled,
            "labels": cand_fig.labels,
            "compared_with": None if active_fig is None else active_fig.__dict__,
            "checks": checks,
            "not_worse": decided,
        }
    )
    version_dir = save_artifact(models_dir, pipeline, metadata, activate=False)
    cand_fig.version = version_dir.name
    if promote:
        activate(
            models_dir,
            version_dir.name,
            reason="retrain --force" if req.force and not decided else "retrain",
        )
    return RetrainReport(
        history=summary,
        candidate=cand_fig,
        active=active_fig,
        checks=checks,
        promoted=promote,
        forced=req.force and not decided,
        candidate_dir=version_dir,
        previous=previous,
        sensor_fault_periods=[
            {"device": p.device, "kind": p.kind, "start_ns": p.start_ns, "end_ns": p.end_ns}
            for p in periods
        ],
        labelled_alerts=[a.to_dict() for a in labels],
    )
