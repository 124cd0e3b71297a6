"""The time-aware detector's stateless half: statistics in, score out.

The per-device half (:class:`model.dynamics.bank.DeviceBank`) turns each device's
readings into statistics; this half divides each statistic by its control limit and
takes the largest ratio as the raw score.  Its inputs ``X`` are the bank's
statistics followed by the raw field values (for the absolute level guard), in
:attr:`DynamicsDetector.columns` order.  A ratio of 1 is "at the control limit";
the calibrated score is ``r / (1 + r)``, so the decision threshold is 0.5 and the
score keeps ranking far beyond it (no saturation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.dynamics.bank import BankParams, DeviceBank
from model.dynamics.limits import LevelGuard, Limit

NAME = "dynamics"
LEVEL = "level"


@dataclass(frozen=True)
class DynamicsDetector:
    params: BankParams
    limits: tuple[Limit, ...]  # one per bank statistic
    level: LevelGuard
    event_rate: float

    def __post_init__(self) -> None:
        if len(self.limits) != len(self.params.stat_names):
            raise ValueError(
                f"{len(self.limits)} limits for {len(self.params.stat_names)} statistics"
            )
        if len(self.level.low) != len(self.params.fields):
            raise ValueError("the level guard needs one range per field")
        # Disabled statistics (no limit) divide by inf: ratio 0.
        object.__setattr__(
            self,
            "_divisors",
            np.array([np.inf if lim.value is None else lim.value for lim in self.limits]),
        )

    @property
    def fields(self) -> tuple[str, ...]:
        return self.params.fields

    @property
    def columns(self) -> tuple[str, ...]:
        """Input columns: the bank's statistics, then the raw fields."""
        return self.params.stat_names + self.params.fields

    @property
    def signals(self) -> tuple[str, ...]:
        """What each ratio column means, for alert drivers (``sound_db__spike``...)."""
        return self.params.stat_names + tuple(f"{f}__{LEVEL}" for f in self.params.fields)

    def new_bank(self) -> DeviceBank:
        return DeviceBank(self.params)

    def ratios(self, X: np.ndarray) -> np.ndarray:
        """Each statistic over its control limit, shape (n, len(columns))."""
        X = np.asarray(X, dtype=np.float64)
        m = len(self.params.stat_names)
        return np.hstack([X[:, :m] / self._divisors, self.level.ratios(X[:, m:])])

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        if X.shape[0] == 0:
            return np.empty(0)
        return self.ratios(X).max(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.to_dict(),
            "limits": {
                name: {
                    "limit": lim.value,
                    "anchor": lim.anchor,
                    "mean_excess": lim.mean_excess,
                    "run_length": lim.run_length,
                }
                for name, lim in zip(self.params.stat_names, self.limits, strict=True)
            },
            "level": {"low": self.level.low, "high": self.level.high, "scale": self.level.scale},
            "event_rate": self.event_rate,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DynamicsDetector:
        params = BankParams.from_dict(dict(data["params"]))
        limits = tuple(
            Limit(
                None if (d := data["limits"][name])["limit"] is None else float(d["limit"]),
                float(d["anchor"]),
                float(d["mean_excess"]),
                float(d["run_length"]),
            )
            for name in params.stat_names
        )
        level = LevelGuard(*(tuple(map(float, data["level"][k])) for k in ("low", "high", "scale")))
        return cls(params, limits, level, float(data["event_rate"]))
