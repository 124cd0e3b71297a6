"""Notify stage: the one way an alert leaves the gateway, for every kind of alert.

Process anomalies (:class:`~gateway.detection.AlertTransition`), sensor faults
(:class:`~gateway.sensor_faults.FaultTransition`), model drift
(:class:`~gateway.drift_watch.DriftTransition`) and operators' acknowledgements
(:class:`~contract.alerting.Ack`) become alert payloads here and go out through the
batch's :class:`~gateway.outbox.Outbox` with the same rules:

- Each alert has an id (:class:`~gateway.alert_book.AlertBook`) that every message
  about it carries, with its ``event`` (firing, repeated, acknowledged, resolved).
- ``factory/alerts/<line>/<device>``: each transition (QoS 1), unless a silence covers
  ``line``/``device`` at that moment; held-back alerts are counted, published ones
  counted per kind and state.  Reminders of an acknowledged alert are not sent.
  Drift alerts are on line ``_gateway``, device = the gateway id, so
  ``factory/silence/_gateway/<id>`` (or ``_all``) mutes them too.
- ``factory/state/<line>/<device>``: after each transition of a device, its current
  alerts (id, since, who acknowledged them and when), retained, so a late subscriber
  (a dashboard that just started) sees what is firing now.  Not for ``_gateway``: it
  is not a device (the gateway's liveness is its status topic).
- InfluxDB measurement ``alert_event``: every transition, also those a silence held back
  (as ``silenced``): the alert history behind the dashboards' annotations and labels.
- InfluxDB measurement ``sensor_fault`` (tags line, device, kind; field active):
  marks fault periods on dashboards and keeps them out of retraining data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from contract import Reading, alert_topic, schema, state_topic
from contract.alerting import ACKNOWLEDGED, RESOLVED, SILENCED, Ack
from contract.lineprotocol import encode_point
from contract.payloads import alert_payload, rfc3339
from contract.topics import GATEWAY_ALERT_LINE
from gateway.alert_book import AlertBook, OpenAlert
from gateway.alerts import FIRING
from gateway.detection import PROCESS_ANOMALY, SENSOR_FAULT, AlertTransition
from gateway.device_state import state_payload
from gateway.drift_watch import HINT, MODEL_DRIFT, DriftTransition
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox
from gateway.sensor_faults import FaultTransition
from gateway.silence import Silences
from model.drift import PSI_ALERT
from model.scorer import Scorer

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, retain_state: bool, metrics: GatewayMetrics, silences: Silences):
        self._retain_state = retain_state
        self._metrics = metrics
        self.silences = silences
        self.book = AlertBook()

    def alerts(
        self,
        readings: list[Reading],
        transitions: list[AlertTransition],
        scorer: Scorer,
        out: Outbox,
    ) -> None:
        """Process-anomaly transitions; ``alert.at`` is the position of its reading."""
        for alert in transitions:
            r = readings[alert.at]
            drivers = [{"feature": name, "z": round(z, 2)} for name, z in alert.drivers]
            self._emit(out, r.line, r.device, r.ts_ns, PROCESS_ANOMALY, alert.state,
                       score=alert.score, threshold=scorer.threshold, values=r.values,
                       model_version=scorer.version, seq=r.seq, drivers=drivers)  # fmt: skip

    def sensor_faults(
        self, transitions: Iterable[FaultTransition], model_version: str, out: Outbox
    ) -> None:
        """Fault transitions, each also an InfluxDB point."""
        for tr in transitions:
            firing = tr.state == FIRING
            self._emit(out, tr.line, tr.device, tr.ts_ns, SENSOR_FAULT, tr.state, tr.fault,
                       score=1.0 if firing else 0.0, threshold=0.5, values=tr.values,
                       model_version=model_version, detail=tr.detail)  # fmt: skip
            tags = {schema.LINE: tr.line, schema.DEVICE: tr.device, schema.KIND: tr.fault}
            fields = {schema.ACTIVE: int(firing), schema.DETAIL: tr.detail}
            out.point(encode_point(schema.SENSOR_FAULT, tags, fields, tr.ts_ns))

    def drift(self, tr: DriftTransition, out: Outbox) -> None:
        """A model-drift transition of this gateway (line ``_gateway``)."""
        self._emit(out, GATEWAY_ALERT_LINE, tr.gateway_id, tr.ts_ns, MODEL_DRIFT, tr.state,
                   score=max(tr.psi.values(), default=0.0), threshold=PSI_ALERT, values=tr.psi,
                   model_version=tr.model_version, drifting_features=tr.drifting,
                   alert_rate=tr.alert_rate, alert_rate_limit=tr.alert_rate_limit,
                   hint=HINT if tr.state == FIRING else "")  # fmt: skip

    def acknowledge(self, acks: list[Ack], out: Outbox) -> None:
        """Operators' acknowledgements of a batch: reminders of those alerts stop, and
        the acknowledgement goes out like a transition (state still ``firing``)."""
        for ack in acks:
            now = time.time_ns()
            alert, new = self.book.acknowledge(ack, now)
            if alert is None:
                # In a cluster every gateway sees every acknowledgement; one owns the alert.
                self._metrics.acks.labels("unknown").inc()
                log.info("acknowledgement of %s by %s: no such alert firing for %s/%s here",
                         ack.alert_id, ack.by, ack.line, ack.device)  # fmt: skip
                continue
            if not new:
                self._metrics.acks.labels("repeated").inc()
                continue
            self._metrics.acks.labels("applied").inc()
            log.info("alert %s on %s/%s acknowledged by %s", alert.alert_id, ack.line,
                     ack.device, ack.by)  # fmt: skip
            extra = {"acknowledged_by": ack.by, "acknowledged_at": rfc3339(now)}
            if ack.note:
                extra["note"] = ack.note
            self._send(out, alert, ACKNOWLEDGED, FIRING, now, {**alert.body, **extra},
                       {schema.BY: ack.by, schema.NOTE: ack.note})  # fmt: skip

    def _emit(
        self,
        out: Outbox,
        line: str,
        device: str,
        ts_ns: int,
        kind: str,
        state: str,
        fault: str = "",
        **body: Any,
    ) -> None:
        """The one path of every alert transition.  ``body``: the rest of its payload
        (score, threshold, values, model_version, then kind-specific keys)."""
        if fault:
            body["fault"] = fault
        if state == FIRING:
            alert, event = self.book.fire(line, device, kind, fault, ts_ns, body)
            if alert.acked_ns:  # a reminder, and someone is on it
                self._metrics.reminders_held.inc()
                return
        else:
            alert, event = self.book.resolve(line, device, kind, fault, ts_ns), RESOLVED
        log.info("alert %s %s %s/%s %s score=%.3f", event, kind, line, device, alert.alert_id,
                 body.get("score", 0.0))  # fmt: skip
        self._send(out, alert, event, state, ts_ns, body, {schema.SCORE: float(body["score"])})

    def _send(
        self,
        out: Outbox,
        alert: OpenAlert,
        event: str,
        state: str,
        ts_ns: int,
        body: dict[str, Any],
        history: dict[str, float | str],
    ) -> None:
        """Publish (unless silenced), record in the history, update the device state."""
        line, device = alert.line, alert.device
        fields: dict[str, float | int | str] = {
            schema.ALERT_ID: alert.alert_id,
            schema.STARTED_NS: alert.started_ns,
            **history,
        }
        if self.silences.active(line, device, time.time_ns()) is not None:
            self._metrics.alerts_silenced.inc()
            fields[schema.HELD], event = event, SILENCED
        else:
            payload = alert_payload(
                device=device, line=line, ts_ns=ts_ns, kind=alert.kind, state=state,
                alert_id=alert.alert_id, event=event, started=rfc3339(alert.started_ns), **body,
            )  # fmt: skip
            out.publish(alert_topic(line, device), payload)
            self._metrics.count_alert(alert.kind, state)
        tags = {schema.LINE: line, schema.DEVICE: device, schema.KIND: alert.kind,
                schema.FAULT: alert.fault, schema.EVENT: event}  # fmt: skip
        out.point(encode_point(schema.ALERT_EVENT, tags, fields, ts_ns))
        if self._retain_state and line != GATEWAY_ALERT_LINE:
            out.publish(state_topic(line, device), self._state(line, device, ts_ns), True)

    def _state(self, line: str, device: str, ts_ns: int) -> bytes:
        silence = self.silences.active(line, device, time.time_ns())
        return state_payload(line, device, ts_ns, self.book.of_device(line, device), silence)
