"""The one way out for a message the gateway will not store: the dead-letter topic.

Used for messages the contract rejects (scorer thread) and for readings InfluxDB
refuses (writer threads, reason ``store_refused``): every one is published with its
original payload and a reason, counted per reason, and logged at a bounded rate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from common.logs import RateLimitedLog
from contract import deadletter_topic
from contract.payloads import deadletter_payload
from contract.topics import UNKNOWN, TopicError, parse_reading_topic
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, publish: Callable[[str, bytes, bool], None], metrics: GatewayMetrics):
        self._publish = publish
        self._metrics = metrics
        self._ratelog = RateLimitedLog(log, 10.0)
        self._lock = threading.Lock()  # the rate-limited log is shared by threads

    def send(
        self,
        topic: str,
        payload: bytes,
        reason: str,
        detail: str,
        field: str | None,
        received_ns: int,
    ) -> None:
        try:
            line, device = parse_reading_topic(topic)
        except TopicError:
            line, device = UNKNOWN, UNKNOWN
        body = deadletter_payload(topic, payload, reason, detail, field, received_ns)
        self._publish(deadletter_topic(line, device), body, False)
        self._metrics.count_rejected(reason)
        with self._lock:
            self._ratelog.warning(reason, "rejected message on %s: %s", topic[:128], detail)
