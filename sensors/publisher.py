"""QoS 1 reading publisher with a bounded outbox, shared by every reading producer.

paho keeps unacknowledged QoS 1 messages in memory and re-sends them after a
reconnect; ``max_pending`` bounds that memory.  When the outbox is full a producer
either waits (simulator, replay: back-pressure is harmless) or the reading is dropped
and counted (serial bridge: blocking would overflow the serial buffer instead).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt

from common.logs import RateLimitedLog
from common.mqtt import MqttSettings, make_client, start
from contract import reading_topic

log = logging.getLogger(__name__)


class ReadingPublisher:
    def __init__(self, settings: MqttSettings, client_id: str, max_pending: int = 10_000):
        self._client = make_client(settings, client_id)
        # A publisher needs no broker-side session once it is gone: its unacked
        # readings live in its own outbox, not in the broker.
        self._settings = dataclasses.replace(settings, session_expiry_s=0)
        self._max_pending = max_pending
        self._client.max_inflight_messages_set(min(max_pending, 1000))
        self._client.max_queued_messages_set(max_pending)
        self._cond = threading.Condition()
        self._pending: set[int] = set()
        self._early_acks: set[int] = set()
        self._reserved = 0
        self.published = 0  # acknowledged by the broker with a success reason code
        self.dropped = 0  # refused because the outbox was full
        # PUBACK with a failure reason (not authorized, quota exceeded...): not delivered.
        self.refused = 0
        self._refusal_log = RateLimitedLog(log, 10.0)
        self.connected = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    def start(self, wait_connected_s: float | None = 10.0) -> None:
        start(self._client, self._settings, clean_start=True)
        if wait_connected_s is not None and not self.connected.wait(wait_connected_s):
            log.warning(
                "broker %s:%d not reachable yet; readings are queued (up to %d)",
                self._settings.host,
                self._settings.port,
                self._max_pending,
            )

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        log.info("connected to broker %s:%d", self._settings.host, self._settings.port)
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        if reason_code != 0:
            log.warning("disconnected from broker (%s); will reconnect", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            if mid in self._pending:
                self._pending.discard(mid)
            else:  # the ack can beat publish() returning its mid
                self._early_acks.add(mid)
            if reason_code.is_failure:
                self.refused += 1
            else:
                self.published += 1
            self._cond.notify_all()
        if reason_code.is_failure:
            self._refusal_log.warning("refused", "broker refused a reading: %s", reason_code)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def publish(self, line: str, device: str, payload: bytes, *, block: bool = True) -> bool:
        """Queue one reading at QoS 1. Returns False if dropped because the outbox is full."""
        with self._cond:
            if block:
                while self._reserved + len(self._pending) >= self._max_pending:
                    self._cond.wait(1.0)
            elif self._reserved + len(self._pending) >= self._max_pending:
                self.dropped += 1
                return False
            self._reserved += 1
        # paho runs on_publish while holding its own outgoing-message lock, so we
        # must not hold ours while calling into paho (lock-order inversion).
        info = self._client.publish(reading_topic(line, device), payload, qos=1)
        with self._cond:
            self._reserved -= 1
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                self.dropped += 1
                return False
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
            else:
                self._pending.add(info.mid)
            return True

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the broker acknowledged everything queued so far."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, flush_timeout_s: float = 10.0) -> None:
        if not self.flush(flush_timeout_s):
            log.warning("%d readings not acknowledged by the broker at shutdown", self.pending)
        self._client.disconnect()
        self._client.loop_stop()


@dataclasses.dataclass
class DeliveryStats:
    """What a publishing run handed to the broker and what the broker acknowledged."""

    queued: int = 0  # handed to the publisher
    published: int = 0  # acknowledged (accepted) by the broker
    refused: int = 0  # broker answered with a failure reason code, or the outbox was full
    unacknowledged: int = 0  # still without an answer when we gave up waiting
    # Readings queued per (line, device); equal to the acknowledged ones when complete.
    per_device: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter)
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        """Every queued reading was acknowledged: per-device counts are exact."""
        return self.published == self.queued and not (self.refused or self.unacknowledged)

    def settle(
        self,
        publisher: ReadingPublisher,
        flush_timeout_s: float,
        stop: threading.Event,
        began: float,
    ) -> None:
        """Stop the publisher (waiting up to ``flush_timeout_s`` for acks), then count."""
        self.interrupted = stop.is_set()
        publisher.stop(flush_timeout_s)
        self.published = publisher.published
        self.refused = publisher.refused + publisher.dropped
        self.unacknowledged = publisher.pending
        self.elapsed_s = time.monotonic() - began
