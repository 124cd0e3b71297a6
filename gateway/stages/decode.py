"""Decode stage: a batch's messages -> readings, silences, acknowledgements, retained
device states, rejections.

Silences, acknowledgements and device states arrive through the same inbox as readings,
so they keep their order with them; this stage only parses them
(:func:`gateway.silence.parse_silence`, :func:`contract.alerting.parse_ack`,
:func:`gateway.device_state.parse_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from contract import Reading, Rejected, TopicError, decode_reading, parse_ack_topic
from contract.alerting import Ack, parse_ack
from contract.reading import DecodeLimits
from contract.topics import ACK_PREFIX, SILENCE_PREFIX, STATE_PREFIX
from gateway.device_state import DeviceState, parse_state
from gateway.intake import Message
from gateway.silence import SilenceCommand, parse_silence
from model.reading_fields import required_fields
from model.scorer import Scorer


@dataclass(slots=True)
class Decoded:
    readings: list[Reading] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # the message of each reading
    silences: list[SilenceCommand] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    states: list[DeviceState] = field(default_factory=list)  # retained, at (re)subscribe
    rejected: list[tuple[Message, Rejected]] = field(default_factory=list)


class Decode:
    def __init__(self, limits_for: Callable[[tuple[str, ...]], DecodeLimits]):
        self._limits_for = limits_for
        self._limits: tuple[tuple[str, ...], DecodeLimits] | None = None

    def limits(self, scorer: Scorer) -> DecodeLimits:
        # Required fields follow the active model, so a retrained model with an extra
        # feature changes validation without a config change.
        needed = required_fields(scorer)  # shared with the API (model.reading_fields)
        if self._limits is None or self._limits[0] != needed:
            self._limits = (needed, self._limits_for(needed))
        return self._limits[1]

    def __call__(self, messages: list[Message], scorer: Scorer) -> Decoded:
        limits = self.limits(scorer)
        out = Decoded()
        readings, kept, silences, rejected = out.readings, out.messages, out.silences, out.rejected
        for msg in messages:
            try:
                if msg.topic.startswith(SILENCE_PREFIX):
                    silences.append(parse_silence(msg.topic, msg.payload))
                elif msg.topic.startswith(ACK_PREFIX):
                    out.acks.append(_ack(msg))
                elif msg.topic.startswith(STATE_PREFIX):
                    out.states.append(parse_state(msg.topic, msg.payload))
                else:
                    readings.append(decode_reading(msg.topic, msg.payload, msg.received_ns, limits))
                    kept.append(msg)
            except Rejected as rej:
                rejected.append((msg, rej))
        return out


def _ack(msg: Message) -> Ack:
    try:
        line, device = parse_ack_topic(msg.topic)
    except TopicError as exc:
        raise Rejected("bad_topic", str(exc)) from None
    return parse_ack(line, device, msg.payload)
