"""Typed settings of the model tools (``python -m model --config config/model.toml``).

Every key can be overridden from the environment as ``MODEL_<SECTION>_<KEY>``, e.g.
``MODEL_TRAIN_DETECTOR=pca_t2q`` or ``MODEL_RETRAIN_PASSWORD``; command-line flags
override both.  Without a file the defaults below apply (plus the environment).

    models_dir = "var/models"
    [train]
    detector = "pca_t2q"          # or "isolation_forest"
    features = ["temperature_c", "humidity_pct", "sound_db", "temperature_c__std_10"]
    [train.pca_t2q]
    explained_variance = 0.95
    [retrain]
    influx_url = "http://localhost:8086"
    database = "factory"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, load_config, read_secret
from model.calibration import DEFAULT_MAX_FALSE_ALARM_RATE
from model.detectors import ALL_DETECTORS
from model.dynamics.limits import DEFAULT_EVENT_RATE
from model.dynamics.train import DEFAULT_FAULT_MARGIN_S
from model.envelope import DEFAULT_WEIGHT
from model.pca_monitor import COMBINES, Q_LIMITS

ENV_PREFIX = "MODEL"


@dataclass(frozen=True)
class IsolationForestSettings:
    n_estimators: int = 100

    def __post_init__(self) -> None:
        if self.n_estimators < 1:
            raise ValueError("n_estimators must be >= 1")


@dataclass(frozen=True)
class PcaT2QSettings:
    # Components kept: the fewest explaining this share of the variance (<= p - 1).
    explained_variance: float = 0.95
    # Significance of the T² and Q control limits that normalise the two statistics.
    alpha: float = 0.01
    q_limit: str = "jackson_mudholkar"  # or "empirical"
    combine: str = "sum"  # or "max"

    def __post_init__(self) -> None:
        if not 0 < self.explained_variance <= 1:
            raise ValueError("explained_variance must be in (0, 1]")
        if not 0 < self.alpha < 0.5:
            raise ValueError("alpha must be in (0, 0.5)")
        if self.q_limit not in Q_LIMITS:
            raise ValueError(f"q_limit must be one of {Q_LIMITS}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}")


@dataclass(frozen=True)
class DynamicsSettings:
    # False alerts aimed at per statistic and reading (events, not readings: see
    # model.dynamics.limits).  About 1 per machine-day over all statistics at 1 Hz.
    event_rate: float = DEFAULT_EVENT_RATE
    # With labels: readings this long after a fault do not set limits.
    fault_margin_s: float = DEFAULT_FAULT_MARGIN_S

    def __post_init__(self) -> None:
        if not 0 < self.event_rate < 0.01:
            raise ValueError("event_rate must be in (0, 0.01)")
        if self.fault_margin_s < 0:
            raise ValueError("fault_margin_s must be >= 0")


@dataclass(frozen=True)
class TrainSettings:
    detector: str = "dynamics"
    # Empty: temperature_c, humidity_pct, sound_db.  Stream features allowed.
    features: tuple[str, ...] = ()
    seed: int = 42
    fit_on: str = "normal"
    contamination: float = 0.01
    max_false_alarm_rate: float = DEFAULT_MAX_FALSE_ALARM_RATE
    envelope_weight: float = DEFAULT_WEIGHT
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    isolation_forest: IsolationForestSettings = field(default_factory=IsolationForestSettings)
    pca_t2q: PcaT2QSettings = field(default_factory=PcaT2QSettings)
    dynamics: DynamicsSettings = field(default_factory=DynamicsSettings)

    def __post_init__(self) -> None:
        if self.detector not in ALL_DETECTORS:
            raise ValueError(
                f"detector must be one of {sorted(ALL_DETECTORS)}, got {self.detector!r}"
            )
        if self.fit_on not in {"normal", "all"}:
            raise ValueError("fit_on must be 'normal' or 'all'")

    def detector_params(self, detector: str) -> dict[str, Any]:
        """The configured parameters of ``detector`` (its table in this section)."""
        settings = getattr(self, detector, None)
        return dataclasses.asdict(settings) if settings is not None else {}


@dataclass(frozen=True)
class RetrainSettings:
    influx_url: str = "http://localhost:8086"
    database: str = "factory"
    retention_policy: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    timeout_s: float = 60.0
    # History is read in time slices of this length, each streamed in chunks of
    # chunk_size points, so a query never holds more than one chunk of JSON.
    query_window_s: float = 6 * 3600.0
    chunk_size: int = 10_000
    # Default --since: this long before --until (default now).
    lookback_s: float = 7 * 86400.0
    # Refuse (with a clear error) to load more readings than this.
    max_rows: int = 2_000_000
    # Readings of a device within this many seconds of an active sensor_fault point
    # are not trained on.
    fault_margin_s: float = 60.0
    # The latest share of the clean history (by time) is held out for the comparison.
    holdout_fraction: float = 0.2
    # Candidate threshold without labels: this quantile of its validation scores is
    # the alert threshold, i.e. the false-alarm rate it aims at on clean history.
    contamination: float = 0.001
    # "Not worse" (see model.retrain.not_worse): allowed absolute excess of the
    # candidate over the active model.
    # "Not worse" by the backtest on held-out history: the candidate may raise at most
    # this many more false alerts per machine-day, and lose at most this much episode
    # recall per fault type (with --labelled-csv).
    false_alerts_tolerance: float = 0.5
    recall_tolerance: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.holdout_fraction < 0.9:
            raise ValueError("holdout_fraction must be in (0, 0.9)")
        if not 0 < self.contamination < 0.5:
            raise ValueError("contamination must be in (0, 0.5)")
        if self.query_window_s <= 0 or self.chunk_size < 1 or self.max_rows < 1:
            raise ValueError("query_window_s, chunk_size and max_rows must be positive")
        if min(self.false_alerts_tolerance, self.recall_tolerance) < 0:
            raise ValueError("tolerances must be >= 0")

    def resolved_password(self) -> str:
        return read_secret(self.password, self.password_file, "retrain.password")


@dataclass(frozen=True)
class ModelConfig:
    models_dir: str = "var/models"
    train: TrainSettings = field(default_factory=TrainSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)


def load_model_config(path: str | Path | None, env: dict[str, str] | None = None) -> ModelConfig:
    """The config file (optional) with ``MODEL_*`` environment overrides applied."""
    return load_config(ModelConfig, path, ENV_PREFIX, env)


__all__ = ["ConfigError", "ModelConfig", "RetrainSettings", "TrainSettings", "load_model_config"]
