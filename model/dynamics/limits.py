"""Control limits for the time-aware detector's statistics, set from normal data.

A limit is the level a statistic of normal operation exceeds at a chosen rate of
false *events* (``event_rate``, per reading).  Two things make that robust:

* The far tail is extrapolated, not read off a few extreme rows: above an anchor
  quantile (the 99th, or lower for short data so that at least
  ``MIN_TAIL_ROWS`` rows lie above it) exceedances are modelled as exponential
  (the peaks-over-threshold method), and the limit is the quantile of that tail at
  the wanted rate.
* Rates are per event, not per reading: a smoothed statistic stays above a level
  for many readings in a row, a spike statistic for one.  The per-reading rate is
  the event rate times the mean length of exceedance runs measured per device in
  the same data, so every statistic gets about the same number of false alerts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Rows above the tail anchor: below this, an exponential fit is not trustworthy.
MIN_TAIL_ROWS = 100
# Fewer normal rows than this cannot set a limit at all.
MIN_ROWS = 1_000
DEFAULT_EVENT_RATE = 1e-6


class LimitError(ValueError):
    """Not enough normal data to set control limits; the message says how much."""


@dataclass(frozen=True)
class Limit:
    value: float | None  # None: the statistic never left zero in training; ignored
    anchor: float
    mean_excess: float
    run_length: float


def fit_limit(values: np.ndarray, groups: np.ndarray, event_rate: float) -> Limit:
    """The limit of one statistic; ``values`` in time order within each group."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    q = min(0.99, max(0.9, 1.0 - MIN_TAIL_ROWS / n))
    anchor = float(np.quantile(x, q))
    excess = x[x > anchor] - anchor
    if excess.size == 0 or not np.any(x > 0):
        return Limit(None, anchor, 0.0, 1.0)
    runs = _run_length(x > anchor, groups)
    rate = min(event_rate * runs, 1.0 - q)
    beta = float(excess.mean())
    value = anchor + beta * math.log((1.0 - q) / rate)
    return Limit(value, anchor, beta, runs)


def _run_length(above: np.ndarray, groups: np.ndarray) -> float:
    """Mean length of runs of True within each group (rows of a group in time order)."""
    order = np.argsort(groups, kind="stable")
    a = above[order]
    g = np.asarray(groups)[order]
    new_group = np.r_[True, g[1:] != g[:-1]]
    starts = a & (new_group | ~np.r_[False, a[:-1]])
    runs = int(starts.sum())
    return float(a.sum()) / runs if runs else 1.0


def fit_limits(
    stats: np.ndarray, groups: np.ndarray, names: Sequence[str], event_rate: float
) -> list[Limit]:
    if not 0 < event_rate < 0.01:
        raise LimitError(f"event_rate must be in (0, 0.01), got {event_rate}")
    n = stats.shape[0]
    if n < MIN_ROWS:
        raise LimitError(
            f"only {n} normal readings after warm-up to set control limits on "
            f"(need >= {MIN_ROWS}); train on more data"
        )
    return [fit_limit(stats[:, j], groups, event_rate) for j in range(len(names))]


@dataclass(frozen=True)
class LevelGuard:
    """Absolute range per field, across all training devices: a value beyond what any
    machine showed, by ``margin`` training standard deviations, is out of its level."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, values: np.ndarray, margin: float = 1.0) -> LevelGuard:
        lo, hi = values.min(axis=0), values.max(axis=0)
        std = values.std(axis=0)
        std = np.where(std > 0, std, np.maximum(np.abs(hi), 1.0) * 1e-3)
        return cls(tuple(map(float, lo)), tuple(map(float, hi)), tuple(map(float, std * margin)))

    def ratios(self, values: np.ndarray) -> np.ndarray:
        lo, hi, sc = (np.asarray(v) for v in (self.low, self.high, self.scale))
        return np.maximum(np.maximum(lo - values, values - hi), 0.0) / sc
