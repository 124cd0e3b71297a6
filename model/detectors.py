"""Anomaly detectors, by name.

A detector is an sklearn Pipeline whose final step follows the sklearn outlier
convention: ``score_samples`` is higher for more normal data.  :func:`raw_scores`
flips the sign so everything downstream (calibration, thresholds, metrics) reads
"higher is more anomalous".  To add a detector, write a builder that returns such a
Pipeline and register it in ``DETECTORS``; every detector then goes through the same
envelope, calibration and threshold path and is saved in the same artifact format.

* ``isolation_forest`` - StandardScaler + IsolationForest (default);
* ``pca_t2q`` - StandardScaler + PCA Hotelling T² + Q (:mod:`model.pca_monitor`).

The default, ``dynamics`` (:mod:`model.dynamics`), is of another kind: it scores each
reading from its device's recent history and is listed in ``ALL_DETECTORS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from model.fastforest import compile_forest
from model.pca_monitor import PcaT2Q, compile_pca

_LOG = logging.getLogger(__name__)
# Rows the compiled forest is checked on against sklearn before it is trusted.
_PROBE_ROWS = 64


@dataclass(frozen=True)
class DetectorSpec:
    build: Callable[..., Pipeline]  # (random_state, **params) -> unfitted Pipeline
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _isolation_forest(random_state: int, **params: Any) -> Pipeline:
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("detector", IsolationForest(random_state=random_state, **params)),
        ]
    )


def _pca_t2q(random_state: int, **params: Any) -> Pipeline:
    # Deterministic: random_state is accepted (and recorded) for a uniform interface.
    return Pipeline([("scale", StandardScaler()), ("detector", PcaT2Q(**params))])


DETECTORS: dict[str, DetectorSpec] = {
    "isolation_forest": DetectorSpec(
        build=_isolation_forest,
        # n_jobs=1: the edge box runs the gateway and API on the same few cores.
        defaults={"n_estimators": 100, "max_samples": "auto", "n_jobs": 1},
        description="StandardScaler + IsolationForest",
    ),
    "pca_t2q": DetectorSpec(
        build=_pca_t2q,
        defaults={
            "explained_variance": 0.95,
            "alpha": 0.01,
            "q_limit": "jackson_mudholkar",
            "combine": "sum",
        },
        description="StandardScaler + PCA Hotelling T² + Q (SPE)",
    ),
}


# The time-aware detector is not an sklearn Pipeline: it keeps per-device state
# (model.dynamics) and is trained by model.dynamics.train.
TIME_AWARE = "dynamics"
ALL_DETECTORS: tuple[str, ...] = (TIME_AWARE, *DETECTORS)


def detector_params(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The detector's defaults overlaid with ``params`` (what gets recorded)."""
    return {**_spec(name).defaults, **(params or {})}


def build_detector(name: str, random_state: int, **params: Any) -> Pipeline:
    """An unfitted Pipeline for detector ``name``; ``params`` override its defaults."""
    spec = _spec(name)
    try:
        return spec.build(random_state, **detector_params(name, params))
    except TypeError as exc:
        raise ValueError(f"bad parameters for detector {name!r}: {exc}") from None


def raw_scores(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """Uncalibrated anomaly scores, higher = more anomalous, shape (n,)."""
    return -np.asarray(pipeline.score_samples(X), dtype=np.float64)


def compiled_raw_scores(pipeline: Pipeline) -> Callable[[np.ndarray], np.ndarray]:
    """``raw_scores(pipeline, X)`` as a function of X, compiled once when possible.

    A fitted StandardScaler + IsolationForest becomes a :class:`model.fastforest.
    CompiledForest` (no sklearn ~5 ms per-call overhead), a StandardScaler + PcaT2Q a
    :class:`model.pca_monitor.CompiledPca` (no ~1 ms validation overhead).  The
    compiled scores are first checked against sklearn on probe rows; any other
    detector, or a compiled one that disagrees, keeps scoring through sklearn.
    """

    def slow(X: np.ndarray) -> np.ndarray:
        return raw_scores(pipeline, X)

    try:
        compiled = compile_forest(pipeline) or compile_pca(pipeline)
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        _LOG.warning("cannot compile the model (%s); scoring through sklearn", exc)
        return slow
    if compiled is None:
        return slow
    probe = _probe_rows(pipeline, compiled.n_features)
    try:
        gap = float(np.max(np.abs(compiled.raw_scores(probe) - raw_scores(pipeline, probe))))
    except Exception as exc:  # a broken pipeline: the loader's smoke test reports it
        _LOG.warning("cannot check the compiled model (%s); scoring through sklearn", exc)
        return slow
    if not gap <= 1e-12:
        _LOG.warning("compiled model differs from sklearn by %g; scoring through sklearn", gap)
        return slow
    return compiled.raw_scores


def _probe_rows(pipeline: Pipeline, k: int) -> np.ndarray:
    """Rows around and well beyond the training data (in its units when scaled)."""
    Z = np.random.default_rng(0).normal(0.0, 3.0, size=(_PROBE_ROWS, k))
    scaler = pipeline.steps[0][1] if isinstance(pipeline, Pipeline) else None
    if isinstance(scaler, StandardScaler):
        return Z * (scaler.scale_ if scaler.with_std else 1.0) + (
            scaler.mean_ if scaler.with_mean else 0.0
        )
    return Z


def _spec(name: str) -> DetectorSpec:
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; available: {sorted(DETECTORS)}") from None
