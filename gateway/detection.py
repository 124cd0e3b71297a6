"""Readings in, decisions out: model inputs, scores, alert lifecycles, sensor-fault rules.

This is the gateway's whole detection logic, with no MQTT or InfluxDB in it, so the
offline backtest (``python -m backtest``) runs exactly this code on a labelled file
and counts what the gateway would have raised.  The caller publishes and stores.
Time comes from the caller too: ``now`` (monotonic seconds) for the deadman and the
decode-error window; the backtest passes the readings' own clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from contract import Reading
from gateway.alerts import FIRING, AlertTracker
from gateway.config import AlertConfig, SensorFaultConfig
from gateway.features import FeatureBuilder
from gateway.metrics import GatewayMetrics
from gateway.sensor_faults import FaultTransition, SensorFaults
from model.scorer import Scorer

PROCESS_ANOMALY = "process_anomaly"
SENSOR_FAULT = "sensor_fault"
# Alert drivers named per alert.
DRIVERS = 3


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """A process-anomaly alert firing (new or repeated) or resolving at reading ``at``."""

    at: int
    state: str
    score: float
    drivers: list[tuple[str, float]]
    repeat: bool = False  # a reminder of an alert already firing


@dataclass(slots=True)
class Decisions:
    scores: list[float]  # per reading; NaN: not scored (warming up, out of order)
    flags: list[bool]
    alerts: list[AlertTransition] = field(default_factory=list)
    # Sensor-fault transitions with the position of the reading that caused them.
    faults: list[tuple[int, FaultTransition]] = field(default_factory=list)
    # Model inputs and flags of the scored readings (drift watch).
    X: np.ndarray | None = None
    scored_flags: np.ndarray | None = None


class Detection:
    def __init__(
        self,
        alerts: AlertConfig,
        sensor_faults: SensorFaultConfig,
        metrics: GatewayMetrics | None = None,
    ):
        self.alerts = AlertTracker(alerts)
        self.faults = SensorFaults(sensor_faults)
        self._fault_rules = sensor_faults.enabled
        self._features = FeatureBuilder(metrics)

    def decide(self, readings: list[Reading], scorer: Scorer, now: float) -> Decisions:
        """Score ``readings`` (time order per device) and feed every decision rule."""
        n = len(readings)
        x, index = self._features.build(readings, scorer)
        scores = np.full(n, np.nan)
        flags = np.zeros(n, dtype=bool)
        ratios = None
        if index.size:
            scored = scorer.score(x)
            scores[index] = scored
            flags[index] = scored >= scorer.threshold
            hit = flags[index]
            if hit.any():
                ratios = np.zeros((n, len(scorer.signals)))
                ratios[index[hit]] = scorer.explain(x[hit])
        out = Decisions(scores.tolist(), flags.tolist(), X=x, scored_flags=flags[index])
        check_faults = self.faults.on_reading if self._fault_rules else None
        threshold = scorer.threshold
        for i, reading in enumerate(readings):
            score = out.scores[i]
            if not math.isnan(score):
                state = self.alerts.update(
                    reading.line, reading.device, PROCESS_ANOMALY, score, threshold, reading.ts_ns
                )
                if state is not None:
                    drivers = (
                        scorer.top_contributors(ratios[i], DRIVERS)
                        if ratios is not None and out.flags[i]
                        else []
                    )
                    repeat = state == FIRING and not self.alerts.is_new_firing(
                        reading.line, reading.device, PROCESS_ANOMALY, reading.ts_ns
                    )
                    out.alerts.append(AlertTransition(i, state, score, drivers, repeat))
            if check_faults is not None:
                out.faults.extend((i, tr) for tr in check_faults(reading, now))
        return out

    def rejected(
        self, line: str, device: str, reason: str, detail: str, ts_ns: int, now: float
    ) -> list[FaultTransition]:
        if not self._fault_rules:
            return []
        return self.faults.on_rejected(line, device, reason, detail, ts_ns, now)

    def check_deadman(self, now: float, now_ns: int) -> list[FaultTransition]:
        if not self._fault_rules:
            return []
        return self.faults.check_deadman(now, now_ns)
