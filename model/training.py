"""Train a detector on a Dataset: split, fit, calibrate, pick a threshold, evaluate.

The split is deterministic for a given seed (stratified when labels exist):

* train      - the detector is fitted on its normal rows (``fit_on="normal"``, needs
               labels) or on all of them (``fit_on="all"``), and calibrated on the
               raw scores of those same rows;
* validation - the alert threshold is chosen here: best F1 with labels, the
               (1 - contamination) quantile without;
* test       - untouched until the end, so its metrics are an honest estimate.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from contextlib import contextmanager
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from contract.fields import DEFAULT_FIELDS
from model.artifact import utc_now_rfc3339
from model.calibration import DEFAULT_MAX_FALSE_ALARM_RATE, Calibration, choose_threshold
from model.dataset import Dataset
from model.detectors import TIME_AWARE, build_detector, detector_params, raw_scores
from model.drift import reference_from_data
from model.envelope import DEFAULT_WEIGHT, Envelope
from model.metrics import alarm_summary, evaluate
from model.stream_features import StreamFeatureError, StreamSpec, feature_unit

_LOG = logging.getLogger(__name__)

# Fewer rows than this cannot give a meaningful model or percentile calibration.
MIN_FIT_ROWS = 20
_UNITS = {spec.name: spec.unit for spec in DEFAULT_FIELDS}


class TrainingError(ValueError):
    """The data or options cannot produce a model; the message says why."""


@contextmanager
def _stage(name: str):
    start = time.perf_counter()
    _LOG.info("%s ...", name)
    yield
    _LOG.info("%s done in %.2f s", name, time.perf_counter() - start)


def _can_stratify(y: np.ndarray) -> bool:
    counts = np.bincount(y.astype(np.int64), minlength=2)
    return bool(counts.min() >= 2)


def split_indices(
    n: int,
    y: np.ndarray | None,
    *,
    validation_fraction: float,
    test_fraction: float,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled (train, validation, test) row indices; stratified on ``y`` if possible."""
    if not 0 < validation_fraction < 1 or not 0 <= test_fraction < 1:
        raise TrainingError("validation_fraction must be in (0, 1) and test_fraction in [0, 1)")
    if validation_fraction + test_fraction >= 0.9:
        raise TrainingError("validation_fraction + test_fraction must leave >= 10% to train on")
    indices = np.arange(n)

    def split(idx: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        strata = None if y is None or not _can_stratify(y[idx]) else y[idx]
        try:
            rest, held = train_test_split(
                idx, test_size=fraction, random_state=random_state, stratify=strata
            )
        except ValueError as exc:
            raise TrainingError(f"cannot split {idx.size} rows: {exc}") from None
        return np.sort(rest), np.sort(held)

    if test_fraction > 0:
        rest, test = split(indices, test_fraction)
    else:
        rest, test = indices, np.empty(0, dtype=np.int64)
    train_idx, validation = split(rest, validation_fraction / (1.0 - test_fraction))
    return train_idx, validation, test


def feature_stats(X: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    p01, p99 = np.percentile(X, [1.0, 99.0], axis=0)
    mean, std = X.mean(axis=0), X.std(axis=0)
    lo, hi = X.min(axis=0), X.max(axis=0)
    return {
        name: {
            "mean": float(mean[j]),
            "std": float(std[j]),
            "min": float(lo[j]),
            "max": float(hi[j]),
            "p01": float(p01[j]),
            "p99": float(p99[j]),
        }
        for j, name in enumerate(names)
    }


def runtime_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
    }


def data_fingerprint(dataset: Dataset) -> str:
    """The source file's sha256, or a hash of the arrays for in-memory data."""
    if dataset.sha256:
        return dataset.sha256
    digest = hashlib.sha256(np.ascontiguousarray(dataset.X).tobytes())
    if dataset.y is not None:
        digest.update(np.ascontiguousarray(dataset.y).tobytes())
    return digest.hexdigest()


def _evaluate_split(
    scores: np.ndarray, threshold: float, dataset: Dataset, idx: np.ndarray
) -> dict[str, Any] | None:
    if idx.size == 0:
        return None
    if dataset.y is None:
        return alarm_summary(scores, threshold)
    faults = None if dataset.faults is None else dataset.faults[idx]
    return evaluate(scores, dataset.y[idx], threshold, faults=faults)


def train(
    dataset: Dataset,
    *,
    detector: str = "isolation_forest",
    random_state: int = 42,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.2,
    fit_on: str = "normal",
    contamination: float = 0.01,
    max_false_alarm_rate: float = DEFAULT_MAX_FALSE_ALARM_RATE,
    envelope_weight: float = DEFAULT_WEIGHT,
    params: dict[str, Any] | None = None,
) -> tuple[Pipeline, dict[str, Any]]:
    """Fit, calibrate and evaluate a detector; returns (pipeline, metadata).

    ``metadata`` is ready for :func:`model.artifact.save_artifact` (which adds the
    version).  With labels, "anomaly" rows are kept out of fitting when
    ``fit_on="normal"``; without labels all training rows are used.
    """
    if fit_on not in {"normal", "all"}:
        raise TrainingError(f"fit_on must be 'normal' or 'all', got {fit_on!r}")
    if detector == TIME_AWARE:
        return _train_time_aware(dataset, params or {}, fit_on)
    X, y = dataset.X, dataset.y
    if X.ndim != 2 or X.shape[1] != len(dataset.feature_names):
        raise TrainingError(f"X shape {X.shape} does not match features {dataset.feature_names}")
    try:
        stream = StreamSpec.from_features(dataset.feature_names)
    except StreamFeatureError as exc:
        raise TrainingError(str(exc)) from None
    effective_params = detector_params(detector, params)

    with _stage("splitting"):
        train_idx, val_idx, test_idx = split_indices(
            len(dataset),
            y,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            random_state=random_state,
        )
        fit_idx = train_idx
        if y is not None and fit_on == "normal":
            fit_idx = train_idx[y[train_idx] == 0]
        _LOG.info(
            "rows: train %d (fit on %d %s), validation %d, test %d",
            train_idx.size,
            fit_idx.size,
            "normal" if fit_idx.size != train_idx.size else "all",
            val_idx.size,
            test_idx.size,
        )
        if fit_idx.size < MIN_FIT_ROWS:
            raise TrainingError(
                f"only {fit_idx.size} rows to fit on (need >= {MIN_FIT_ROWS}); "
                f"the data set has {len(dataset)} rows"
            )
    X_fit = X[fit_idx]

    with _stage(f"fitting {detector}"):
        try:
            pipeline = build_detector(detector, random_state, **(params or {}))
            pipeline.fit(X_fit)
        except (TypeError, ValueError) as exc:
            raise TrainingError(f"cannot fit {detector}: {exc}") from None

    envelope = Envelope.fit(X_fit, envelope_weight)

    def raw(rows: np.ndarray) -> np.ndarray:
        return raw_scores(pipeline, rows) + envelope.penalty(rows)

    with _stage("calibrating"):
        calibration = Calibration.fit(raw(X_fit))
        _LOG.info("calibration center=%.5g scale=%.5g", calibration.center, calibration.scale)
        val_scores = calibration.apply(raw(X[val_idx]))
        val_y = None if y is None else y[val_idx]
        threshold = choose_threshold(
            val_scores,
            val_y,
            contamination=contamination,
            max_false_alarm_rate=max_false_alarm_rate,
        )
        _LOG.info(
            "threshold %.4f chosen on validation (%s)",
            threshold,
            f"best F1 with false-alarm rate <= {max_false_alarm_rate:g}"
            if val_y is not None
            else f"{1 - contamination:.3g} quantile",
        )

    with _stage("evaluating"):
        test_scores = calibration.apply(raw(X[test_idx])) if test_idx.size else np.empty(0)
        metrics = {
            "validation": _evaluate_split(val_scores, threshold, dataset, val_idx),
            "test": _evaluate_split(test_scores, threshold, dataset, test_idx),
        }
        test = metrics["test"]
        if test and "f1" in test:
            _LOG.info(
                "test: precision %s recall %s F1 %s false-alarm rate %s",
                *(_fmt(test[k]) for k in ("precision", "recall", "f1", "false_alarm_rate")),
            )
        elif test:
            _LOG.info("test: alarm rate %s (no labels)", _fmt(test["alarm_rate"]))

    metadata: dict[str, Any] = {
        "version": None,  # assigned by save_artifact
        "detector": detector,
        "params": {"random_state": random_state, **effective_params},
        "features": [
            {"name": name, "unit": feature_unit(name, _UNITS.get(_field_of(name), ""))}
            for name in dataset.feature_names
        ],
        "threshold": threshold,
        "calibration": calibration.to_dict(),
        "envelope": envelope.to_dict(),
        "training": {
            "rows": len(dataset),
            "source": dataset.source,
            "data_sha256": data_fingerprint(dataset),
            "label_column": dataset.label_column,
            "fault_column": dataset.fault_column,
            "columns": list(dataset.columns),
            "fit_on": "normal" if (y is not None and fit_on == "normal") else "all",
            "rows_dropped": dataset.rows_dropped,
            "rows_warmup": dataset.rows_warmup,
            "rows_duplicate": dataset.rows_duplicate,
            "split": {
                "train": int(train_idx.size),
                "fit": int(fit_idx.size),
                "validation": int(val_idx.size),
                "test": int(test_idx.size),
                "random_state": random_state,
            },
            "contamination": contamination,
            "max_false_alarm_rate": max_false_alarm_rate,
        },
        "feature_stats": feature_stats(X_fit, dataset.feature_names),
        # Per-feature decile bins of the fitted rows: the gateway's PSI reference.
        "drift_reference": reference_from_data(X_fit, dataset.feature_names),
        "versions": runtime_versions(),
        "created_at": utc_now_rfc3339(),
        "metrics": metrics,
    }
    if stream.has_derived:
        metadata["stream_features"] = stream.to_metadata()
    return pipeline, metadata


def _train_time_aware(
    dataset: Dataset, params: dict[str, Any], fit_on: str
) -> tuple[Any, dict[str, Any]]:
    """The time-aware detector: no random split (it reads each device's history in time
    order); its honest evaluation is the backtest on data it has not seen."""
    from model.dynamics.train import DynamicsTrainingError, train_dynamics

    bank = dict(params)
    options = {k: float(bank.pop(k)) for k in ("event_rate", "fault_margin_s") if k in bank}
    with _stage(f"training {TIME_AWARE}"):
        try:
            detector, metadata = train_dynamics(dataset, params=bank, fit_on=fit_on, **options)
        except DynamicsTrainingError as exc:
            raise TrainingError(str(exc)) from None
    metadata["versions"] = runtime_versions()
    return detector, metadata


def _field_of(name: str) -> str:
    spec = StreamSpec.from_features([name])
    return spec.raw_fields[0]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
