"""Anomaly detectors, by name.

A detector is an sklearn Pipeline whose final step follows the sklearn outlier
convention: ``score_samples`` is higher for more normal data.  :func:`raw_scores`
flips the sign so everything downstream (calibration, thresholds, metrics) reads
"higher is more anomalous".  To add a detector (e.g. PCA Hotelling T² + Q), write a
builder that returns such a Pipeline and register it in ``DETECTORS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


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


DETECTORS: dict[str, DetectorSpec] = {
    "isolation_forest": DetectorSpec(
        build=_isolation_forest,
        # n_jobs=1: the edge box runs the gateway and API on the same few cores.
        defaults={"n_estimators": 100, "max_samples": "auto", "n_jobs": 1},
        description="StandardScaler + IsolationForest",
    ),
}


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


def _spec(name: str) -> DetectorSpec:
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; available: {sorted(DETECTORS)}") from None
