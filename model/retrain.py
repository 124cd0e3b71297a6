"""Retrain from InfluxDB history, compare with the active model, promote if not worse.

1. Read the gateway's scored readings for the time range (and line / device filter)
   from InfluxDB (:mod:`model.influx_history`).
2. Exclude what must not be learnt as normal: readings flagged ``is_anomaly`` when
   they were scored, and readings of a device within ``fault_margin_s`` of one of its
   ``sensor_fault`` periods.  With stream features, a reading whose window holds an
   excluded reading is excluded too, and each device's warm-up readings.
3. Hold out the latest ``holdout_fraction`` of the clean readings (by time); train the
   candidate on the earlier ones (threshold = ``contamination`` quantile, no labels).
4. Score the held-out readings with the candidate and with the active model and
   compare (:func:`not_worse`); optionally also on a labelled CSV.
5. Save the candidate as a new version (always, for inspection) and activate it only
   if it is not worse, or with ``force``.

"Not worse" (all must hold; tolerances are absolute, from :class:`RetrainSettings`):

* held-out false-alarm rate: candidate <= active + ``far_tolerance``;
* held-out flap rate (share of consecutive readings of a device whose alert decision
  differs - what makes alerts flap): candidate <= active + ``flap_tolerance``;
* with a labelled CSV: F1 candidate >= F1 active - ``f1_tolerance`` and the labelled
  false-alarm rate candidate <= active + ``far_tolerance``.

The held-out readings are those the running system did *not* flag, so when the
active model scored them its own false-alarm rate there is about 0 by construction:
the rule then means "the candidate raises at most ``far_tolerance`` extra alarms on
readings operators saw as normal".  Only a labelled CSV can show that a candidate
catches more real anomalies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact import ModelError, activate, active_version, save_artifact
from model.config import RetrainSettings
from model.dataset import Dataset, fault_labels, load_csv
from model.influx_history import (
    History,
    HistoryFilter,
    InfluxV1,
    iso_ns,
    near_faults,
    read_fault_intervals,
    read_history,
)
from model.metrics import evaluate
from model.scorer import Scorer, load_scorer
from model.stream_features import DeviceRows, StreamSpec, compute_offline
from model.training import MIN_FIT_ROWS, train

_LOG = logging.getLogger(__name__)

MIN_HOLDOUT_ROWS = 20


class RetrainError(ValueError):
    """The history or options cannot produce a comparable candidate; says why."""


@dataclass(frozen=True)
class RetrainRequest:
    models_dir: Path
    since_ns: int
    until_ns: int
    settings: RetrainSettings
    detector: str | None = None  # None: the active model's (else default_detector)
    default_detector: str = "isolation_forest"
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


@dataclass
class ModelFigures:
    version: str
    detector: str
    threshold: float
    holdout: dict[str, float | None]
    labelled: dict[str, Any] | None = None


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
    # The sensor-fault periods the exclusion used: [{"device", "start_ns", "end_ns"}].
    sensor_fault_periods: list[dict[str, Any]] = field(default_factory=list)

    @property
    def not_worse(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        def figures(m: ModelFigures | None) -> dict[str, Any] | None:
            return None if m is None else m.__dict__

        return {
            "history": self.history,
            "candidate": figures(self.candidate),
            "active": figures(self.active),
            "checks": self.checks,
            "not_worse": self.not_worse,
            "promoted": self.promoted,
            "forced": self.forced,
            "candidate_version": self.candidate_dir.name,
            "previous_version": self.previous,
            "sensor_fault_periods": self.sensor_fault_periods,
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


def not_worse(
    candidate: ModelFigures, active: ModelFigures, settings: RetrainSettings
) -> list[dict[str, Any]]:
    """The rule in the module docstring: one entry per check with both values."""

    def le(name: str, c: float | None, a: float | None, tol: float) -> dict[str, Any]:
        c0, a0 = c or 0.0, a or 0.0
        return {
            "check": name,
            "candidate": c,
            "active": a,
            "rule": f"candidate <= active + {tol:g}",
            "ok": bool(c0 <= a0 + tol + 1e-12),
        }

    checks = [
        le(
            "held-out false-alarm rate",
            candidate.holdout["false_alarm_rate"],
            active.holdout["false_alarm_rate"],
            settings.far_tolerance,
        ),
        le(
            "held-out flap rate",
            candidate.holdout["flap_rate"],
            active.holdout["flap_rate"],
            settings.flap_tolerance,
        ),
    ]
    if candidate.labelled is not None and active.labelled is not None:
        c_f1, a_f1 = candidate.labelled["f1"], active.labelled["f1"]
        checks.append(
            {
                "check": "labelled F1",
                "candidate": c_f1,
                "active": a_f1,
                "rule": f"candidate >= active - {settings.f1_tolerance:g}",
                "ok": bool((c_f1 or 0.0) >= (a_f1 or 0.0) - settings.f1_tolerance - 1e-12),
            }
        )
        checks.append(
            le(
                "labelled false-alarm rate",
                candidate.labelled["false_alarm_rate"],
                active.labelled["false_alarm_rate"],
                settings.far_tolerance,
            )
        )
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
    keys: np.ndarray
    ts_ns: np.ndarray
    train: np.ndarray  # row indices
    holdout: np.ndarray
    summary: dict[str, Any]


def prepare(
    history: History,
    periods: dict[str, np.ndarray],
    features: tuple[str, ...],
    settings: RetrainSettings,
) -> PreparedHistory:
    """Features over each device's full series, exclusions, then the time split."""
    spec = StreamSpec.from_features(features)
    column = {f: j for j, f in enumerate(history.fields)}
    rows = DeviceRows(
        keys=history.keys,
        ts_ns=history.ts_ns,
        values={f: history.X[:, column[f]] for f in spec.raw_fields},
    )
    X, ready = compute_offline(rows, features)
    faulty = near_faults(history.keys, history.ts_ns, periods, settings.fault_margin_s)
    excluded = history.anomalous | faulty
    clean = clean_windows(history.keys, excluded, spec.longest)
    usable = np.flatnonzero(clean & ready)
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
        "usable": int(usable.size),
        "fault_margin_s": settings.fault_margin_s,
    }
    if usable.size == 0:
        raise RetrainError(f"no usable readings left after exclusions: {summary}")
    cutoff = int(np.quantile(history.ts_ns[usable], 1.0 - settings.holdout_fraction))
    train_rows = usable[history.ts_ns[usable] < cutoff]
    holdout_rows = usable[history.ts_ns[usable] >= cutoff]
    summary.update(
        {
            "train": int(train_rows.size),
            "holdout": int(holdout_rows.size),
            "holdout_from_ns": cutoff,
        }
    )
    if train_rows.size < MIN_FIT_ROWS * 2 or holdout_rows.size < MIN_HOLDOUT_ROWS:
        raise RetrainError(
            f"too little clean history: {train_rows.size} readings to train on and "
            f"{holdout_rows.size} to hold out (need {MIN_FIT_ROWS * 2} and "
            f"{MIN_HOLDOUT_ROWS}); widen --since/--until"
        )
    return PreparedHistory(
        X=X,
        features=features,
        keys=history.keys,
        ts_ns=history.ts_ns,
        train=train_rows,
        holdout=holdout_rows,
        summary=summary,
    )


