"""Is the model still right for this plant?  Input drift and unusual alert rates.

- Input drift: per-feature PSI of a sliding window of scored readings against the
  training distribution stored in the model (``drift_reference``).
- Alert rate: the share of readings scored anomalous over a sliding window, against
  what the model alarmed on validation data.

Either one above its limit makes a ``model_drift`` transition, once, and a ``resolved``
one when it clears; the notify stage (:class:`gateway.notifier.Notifier`) publishes it
on ``factory/alerts/_gateway/<gateway-id>`` (with a hint to retrain), by the same rules
as every other alert.  The PSI per feature is also exported as a metric.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from gateway.config import DriftConfig
from gateway.metrics import GatewayMetrics
from model.drift import DriftMonitor
from model.scorer import Scorer

log = logging.getLogger(__name__)

MODEL_DRIFT = "model_drift"
HINT = (
    "inputs no longer look like the training data: check sensors for recalibration, then "
    "retrain from recent history (python -m model retrain --influx-url ... --database ...)"
)


@dataclass(frozen=True, slots=True)
class DriftTransition:
    """The model started (``firing``) or stopped (``resolved``) looking out of date."""

    gateway_id: str
    state: str
    ts_ns: int
    model_version: str
    psi: dict[str, float]  # per watched feature
    drifting: list[str]  # features with PSI at alert level
    alert_rate: float
    alert_rate_limit: float


class DriftWatch:
    def __init__(self, cfg: DriftConfig, gateway_id: str, metrics: GatewayMetrics):
        self._cfg = cfg
        self._id = gateway_id
        self._metrics = metrics
        self._monitor: DriftMonitor | None = None
        self._columns: list[int] = []
        self._version: str | None = None
        self._expected_rate = 0.0
        # (readings, anomalous) per scored batch, covering about the last
        # alert_rate_window readings: per-batch bookkeeping, no per-reading loop.
        self._batches: deque[tuple[int, int]] = deque()
        self._seen = 0
        self._anomalous = 0
        self._firing = False
        self._next_check = 0.0

    def _reset(self, scorer: Scorer) -> None:
        self._version = scorer.version
        reference = scorer.metadata.get("drift_reference")
        self._monitor = None
        if reference:
            try:
                self._monitor = DriftMonitor(
                    reference, window=self._cfg.window, features=scorer.drift_columns
                )
                self._columns = [scorer.features.index(f) for f in scorer.drift_columns]
            except ValueError as exc:
                log.warning("no drift monitoring for model %s: %s", scorer.version, exc)
        validation = (scorer.metadata.get("metrics") or {}).get("validation") or {}
        rate = validation.get("false_alarm_rate") or validation.get("alarm_rate") or 0.0
        self._expected_rate = float(rate)
        self._batches.clear()
        self._seen = self._anomalous = 0

    def observe(self, scorer: Scorer, x: np.ndarray, flags: np.ndarray) -> None:
        if not self._cfg.enabled:
            return
        if scorer.version != self._version:
            self._reset(scorer)
        if self._monitor is not None and len(x):
            self._monitor.update(x[:, self._columns])
        n, k = len(flags), int(flags.sum())
        self._batches.append((n, k))
        self._seen += n
        self._anomalous += k
        while self._batches and self._seen - self._batches[0][0] >= self._cfg.alert_rate_window:
            old_n, old_k = self._batches.popleft()
            self._seen -= old_n
            self._anomalous -= old_k

    def check(self, now: float, model_version: str) -> DriftTransition | None:
        """Every ``check_interval_s``: a transition when drift starts or ends, else None."""
        if not self._cfg.enabled or now < self._next_check:
            return None
        self._next_check = now + self._cfg.check_interval_s
        psi: dict[str, float] = {}
        drifting: list[str] = []
        if self._monitor is not None:
            report = self._monitor.report()
            psi = {k: round(v, 4) for k, v in report.psi.items()}
            for feature, value in psi.items():
                self._metrics.drift_psi.labels(feature).set(value)
            if report.count >= self._monitor.min_count:
                drifting = [f for f, lvl in report.levels.items() if lvl == "alert"]
        rate = self._anomalous / self._seen if self._seen else 0.0
        self._metrics.anomaly_rate.set(rate)
        limit = max(self._cfg.alert_rate_factor * self._expected_rate, self._cfg.alert_rate_min)
        rate_high = self._seen >= self._cfg.alert_rate_window and rate > limit
        firing = bool(drifting) or rate_high
        if firing == self._firing:
            return None
        self._firing = firing
        state = "firing" if firing else "resolved"
        log.warning(
            "model drift %s: features %s, alert rate %.3f (limit %.3f)",
            state,
            drifting or "-",
            rate,
            limit,
        )
        return DriftTransition(
            self._id,
            state,
            time.time_ns(),
            model_version,
            psi,
            drifting,
            round(rate, 4),
            round(limit, 4),
        )
