"""MQTT sessions the cluster opens besides the gateway's main one.

- ``ConsumerSession``: the persistent session of one partition
  (client id ``<group>-part-<p>``).  Connecting with that id takes the session over
  from whichever gateway had it, queue included, so a partition has exactly one
  consumer at a time and nothing queued for it is lost when its owner dies.
- ``RoutingSession``: a member of the shared subscription on the reading topics.  It
  republishes each reading to its partition topic and acknowledges the original
  only when the broker has acknowledged the republished copy (at-least-once).  The
  same class drains a dead gateway's ingest session (``rescue``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from common.mqtt import MqttSettings, disable_nagle, make_client, start
from contract import (
    partition_ready_topic,
    partition_subscription,
    partition_topic,
    reading_topic_of_partition,
    shared_reading_subscription,
    split_reading_topic,
)
from gateway.cluster.assignment import partition_of
from gateway.flow import HeldLimit
from gateway.inbox import Inbox
from gateway.intake import Message

log = logging.getLogger(__name__)

# MQTT 5 reason code: another connection with our client id took the session over.
SESSION_TAKEN_OVER = 0x8E


def _expire_now() -> Properties:
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = 0
    return props


class _Session:
    def __init__(self, settings: MqttSettings, client_id: str, subscriptions: tuple[str, ...]):
        self.client_id = client_id
        self._settings = settings
        self._subscriptions = subscriptions
        self.client = make_client(settings, client_id)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.ready = threading.Event()
        self.taken_over = threading.Event()
        self.accepting = True

    def start(self) -> None:
        start(self.client, self._settings, clean_start=False)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("%s: broker refused connection: %s", self.client_id, reason_code)
            return
        disable_nagle(client)
        if self._subscriptions:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in self._subscriptions])
        self.ready.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.ready.clear()
        if isinstance(reason_code, ReasonCode) and reason_code.value == SESSION_TAKEN_OVER:
            # Someone else owns this session now: do not reconnect and take it back.
            log.info("%s: session taken over by another gateway", self.client_id)
            self.taken_over.set()
            client.disconnect()

    def close(self, expire: bool = False) -> None:
        """Disconnect; with ``expire`` the broker deletes the session (and leaves the group)."""
        self.accepting = False
        self.client.disconnect(properties=_expire_now() if expire else None)
        self.client.loop_stop()


class ConsumerSession(_Session):
    """One partition's persistent session, feeding the scoring inbox."""

    def __init__(
        self,
        settings: MqttSettings,
        group: str,
        partition: int,
        inbox: Inbox[Message],
        gate: HeldLimit | None = None,
    ):
        super().__init__(
            settings, f"{group}-part-{partition}", (partition_subscription(partition),)
        )
        self.client.receive_gate = gate  # the gateway's memory bound covers every session
        self._gate = gate
        self.partition = partition
        self._inbox = inbox
        self._ready_topic = partition_ready_topic(group, partition)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if not any(rc.is_failure for rc in reason_codes):
            # Until this exists nobody forwards to the partition: a message published
            # to a topic without a subscribed session would be dropped by the broker.
            client.publish(self._ready_topic, b"ready", qos=1, retain=True)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        if not self.accepting:
            return  # released: the next owner gets it redelivered
        topic = reading_topic_of_partition(msg.topic)
        self._inbox.put(Message(topic, msg.payload, msg.mid, msg.qos, time.time_ns(), client))
        if self._gate is not None:
            self._gate.taken()


class RoutingSession(_Session):
    """A shared-subscription member that forwards readings to partition topics."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        group: str,
        partitions: int,
        subscribe: bool,
        on_routed: Callable[[int], None],
        is_ready: Callable[[int], bool],
    ):
        super().__init__(
            settings, client_id, (shared_reading_subscription(group),) if subscribe else ()
        )
        self._partitions = partitions
        self._on_routed = on_routed
        self._is_ready = is_ready
        self._lock = threading.Lock()
        # outgoing mid -> incoming mid, and acks that beat the registration
        self._pending: dict[int, int] = {}
        self._early: set[int] = set()
        # Readings for partitions without a session yet: held, unacknowledged.
        self._held: list[tuple[int, str, bytes, int]] = []
        self.last_message = time.monotonic()
        # Forwards in flight are already bounded by our Receive Maximum (each incoming
        # reading is acknowledged only when its forward is): no second, smaller window.
        self.client.max_inflight_messages_set(settings.receive_maximum)
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.last_message = time.monotonic()
        line, device = split_reading_topic(msg.topic)
        p = partition_of(line, device, self._partitions)
        if not self._is_ready(p):
            with self._lock:
                self._held.append((p, partition_topic(p, line, device), msg.payload, msg.mid))
            return
        self._forward(partition_topic(p, line, device), msg.payload, msg.mid if msg.qos else None)

    def _forward(self, target: str, payload: bytes, incoming: int | None) -> None:
        # Never hold our lock while calling into paho (it calls on_publish under its own).
        info = self.client.publish(target, payload, qos=1)
        if incoming is None:
            return
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                done = True
            else:
                self._pending[info.mid] = incoming
                done = False
        if done:
            self.client.ack(incoming, 1)
            self._on_routed(1)

    def flush_held(self) -> None:
        """Forward held readings whose partition became ready (coordinator thread)."""
        with self._lock:
            ready = [h for h in self._held if self._is_ready(h[0])]
            self._held = [h for h in self._held if not self._is_ready(h[0])]
        for _, target, payload, incoming in ready:
            self._forward(target, payload, incoming)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            incoming = self._pending.pop(mid, None)
            if incoming is None:
                self._early.add(mid)
                return
        client.ack(incoming, 1)
        self._on_routed(1)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._pending and not self._held

    def leave(self, timeout_s: float = 5.0) -> None:
        """Leave the shared group without stranding messages in our session."""
        if self._subscriptions:
            self.client.unsubscribe(list(self._subscriptions))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (
            not self.idle or time.monotonic() - self.last_message < 0.5
        ):
            time.sleep(0.05)  # bounded wait for in-flight forwards, at shutdown only
        self.close(expire=True)