def _union(*feature_lists: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for names in feature_lists for f in names))


def _columns(all_features: tuple[str, ...], wanted: tuple[str, ...]) -> list[int]:
    return [all_features.index(f) for f in wanted]


def _labelled(scorers: list[Scorer], req: RetrainRequest) -> list[dict[str, Any]] | None:
    if req.labelled_csv is None:
        return None
    union = _union(*(s.features for s in scorers))
    label, fault = req.label_column, req.fault_column
    if label is None and fault is None:
        label, fault = "is_anomaly", "fault"
    data = load_csv(
        req.labelled_csv,
        features=list(union),
        label_column=label,
        fault_column=fault,
        timestamp_column="ts" if StreamSpec.from_features(union).has_derived else None,
    )
    y = data.y if data.y is not None else fault_labels(data.faults)
    out = []
    for scorer in scorers:
        scores = scorer.score(data.X[:, _columns(data.feature_names, scorer.features)])
        metrics = evaluate(scores, y, scorer.threshold, faults=data.faults)
        metrics["rows"] = len(data)
        out.append(metrics)
    return out


# --- the run ---------------------------------------------------------------------------


def _load_active(models_dir: Path) -> Scorer | None:
    if active_version(models_dir) is None:
        return None
    try:
        return load_scorer(models_dir)
    except ModelError as exc:
        _LOG.warning("the active model cannot be loaded (%s); no comparison possible", exc)
        return None


