"""Turns alert transitions into MQTT messages and InfluxDB points.

- ``factory/alerts/<line>/<device>``: each transition (QoS 1), unless silenced.
- ``factory/state/<line>/<device>``: the device's current alerts, retained, so a
  late subscriber (a dashboard that just started) sees what is firing now.
- InfluxDB measurement ``sensor_fault`` (tags line, device, kind; field active):
  marks fault periods on dashboards and keeps them out of retraining data.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from contract import alert_topic, state_topic
from contract.payloads import alert_payload, rfc3339
from gateway.alerts import FIRING, AlertTracker
from gateway.config import GatewayConfig
from gateway.lineprotocol import encode_point
from gateway.metrics import GatewayMetrics
from gateway.sensor_faults import FaultTransition, SensorFaults
from gateway.silence import Silences

PROCESS_ANOMALY = "process_anomaly"
SENSOR_FAULT = "sensor_fault"


class Notifier:
    def __init__(
        self,
        cfg: GatewayConfig,
        publish: Callable[[str, bytes, bool], None],
        metrics: GatewayMetrics,
        tracker: AlertTracker,
        faults: SensorFaults,
        silences: Silences,
    ):
        self._cfg = cfg
        self._publish = publish
        self._metrics = metrics
        self._tracker = tracker
        self._faults = faults
        self.silences = silences

    def process_alert(
        self,
        line: str,
        device: str,
        state: str,
        ts_ns: int,
        score: float,
        threshold: float,
        values: dict[str, float],
        model_version: str,
        **extra: object,
    ) -> None:
        payload = alert_payload(
            device=device,
            line=line,
            ts_ns=ts_ns,
            kind=PROCESS_ANOMALY,
            state=state,
            score=score,
            threshold=threshold,
            values=values,
            model_version=model_version,
            **extra,
        )
        self._emit(line, device, PROCESS_ANOMALY, state, payload, ts_ns)

    def sensor_fault(self, tr: FaultTransition, model_version: str) -> str:
        """Publish one fault transition; returns its InfluxDB point."""
        firing = tr.state == FIRING
        payload = alert_payload(
            device=tr.device,
            line=tr.line,
            ts_ns=tr.ts_ns,
            kind=SENSOR_FAULT,
            state=tr.state,
            score=1.0 if firing else 0.0,
            threshold=0.5,
            values=tr.values,
            model_version=model_version,
            fault=tr.fault,
            detail=tr.detail,
        )
        self._emit(tr.line, tr.device, SENSOR_FAULT, tr.state, payload, tr.ts_ns)
        return encode_point(
            "sensor_fault",
            {"line": tr.line, "device": tr.device, "kind": tr.fault},
            {"active": int(firing), "detail": tr.detail},
            tr.ts_ns,
        )

    def _emit(
        self, line: str, device: str, kind: str, state: str, payload: bytes, ts_ns: int
    ) -> None:
        if self.silences.active(line, device, time.time_ns()) is not None:
            self._metrics.alerts_silenced.inc()
        else:
            self._publish(alert_topic(line, device), payload, False)
            self._metrics.count_alert(kind, state)
        if self._cfg.alerts.retain_state:
            self.publish_state(line, device, ts_ns)

    def publish_state(self, line: str, device: str, ts_ns: int | None = None) -> None:
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
        self._publish(state_topic(line, device), orjson.dumps(body), True)
