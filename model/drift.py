"""Input drift against the training distribution: PSI over a sliding window.

At training time each feature's distribution is summarised by quantile bins
(:func:`reference_from_data`, stored in the model metadata as ``drift_reference``):

    {"temperature_c": {"edges": [e1, ..., e9], "proportions": [p0, ..., p9]}, ...}

``edges`` are the inner cut points (deciles by default, fewer when the data has ties);
a value's bin is the number of edges <= it, so bin 0 is (-inf, e1) and the last bin is
[e_last, +inf): readings beyond the training range fall into the outer bins.
``proportions`` are the training shares of the bins (about 1/10 each).

In service a :class:`DriftMonitor` keeps the bins of the last ``window`` readings in
one ring buffer per feature (bounded memory, O(1) per reading) and reports the
Population Stability Index per feature:

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with ``e`` the training and ``a`` the window proportions, each floored at
``PSI_EPSILON`` so an empty bin does not make it infinite.  Conventional reading:
< 0.1 stable, 0.1-0.25 moderate shift (warn), >= 0.25 significant shift (alert,
consider retraining).

Feed it readings from the population the model was trained on (all devices of the
plant together when the model was trained on all of them): one machine alone differs
from the mixture and shows a PSI above 0.1 without any drift.  The window must also
span the slow normal cycles of the process: on simulator data (6 devices at 1 Hz,
humidity cycling over 30-90 min) a 10-minute window shows humidity PSI above 1 with
no drift at all, a 1.5-hour window (32 400 readings) stays below 0.03.  PSI grows
with sampling noise in small windows too, so nothing is reported before the window
has ``min_count`` readings (default: full).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PSI_WARN = 0.1
PSI_ALERT = 0.25
PSI_EPSILON = 1e-4
DEFAULT_BINS = 10
# 1.5 h of a 6-device plant sampled at 1 Hz; memory: 2 bytes per reading and feature.
DEFAULT_WINDOW = 32_400


@dataclass(frozen=True)
class BinReference:
    edges: np.ndarray  # inner cut points, increasing
    proportions: np.ndarray  # len(edges) + 1, sums to 1

    def bins(self, values: np.ndarray) -> np.ndarray:
        """Bin index per value: the number of edges <= value."""
        return np.searchsorted(self.edges, values, side="right")

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": self.edges.tolist(), "proportions": self.proportions.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BinReference:
        edges = np.asarray(data["edges"], dtype=np.float64)
        proportions = np.asarray(data["proportions"], dtype=np.float64)
        if edges.ndim != 1 or proportions.shape != (edges.size + 1,):
            raise ValueError("drift reference needs len(proportions) == len(edges) + 1")
        if np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
            raise ValueError("drift reference edges must be finite and increasing")
        if np.any(proportions < 0) or not np.isclose(proportions.sum(), 1.0, atol=1e-6):
            raise ValueError("drift reference proportions must be >= 0 and sum to 1")
        return cls(edges, proportions)


def reference_for_feature(values: np.ndarray, bins: int = DEFAULT_BINS) -> BinReference:
    """Quantile bins of one feature's training values (ties merge bins)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot build a drift reference from no values")
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges = np.unique(np.quantile(values, quantiles))
    # A cut at the minimum would leave bin 0 empty by construction.
    edges = edges[edges > values.min()]
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    return BinReference(edges, counts / values.size)


def reference_from_data(
    X: np.ndarray, names: Sequence[str], bins: int = DEFAULT_BINS
) -> dict[str, dict[str, list[float]]]:
    """The ``drift_reference`` metadata entry for training matrix ``X``."""
    X = np.asarray(X, dtype=np.float64)
    return {name: reference_for_feature(X[:, j], bins).to_dict() for j, name in enumerate(names)}