def run_retrain(req: RetrainRequest) -> RetrainReport:
    settings = req.settings
    models_dir = req.models_dir
    active = _load_active(models_dir)
    previous = active_version(models_dir)
    features = req.features or (active.features if active else req.default_features)
    detector = req.detector or (active.detector if active else req.default_detector)
    params = {**req.detector_settings.get(detector, {}), **req.params}
    union = _union(features, active.features if active else ())
    spec = StreamSpec.from_features(union)
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
    periods = read_fault_intervals(
        client, flt, settings.fault_margin_s, window_s=settings.query_window_s
    )
    prepared = prepare(history, periods, union, settings)
    summary = {
        **prepared.summary,
        "since_ns": req.since_ns,
        "until_ns": req.until_ns,
        "line": req.line,
        "device_regex": req.device_regex,
        "database": settings.database,
    }
    _LOG.info("history: %s", summary)

    cand_cols = _columns(union, features)
    train_rows = prepared.train
    dataset = Dataset(
        X=prepared.X[np.ix_(train_rows, cand_cols)],
        y=None,
        faults=None,
        ts=None,
        feature_names=tuple(features),
        source=f"influxdb:{settings.database}",
        groups=prepared.keys[train_rows],
        ts_ns=prepared.ts_ns[train_rows],
    )
    pipeline, metadata = train(
        dataset,
        detector=detector,
        random_state=req.seed,
        validation_fraction=0.2,
        test_fraction=0.0,
        fit_on="all",
        contamination=settings.contamination,
        envelope_weight=req.envelope_weight,
        params=params,
    )
    candidate = Scorer(pipeline, {**metadata, "version": "candidate"}, models_dir)

    hold = prepared.holdout
    hold_keys = prepared.keys[hold]

    def figures(scorer: Scorer, version: str) -> ModelFigures:
        X = prepared.X[np.ix_(hold, _columns(union, scorer.features))]
        return ModelFigures(
            version=version,
            detector=scorer.detector,
            threshold=scorer.threshold,
            holdout=holdout_figures(scorer.score(X), scorer.threshold, hold_keys),
        )

    cand_fig = figures(candidate, "candidate")
    active_fig = figures(active, active.version) if active is not None else None
    labelled = _labelled([candidate] + ([active] if active else []), req)
    if labelled is not None:
        cand_fig.labelled = labelled[0]
        if active_fig is not None:
            active_fig.labelled = labelled[1]
    checks = not_worse(cand_fig, active_fig, settings) if active_fig else []
    if active_fig is None:
        reason = "no active model" if previous is None else "the active model cannot be loaded"
        checks = [
            {"check": reason, "candidate": None, "active": None, "rule": "", "ok": previous is None}
        ]
    decided = all(c["ok"] for c in checks)
    promote = decided or req.force

    metadata["retrain"] = {
        "history": summary,
        "holdout": cand_fig.holdout,
        "labelled": cand_fig.labelled,
        "compared_with": None if active_fig is None else active_fig.__dict__,
        "checks": checks,
        "not_worse": decided,
    }
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
            {"device": device, "start_ns": int(a), "end_ns": int(b)}
            for device, spans in sorted(periods.items())
            for a, b in spans
        ],
    )
