"""Train the time-aware detector: run the device bank over the data, set control limits.

Nothing per device is kept in the model: every machine learns its own normal as it
runs (the bank).  What training sets is what holds across machines: the control
limit of each statistic (see :mod:`model.dynamics.limits`) and the absolute range
of each field.  With labels, fault rows and the ``fault_margin_s`` after them (the
statistics look back in time) are kept out of the limits; without labels every row
counts, so a little contamination raises the limits a little.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from model.artifact import utc_now_rfc3339
from model.dataset import Dataset
from model.drift import reference_from_data
from model.dynamics.bank import READY, BankParams, DeviceBank
from model.dynamics.detector import NAME, DynamicsDetector
from model.dynamics.limits import DEFAULT_EVENT_RATE, LevelGuard, LimitError, fit_limits
from model.metrics import alarm_summary, evaluate

_LOG = logging.getLogger(__name__)
DEFAULT_FAULT_MARGIN_S = 180.0
# Rows handed to the bank at once: large enough for numpy to pay off, small enough
# that a file of few devices does not hold big temporary arrays.
CHUNK_ROWS = 4_000


class DynamicsTrainingError(ValueError):
    """The data cannot train the time-aware detector; the message says why."""


def resolution(values: np.ndarray) -> float:
    """The smallest step between distinct values (the sensor's resolution), for the
    bank's scale floors; at least a millionth of the spread."""
    sample = np.unique(values[:200_000])
    steps = np.diff(sample)
    steps = steps[steps > 0]
    spread = float(np.std(values)) or 1.0
    return max(float(steps.min()) if steps.size else 0.0, 1e-6 * spread)


def time_order(dataset: Dataset) -> np.ndarray:
    if dataset.ts_ns is None:
        raise DynamicsTrainingError(
            "the time-aware detector needs a timestamp per row (--timestamp-column)"
        )
    return np.argsort(dataset.ts_ns, kind="stable")


def device_keys(dataset: Dataset) -> np.ndarray:
    if dataset.groups is None:
        return np.full(len(dataset), "", dtype=object)
    return dataset.groups


def run_bank(
    detector_bank: DeviceBank, keys: np.ndarray, ts_ns: np.ndarray, X: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (n, columns), ready (n,)) for rows already in time order; ready: the
    device's warm-up is over (rows in warm-up or late do not set limits)."""
    m = len(detector_bank.params.stat_names)
    n = X.shape[0]
    out = np.zeros((n, m + X.shape[1]))
    ready = np.zeros(n, dtype=bool)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        stats, state = detector_bank.update(keys[start:stop], ts_ns[start:stop], X[start:stop])
        out[start:stop, :m] = stats
        out[start:stop, m:] = X[start:stop]
        ready[start:stop] = state == READY
    return out, ready


def _after_faults(
    keys: np.ndarray, ts_ns: np.ndarray, y: np.ndarray, margin_s: float
) -> np.ndarray:
    """True for rows of a device within ``margin_s`` after (or at) one of its fault rows."""
    out = np.zeros(len(keys), dtype=bool)
    order = np.lexsort((ts_ns, keys))
    k, t, a = keys[order], ts_ns[order].astype(np.float64), y[order].astype(bool)
    new_dev = np.r_[True, k[1:] != k[:-1]]
    last = np.where(a, t, -np.inf)
    # Carry the last fault time forward within each device only.
    seg = np.cumsum(new_dev)
    for s in np.unique(seg[a]):
        idx = np.flatnonzero(seg == s)
        last[idx] = np.maximum.accumulate(last[idx])
    out[order] = np.where(np.isfinite(last), t - last <= margin_s * 1e9, False)
    return out


def train_dynamics(
    dataset: Dataset,
    *,
    event_rate: float = DEFAULT_EVENT_RATE,
    fault_margin_s: float = DEFAULT_FAULT_MARGIN_S,
    params: dict[str, Any] | None = None,
    fit_on: str = "normal",
) -> tuple[DynamicsDetector, dict[str, Any]]:
    started = time.perf_counter()
    order = time_order(dataset)
    data = dataset.take(order)
    keys = device_keys(data)
    X = data.X
    fields = tuple(data.feature_names)
    overrides = dict(params or {})
    floors = tuple(resolution(X[:, j]) for j in range(X.shape[1]))
    try:
        bank_params = BankParams(fields=fields, floors=floors, **overrides)
    except TypeError as exc:
        raise DynamicsTrainingError(f"bad parameters for the time-aware detector: {exc}") from None
    inputs, ready = run_bank(DeviceBank(bank_params), keys, data.ts_ns, X)
    _LOG.info(
        "statistics of %d readings of %d devices in %.1f s",
        len(data),
        len(np.unique(keys)),
        time.perf_counter() - started,
    )
    normal = ready.copy()
    labelled = data.y is not None and fit_on == "normal"
    if labelled:
        normal &= ~_after_faults(keys, data.ts_ns, data.y, fault_margin_s)
    m = len(bank_params.stat_names)
    try:
        limits = fit_limits(inputs[normal, :m], keys[normal], bank_params.stat_names, event_rate)
    except LimitError as exc:
        raise DynamicsTrainingError(
            f"{exc} (warm-up: {bank_params.warmup} readings per device, "
            f"{int((~ready).sum())} rows in warm-up)"
        ) from None
    level = LevelGuard.fit(X[normal] if normal.any() else X)
    detector = DynamicsDetector(bank_params, tuple(limits), level, event_rate)
    disabled = [
        n for n, lim in zip(bank_params.stat_names, limits, strict=True) if lim.value is None
    ]
    if disabled:
        _LOG.warning("statistics without a limit (never left zero in training): %s", disabled)
    scores = detector.raw_scores(inputs[ready])
    calibrated = scores / (1.0 + scores)
    if data.y is not None:
        metrics = evaluate(calibrated, data.y[ready], 0.5, faults=_pick(data.faults, ready))
    else:
        metrics = alarm_summary(calibrated, 0.5)
    columns = detector.columns
    metadata: dict[str, Any] = {
        "version": None,
        "detector": NAME,
        "params": {"event_rate": event_rate, "fault_margin_s": fault_margin_s, **overrides},
        "features": [{"name": name, "unit": ""} for name in columns],
        "threshold": 0.5,
        "calibration": {"kind": "ratio"},
        "dynamics": detector.to_dict(),
        "training": {
            "rows": len(data),
            "source": data.source,
            "data_sha256": _fingerprint(data),
            "label_column": data.label_column,
            "fault_column": data.fault_column,
            "columns": list(data.columns),
            "fit_on": "normal" if labelled else "all",
            "rows_dropped": data.rows_dropped,
            "rows_warmup": int((~ready).sum()),
            "rows_duplicate": data.rows_duplicate,
            "devices": len(np.unique(keys)),
            "limit_rows": int(normal.sum()),
        },
        "feature_stats": _feature_stats(inputs[normal], columns),
        # The drift watch compares the raw fields (see Scorer.drift_columns).
        "drift_reference": reference_from_data(X[normal], fields),
        "created_at": utc_now_rfc3339(),
        # Scored in time order on the training data itself: a sanity figure only; the
        # honest one is the event-level backtest on data the model has not seen.
        "metrics": {"training": metrics},
    }
    return detector, metadata


def _pick(values: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[mask]


def _fingerprint(data: Dataset) -> str:
    from model.training import data_fingerprint

    return data_fingerprint(data)


def _feature_stats(X: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    from model.training import feature_stats

    return feature_stats(X, names)
