"""A range guard added to any detector's raw score.

Tree ensembles such as IsolationForest only split inside the range of their
training data, so a reading far beyond that range on one sensor (humidity 90 % when
training saw 38-53 %) lands in the same leaf as the most extreme training reading
and scores no higher.  The envelope adds, for each feature, how far the reading lies
outside the training [p0.1, p99.9] range in training standard deviations, times a
weight.  Inside the envelope it adds exactly zero, so it never changes the scores
of ordinary readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LOW_QUANTILE = 0.001
HIGH_QUANTILE = 0.999
# Raw IsolationForest scores of normal data spread over ~0.1; one std outside
# the envelope adds about that much again (measured on simulator data, see README).
DEFAULT_WEIGHT = 0.1


@dataclass(frozen=True)
class Envelope:
    low: np.ndarray
    high: np.ndarray
    scale: np.ndarray
    weight: float
    # The bounds as Python floats, for penalty_one.
    _low: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _high: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "_high", tuple(float(v) for v in self.high))

    @classmethod
    def fit(cls, X: np.ndarray, weight: float = DEFAULT_WEIGHT) -> Envelope:
        X = np.asarray(X, dtype=np.float64)
        low, high = np.quantile(X, [LOW_QUANTILE, HIGH_QUANTILE], axis=0)
        std = X.std(axis=0)
        # A constant training feature: measure excursions in its own units.
        scale = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        return cls(low, high, scale, float(weight))

    def penalty(self, X: np.ndarray) -> np.ndarray:
        """Weighted distance outside the envelope, shape (n,); 0 inside it."""
        if self.weight == 0.0:
            return np.zeros(X.shape[0])
        over = np.maximum(X - self.high, 0.0) + np.maximum(self.low - X, 0.0)
        return self.weight * (over / self.scale).sum(axis=1)

    def penalty_one(self, row: Sequence[float]) -> float:
        """``penalty`` of one row.  Inside the envelope (the usual case) that is exactly
        0.0, found with plain comparisons; outside it, the numpy sum itself (its
        summation order is numpy's to choose)."""
        if self.weight == 0.0:
            return 0.0
        for value, low, high in zip(row, self._low, self._high, strict=True):
            if not low <= value <= high:
                return float(self.penalty(np.array([row], dtype=np.float64))[0])
        return 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "scale": self.scale.tolist(),
            "weight": self.weight,
            "quantiles": [LOW_QUANTILE, HIGH_QUANTILE],
        }

    @classmethod
    def from_dict(cls, data: dict, n_features: int) -> Envelope:
        arrays = [np.asarray(data[k], dtype=np.float64) for k in ("low", "high", "scale")]
        if any(a.shape != (n_features,) for a in arrays):
            raise ValueError(f"envelope arrays must have {n_features} entries")
        if not (arrays[2] > 0).all():
            raise ValueError("envelope scale must be positive")
        return cls(*arrays, weight=float(data["weight"]))
