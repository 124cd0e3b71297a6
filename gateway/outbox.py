"""The one way out of the gateway core: an :class:`Outbox` per micro-batch, sent by the
:class:`Sender`.

Every stage writes what it wants sent into the batch's outbox: MQTT publishes (alerts,
retained device state), dead letters, InfluxDB points.  Once the stages are done, the
sender publishes (dead letters first, then the rest in the order the stages wrote
them), and only then hands one :class:`~gateway.writer.WriteBatch` to the writer: an
alert never waits for InfluxDB.  The batch's MQTT messages are acknowledged by the
writer once its points are settled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from contract import Rejected
from gateway.deadletters import DeadLetters
from gateway.intake import Message
from gateway.store import Origin
from gateway.writer import WriteBatch, Writer

Publish = Callable[[str, bytes, bool], None]


class Outbox:
    """What one micro-batch sends.  ``origins`` maps the index of each reading's point in
    ``points`` to the message it encodes (a point InfluxDB refuses is dead-lettered)."""

    __slots__ = ("acks", "dead_letters", "origins", "points", "publishes", "readings")

    def __init__(self, messages: Sequence[Message] = ()):
        # Every message of the batch, rejected ones included, in arrival order.
        self.acks: list[tuple[Any, int, int]] = [(m.client, m.mid, m.qos) for m in messages]
        self.publishes: list[tuple[str, bytes, bool]] = []
        self.dead_letters: list[tuple[Message, Rejected]] = []
        self.points: list[str] = []
        self.origins: dict[int, Origin] = {}
        self.readings = 0

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.publishes.append((topic, payload, retain))

    def dead_letter(self, msg: Message, rej: Rejected) -> None:
        self.dead_letters.append((msg, rej))

    def point(self, line: str) -> None:
        self.points.append(line)

    def reading_points(self, lines: list[str], messages: Sequence[Message]) -> None:
        """The points of readings, ``lines[i]`` encoding ``messages[i]``."""
        origins = self.origins
        for i, m in enumerate(messages, len(self.points)):
            origins[i] = (m.topic, m.payload, m.received_ns)
        self.points += lines
        self.readings += len(lines)


class Sender:
    """Sends outboxes: MQTT first, then one write batch (if it has points or acks)."""

    def __init__(self, publish: Publish, dead_letters: DeadLetters, writer: Writer):
        self._publish = publish
        self._dead_letters = dead_letters
        self.writer = writer

    def send(self, out: Outbox) -> None:
        send_dead_letter = self._dead_letters.send
        for msg, rej in out.dead_letters:
            send_dead_letter(
                msg.topic, msg.payload, rej.reason, rej.detail, rej.field, msg.received_ns
            )
        publish = self._publish
        for topic, payload, retain in out.publishes:
            publish(topic, payload, retain)
        if out.points or out.acks:
            self.writer.submit(WriteBatch(out.points, out.acks, out.readings, out.origins))