def psi(reference: Sequence[float] | np.ndarray, counts: Sequence[float] | np.ndarray) -> float:
    """PSI between reference proportions and observed bin counts (same bins)."""
    expected = np.asarray(reference, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if expected.shape != counts.shape:
        raise ValueError(f"reference has {expected.size} bins, counts {counts.size}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("PSI needs at least one observation")
    e = np.maximum(expected, PSI_EPSILON)
    a = np.maximum(counts / total, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def level(value: float) -> str:
    """``ok`` / ``warn`` / ``alert`` for a PSI value."""
    if value >= PSI_ALERT:
        return "alert"
    if value >= PSI_WARN:
        return "warn"
    return "ok"


@dataclass(frozen=True)
class DriftReport:
    count: int  # readings in the window
    full: bool  # the window holds ``window`` readings
    psi: dict[str, float]
    levels: dict[str, str]

    @property
    def worst(self) -> str:
        order = {"ok": 0, "warn": 1, "alert": 2}
        return max(self.levels.values(), key=order.__getitem__, default="ok")


class DriftMonitor:
    """Sliding-window PSI per feature against a model's ``drift_reference``.

        monitor = DriftMonitor(scorer.metadata["drift_reference"], features=scorer.features)
        monitor.update(X)              # every scored batch, rows in ``features`` order
        report = monitor.report()      # psi / levels per feature

    Memory: one int16 ring of ``window`` bin indices plus one count array per feature.
    ``update`` costs O(rows) per batch (O(1) per reading); ``report`` O(bins).  Not
    thread-safe: feed and poll it from one thread or guard it with a lock.
    """

    def __init__(
        self,
        reference: Mapping[str, Mapping[str, Any]],
        window: int = DEFAULT_WINDOW,
        features: Sequence[str] | None = None,
        min_count: int | None = None,
    ):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.min_count = window if min_count is None else min_count
        if not 1 <= self.min_count <= window:
            raise ValueError("min_count must be between 1 and window")
        self.features = tuple(features) if features is not None else tuple(reference)
        missing = [f for f in self.features if f not in reference]
        if missing:
            raise ValueError(f"no drift reference for {missing}")
        self.window = window
        self._refs = [BinReference.from_dict(reference[f]) for f in self.features]
        self._ring = np.zeros((len(self.features), window), dtype=np.int16)
        self._counts = [np.zeros(r.proportions.size, dtype=np.int64) for r in self._refs]
        self._next = 0  # ring position of the next reading
        self.count = 0  # readings in the window (<= window)
        self.seen = 0  # readings ever fed

    def update(self, X: np.ndarray) -> None:
        """Add rows (n, k) in ``features`` order (a single row may be 1-D)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != len(self.features):
            raise ValueError(f"expected rows of {len(self.features)} features, got {X.shape}")
        n = X.shape[0]
        if n == 0:
            return
        if n > self.window:  # only the newest rows can stay in the window
            X = X[-self.window :]
            self.seen += n - self.window
            n = self.window
        positions = (self._next + np.arange(n)) % self.window
        for j, ref in enumerate(self._refs):
            new = ref.bins(X[:, j])
            counts = self._counts[j]
            if self.count == self.window:
                np.subtract.at(counts, self._ring[j, positions], 1)
            elif self.count + n > self.window:
                # Filling up: only positions already written hold readings to evict.
                overflow = self.count + n - self.window
                np.subtract.at(counts, self._ring[j, positions[-overflow:]], 1)
            self._ring[j, positions] = new
            np.add.at(counts, new, 1)
        self._next = int((self._next + n) % self.window)
        self.count = min(self.count + n, self.window)
        self.seen += n

    @property
    def ready(self) -> bool:
        return self.count >= self.min_count

    def psi(self) -> dict[str, float]:
        """PSI per feature over the current window; {} until ``min_count`` readings."""
        if not self.ready:
            return {}
        return {
            name: psi(ref.proportions, counts)
            for name, ref, counts in zip(self.features, self._refs, self._counts, strict=True)
        }

    def report(self) -> DriftReport:
        values = self.psi()
        return DriftReport(
            count=self.count,
            full=self.count == self.window,
            psi=values,
            levels={name: level(v) for name, v in values.items()},
        )
