"""The stages in order, over one micro-batch, into its outbox; and their assembly."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.detection import PROCESS_ANOMALY, SENSOR_FAULT, Detection
from gateway.device_state import DeviceState
from gateway.drift_watch import DriftWatch
from gateway.intake import Message
from gateway.metrics import GatewayMetrics
from gateway.notifier import Notifier
from gateway.outbox import Outbox
from gateway.silence import Silences
from gateway.stages.decode import Decode
from gateway.stages.detect import Detect
from gateway.stages.encode import Encode
from gateway.stages.shadow import Shadow
from model.scorer import Scorer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Chain:
    decode: Decode
    silences: Silences
    detect: Detect
    drift: DriftWatch
    shadow: Shadow | None
    encode: Encode
    notify: Notifier
    metrics: GatewayMetrics

    def batch(self, messages: list[Message], scorer: Scorer, now: float) -> Outbox:
        """``messages`` in arrival order -> what to send; ``now``: monotonic seconds."""
        out = Outbox(messages)
        self.metrics.count_received(len(messages))
        version = scorer.version
        decoded = self.decode(messages, scorer)
        # A batch's silences apply before its alerts are decided (so to every reading
        # after them, and to those that came in the same batch).
        self.silences.take(decoded.silences)
        if decoded.states:  # alerts firing before a restart, so acks can find them
            self.restore(decoded.states)
        if decoded.acks:  # before the batch's reminders, which they stop
            self.notify.acknowledge(decoded.acks, out)
        if decoded.rejected:
            for msg, rej in decoded.rejected:
                out.dead_letter(msg, rej)
            self.notify.sensor_faults(self.detect.rejected(decoded.rejected, now), version, out)
        readings = decoded.readings
        if readings:
            decided = self.detect(readings, scorer, now)
            if decided.X is not None and decided.X.shape[0]:
                self.drift.observe(scorer, decided.X, decided.scored_flags)
            if self.shadow is not None:
                self.shadow(readings, scorer, decided)
            # The readings' points, in order, with the message each encodes.
            self.encode(readings, decoded.messages, decided, version, out)
            self.notify.alerts(readings, decided.alerts, scorer, out)
            self.notify.sensor_faults((tr for _, tr in decided.faults), version, out)
        return out

    def restore(self, states: list[DeviceState]) -> None:
        """Alerts the retained device states say were firing go on firing under their
        ids (and acknowledgements) until readings resolve them."""
        detection = self.detect.detection
        now_ns = time.time_ns()
        for state in states:
            kept = [a for a in state.firing if a.kind in (PROCESS_ANOMALY, SENSOR_FAULT)]
            for alert in self.notify.book.restore(kept):
                if alert.kind == SENSOR_FAULT:
                    detection.faults.restore_firing(alert.line, alert.device, alert.fault)
                else:  # a process anomaly
                    detection.alerts.restore_firing(
                        alert.line, alert.device, alert.kind, alert.started_ns, now_ns
                    )
                self.metrics.alerts_restored.inc()
                log.info("alert %s %s on %s/%s restored from the retained state",
                         alert.alert_id, alert.kind, alert.line, alert.device)  # fmt: skip

    def deadman(self, version: str, now: float, out: Outbox) -> None:
        """Devices that stopped reporting (sensor fault ``dropout``)."""
        self.notify.sensor_faults(self.detect.deadman(now), version, out)

    def check_drift(self, version: str, now: float, out: Outbox) -> None:
        transition = self.drift.check(now, version)
        if transition is not None:
            self.notify.drift(transition, out)


def build_chain(
    cfg: GatewayConfig,
    metrics: GatewayMetrics,
    shadow: Callable[[], Scorer | None] | None = None,
) -> Chain:
    """The gateway core for ``cfg``; ``shadow``: the shadow model, if one is configured."""
    detection = Detection(cfg.alerts, cfg.sensor_faults, metrics)
    silences = Silences()
    return Chain(
        decode=Decode(cfg.decode_limits),
        silences=silences,
        detect=Detect(detection, metrics),
        drift=DriftWatch(cfg.drift, cfg.id, metrics),
        shadow=Shadow(shadow, metrics) if shadow is not None else None,
        encode=Encode(cfg.id if cfg.cluster.enabled else None),
        notify=Notifier(cfg.alerts.retain_state, metrics, silences),
        metrics=metrics,
    )
