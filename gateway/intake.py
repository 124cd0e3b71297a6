"""The gateway's MQTT session: subscribe, receive, acknowledge late, publish.

Messages are acknowledged manually, only once the reading is durable (see
``gateway.writer``).  Until then the broker counts them against our Receive Maximum;
the gateway also enforces a bound of its own (``gateway.flow``), so the readings held
in memory stay within ``pipeline.max_held_readings`` whatever the broker does.  Anything not
acknowledged when we crash is redelivered through the persistent session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from common.mqtt import Client, MqttSettings, make_client, session_up, start
from contract import status_topic
from contract.payloads import OFFLINE, ONLINE
from gateway.flow import HeldLimit
from gateway.inbox import Inbox
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

# Outgoing alerts / dead letters kept in memory while the broker is away.
_MAX_OUTGOING_QUEUED = 50_000


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_ns: int
    # The session that must acknowledge it (one per partition in cluster mode).
    client: mqtt.Client | None = None


def ack_all(acks: list[tuple[mqtt.Client | None, int, int]]) -> None:
    """Acknowledge (client, mid, qos) in order; a released session just ignores them.

    QoS 1 acks of one session go out as one write (``common.mqtt.Client.ack_many``)."""
    batches: dict[mqtt.Client, list[int]] = {}
    for client, mid, qos in acks:
        if client is None or qos == 0:
            continue
        if qos == 1 and isinstance(client, Client):
            batches.setdefault(client, []).append(mid)
        else:
            client.ack(mid, qos)
    for client, mids in batches.items():
        client.ack_many(mids)


class MqttIntake:
    def __init__(
        self,
        settings: MqttSettings,
        gateway_id: str,
        subscriptions: tuple[str, ...],
        inbox: Inbox[Message],
        metrics: GatewayMetrics,
        gate: HeldLimit | None = None,
        no_local: frozenset[str] = frozenset(),
    ):
        self._settings = settings
        self._subscriptions = subscriptions
        # Subscriptions that must not bring back what this session publishes itself.
        self._no_local = no_local
        self._inbox = inbox
        self._metrics = metrics
        self._status_topic = status_topic(gateway_id)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._client = make_client(
            settings, f"gateway-{gateway_id}", will=(self._status_topic, OFFLINE)
        )
        self._client.manual_ack_set(True)
        self._client.receive_gate = gate
        self._gate = gate
        self._client.max_queued_messages_set(_MAX_OUTGOING_QUEUED)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_plain_message = self._on_plain_message
        self._client.on_subscribe = self._on_subscribe
        self._accepting = True
        # Optional hook (topic, payload) that takes messages which are not for the inbox.
        self._route: Callable[[str, bytes], bool] | None = None

    def start(self) -> None:
        # clean_start=False: resume our persistent session and get what was queued
        # for us while we were down.
        start(self._client, self._settings, clean_start=False)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not session_up(client, self._settings, flags, reason_code):
            return
        self.connected.set()
        self._metrics.connected.set(1)
        # Subscribing on every connect is idempotent and covers an expired session.
        client.subscribe(
            [(t, SubscribeOptions(qos=1, noLocal=t in self._no_local)) for t in self._subscriptions]
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [
            t for t, rc in zip(self._subscriptions, reason_codes, strict=False) if rc.is_failure
        ]
        for topic in refused:
            # Usually the broker's ACL: the gateway user needs read access to it.
            log.error("broker refused the subscription to %s (check the ACL)", topic)
        if refused and refused[0] == self._subscriptions[0]:
            return  # without the primary subscription the gateway cannot work
        log.info("subscribed to %s", ", ".join(t for t in self._subscriptions if t not in refused))
        # "online" means ready to receive, so it follows the SUBACK.
        client.publish(self._status_topic, ONLINE, qos=1, retain=True)
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        self.subscribed.clear()
        self._metrics.connected.set(0)
        if reason_code != 0:
            log.warning("disconnected from broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        # Messages with MQTT 5 properties; all others arrive at _on_plain_message.
        self._on_plain_message(client, msg.topic, msg.payload, msg.mid, msg.qos)

    def _on_plain_message(
        self, client: mqtt.Client, topic: str, payload: bytes, mid: int, qos: int
    ) -> None:
        if not self._accepting:
            return  # shutting down: leave it unacknowledged, the broker redelivers
        if self._route is not None and self._route(topic, payload):
            return  # handled elsewhere (cluster membership); nothing to acknowledge later
        # Blocks only if the inbox is full, which flow control (Receive Maximum)
        # prevents for QoS 1; it throttles a QoS 0 flood instead of growing memory.
        self._inbox.put(Message(topic, payload, mid, qos, time.time_ns(), client))
        if self._gate is not None:
            self._gate.taken()

    def stop_accepting(self) -> None:
        self._accepting = False

    def set_router(self, route: Callable[[str, bytes], bool]) -> None:
        self._route = route

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            log.error("outgoing MQTT queue full; dropped message for %s", topic)

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish the retained offline status, then disconnect cleanly.

        A clean DISCONNECT suppresses the last will, so we set offline ourselves.
        """
        if self.connected.is_set():
            info = self._client.publish(self._status_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except RuntimeError:
                log.warning("could not publish offline status")
        self._client.disconnect()
        self._client.loop_stop()
