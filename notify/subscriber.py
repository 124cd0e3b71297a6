"""The notifier's MQTT session: persistent, QoS 1, manual acknowledgement.

A message is acknowledged only after ``AlertIntake.handle`` returned, i.e. after its
notifications are committed to the outbox (or it was found malformed or a duplicate).
Unacknowledged messages are redelivered by the broker after a reconnect or restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from common.mqtt import MqttSettings, make_client, session_up, start
from contract import ALERTS_SUBSCRIPTION
from notify.intake import AlertIntake, OutboxGate
from notify.metrics import NotifierMetrics

log = logging.getLogger(__name__)


class AlertSubscriber:
    def __init__(
        self,
        settings: MqttSettings,
        intake: AlertIntake,
        gate: OutboxGate,
        metrics: NotifierMetrics,
        on_failure: Callable[[BaseException], None],
    ):
        self._settings = settings
        self._intake = intake
        self._metrics = metrics
        self._on_failure = on_failure
        self.subscribed = threading.Event()
        self._accepting = True
        self._client = make_client(settings, settings.client_id)
        self._client.manual_ack_set(True)
        self._client.receive_gate = gate
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_plain_message = self._on_plain_message

    def start(self) -> None:
        # clean_start=False: resume the persistent session and get what was queued.
        start(self._client, self._settings, clean_start=False)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not session_up(client, self._settings, flags, reason_code):
            return
        self._metrics.connected.set(1)
        client.subscribe([(ALERTS_SUBSCRIPTION, SubscribeOptions(qos=1))])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if reason_codes and reason_codes[0].is_failure:
            log.error("broker refused the subscription to %s (check the ACL)", ALERTS_SUBSCRIPTION)
            return
        log.info("subscribed to %s", ALERTS_SUBSCRIPTION)
        self._metrics.ready.set(1)
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.subscribed.clear()
        self._metrics.connected.set(0)
        self._metrics.ready.set(0)
        if reason_code != 0:
            log.warning("disconnected from broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self._on_plain_message(client, msg.topic, msg.payload, msg.mid, msg.qos)

    def _on_plain_message(
        self, client: mqtt.Client, topic: str, payload: bytes, mid: int, qos: int
    ) -> None:
        if not self._accepting:
            return  # shutting down: unacknowledged, the broker redelivers it
        try:
            self._intake.handle(topic, payload)
        except Exception as exc:
            # The outbox cannot commit (disk full, I/O error): do not acknowledge; stop,
            # so that systemd restarts us and the broker redelivers.
            self._accepting = False
            log.exception("cannot queue the alert from %s; stopping", topic)
            self._on_failure(exc)
            return
        if qos:
            client.ack(mid, qos)

    def stop_accepting(self) -> None:
        self._accepting = False

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
