"""Detect stage: :class:`gateway.detection.Detection` for the running gateway.

Detection holds the decisions (the backtest replays exactly it); this stage feeds it
the batch's readings, its rejections and the deadman clock, and keeps the metrics.
"""

from __future__ import annotations

import time

from contract import Reading, Rejected
from contract.topics import TopicError, parse_reading_topic
from gateway.detection import Decisions, Detection
from gateway.intake import Message
from gateway.metrics import GatewayMetrics
from gateway.sensor_faults import FaultTransition
from model.scorer import Scorer


class Detect:
    def __init__(self, detection: Detection, metrics: GatewayMetrics):
        self.detection = detection
        self._metrics = metrics

    def __call__(self, readings: list[Reading], scorer: Scorer, now: float) -> Decisions:
        """One vectorised scoring of the batch, then every decision rule."""
        started = time.perf_counter()
        decided = self.detection.decide(readings, scorer, now)
        self._metrics.observe_batch(len(readings), time.perf_counter() - started)
        n_anomalies = sum(decided.flags)
        if n_anomalies:
            self._metrics.anomalies.inc(n_anomalies)
        return decided

    def rejected(
        self, rejected: list[tuple[Message, Rejected]], now: float
    ) -> list[FaultTransition]:
        """Sensor faults that rejected readings reveal (out of range, decode-error bursts)."""
        out: list[FaultTransition] = []
        for msg, rej in rejected:
            try:
                line, device = parse_reading_topic(msg.topic)
            except TopicError:
                continue  # no device to blame (a bad topic, a malformed silence)
            out += self.detection.rejected(
                line, device, rej.reason, rej.detail, msg.received_ns, now
            )
        return out

    def deadman(self, now: float) -> list[FaultTransition]:
        return self.detection.check_deadman(now, time.time_ns())
