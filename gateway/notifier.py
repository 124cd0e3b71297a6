"""Notify stage: the one way an alert leaves the gateway, for every kind of alert.

Process anomalies (:class:`~gateway.detection.AlertTransition`), sensor faults
(:class:`~gateway.sensor_faults.FaultTransition`) and model drift
(:class:`~gateway.drift_watch.DriftTransition`) become alert payloads here and go out
through the batch's :class:`~gateway.outbox.Outbox` with the same rules:

- ``factory/alerts/<line>/<device>``: each transition (QoS 1), unless a silence covers
  ``line``/``device`` at that moment; held-back alerts are counted, published ones
  counted per kind and state.  Drift alerts are on line ``_gateway``, device = the
  gateway id, so ``factory/silence/_gateway/<id>`` (or ``_all``) mutes them too.
- ``factory/state/<line>/<device>``: after each transition of a device, its current
  alerts, retained, so a late subscriber (a dashboard that just started) sees what is
  firing now.  Not for ``_gateway``: it is not a device (the gateway's liveness is its
  status topic), and its drift alerts stay on the alerts topic alone.
- InfluxDB measurement ``sensor_fault`` (tags line, device, kind; field active):
  marks fault periods on dashboards and keeps them out of retraining data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson

from contract import Reading, alert_topic, schema, state_topic
from contract.lineprotocol import encode_point
from contract.payloads import alert_payload, rfc3339
from contract.topics import GATEWAY_ALERT_LINE
from gateway.alerts import FIRING, AlertTracker
from gateway.detection import PROCESS_ANOMALY, SENSOR_FAULT, AlertTransition
from gateway.drift_watch import HINT, MODEL_DRIFT, DriftTransition
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox
from gateway.sensor_faults import FaultTransition, SensorFaults
from gateway.silence import Silences
from model.drift import PSI_ALERT
from model.scorer import Scorer

log = logging.getLogger(__name__)


class Notifier:
    def __init__(
        self,
        retain_state: bool,
        metrics: GatewayMetrics,
        tracker: AlertTracker,
        faults: SensorFaults,
        silences: Silences,
    ):
        self._retain_state = retain_state
        self._metrics = metrics
        self._tracker = tracker
        self._faults = faults
        self.silences = silences

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
            log.info("alert %s %s/%s score=%.3f", alert.state, r.line, r.device, alert.score)

    def sensor_faults(
        self, transitions: Iterable[FaultTransition], model_version: str, out: Outbox
    ) -> None:
        """Fault transitions, each also an InfluxDB point."""
        for tr in transitions:
            firing = tr.state == FIRING
            self._emit(out, tr.line, tr.device, tr.ts_ns, SENSOR_FAULT, tr.state,
                       score=1.0 if firing else 0.0, threshold=0.5, values=tr.values,
                       model_version=model_version, fault=tr.fault, detail=tr.detail)  # fmt: skip
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

    def _emit(
        self, out: Outbox, line: str, device: str, ts_ns: int, kind: str, state: str, **body: Any
    ) -> None:
        """The one path of every alert: the rules it goes out by.  ``body``: the rest of
        its payload (score, threshold, values, model_version, then kind-specific keys)."""
        if self.silences.active(line, device, time.time_ns()) is not None:
            self._metrics.alerts_silenced.inc()
        else:
            payload = alert_payload(
                device=device, line=line, ts_ns=ts_ns, kind=kind, state=state, **body
            )
            out.publish(alert_topic(line, device), payload)
            self._metrics.count_alert(kind, state)
        if self._retain_state and line != GATEWAY_ALERT_LINE:
            out.publish(state_topic(line, device), self._state(line, device, ts_ns), True)

    def _state(self, line: str, device: str, ts_ns: int) -> bytes:
        now = time.time_ns()
        firing = [
            {"kind": PROCESS_ANOMALY, "since": rfc3339(life.firing_since_ns)}
            for kind, life in self._tracker.active(line, device).items()
            if kind == PROCESS_ANOMALY
        ]
        firing += [{"kind": SENSOR_FAULT, "fault": f} for f in self._faults.firing(line, device)]
        silence = self.silences.active(line, device, now)
        body = {
            "line": line,
            "device": device,
            "ts": rfc3339(ts_ns or now),
            "firing": firing,
            "silenced_until": rfc3339(silence.until_ns) if silence else None,
        }
        return orjson.dumps(body)
