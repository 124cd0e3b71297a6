"""Maintenance silences: retained MQTT messages that mute a device's or a line's alerts.

    mosquitto_pub -r -t factory/silence/line1/press-01 \
        -m '{"until": "2026-11-22T18:00:00Z", "reason": "bearing swap"}'
    mosquitto_pub -r -t factory/silence/line1/_all -m '{"until": 1795380000}'
    mosquitto_pub -r -t factory/silence/line1/press-01 -n        # lift it (empty retained message)

Being retained, silences survive gateway restarts.  A silenced device is still
scored, stored and tracked; only alert messages are held back (and counted).  The
gateway's own alerts (model drift, line ``_gateway``, device = the gateway id) follow
the same rule.

Silence messages arrive with the readings, in order: the decode stage turns each into
a :class:`SilenceCommand` (:func:`parse_silence`), and :meth:`Silences.take` applies a
batch's commands before that batch's alerts are decided.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import orjson

from contract import SILENCE_ALL_DEVICES, TopicError, parse_silence_topic
from contract.payloads import rfc3339
from contract.reading import DecodeLimits, Rejected, parse_ts

log = logging.getLogger(__name__)

# A silence may reach this far ahead (a shutdown over a holiday, not forever).
_MAX_AHEAD = DecodeLimits(max_future_s=90 * 86400.0, max_age_s=365 * 86400.0)


@dataclass(frozen=True, slots=True)
class Silence:
    until_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class SilenceCommand:
    """Set (``silence``) or lift (None) the silence of ``line``/``device``."""

    line: str
    device: str
    silence: Silence | None


def parse_silence(topic: str, payload: bytes) -> SilenceCommand:
    """The command a silence message carries; raises Rejected if malformed."""
    try:
        line, device = parse_silence_topic(topic)
    except TopicError as exc:
        raise Rejected("bad_topic", str(exc)) from None
    if not payload:
        return SilenceCommand(line, device, None)
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejected("not_json", f"invalid JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict) or "until" not in body:
        raise Rejected("missing_field", 'a silence needs {"until": <RFC 3339 or epoch s>}', "until")
    until_ns = parse_ts(body["until"], time.time_ns(), _MAX_AHEAD)
    return SilenceCommand(line, device, Silence(until_ns, str(body.get("reason", ""))[:200]))


class Silences:
    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Silence] = {}

    def set(self, command: SilenceCommand) -> None:
        key = (command.line, command.device)
        if command.silence is None:
            self._by_key.pop(key, None)
        else:
            self._by_key[key] = command.silence

    def take(self, commands: list[SilenceCommand]) -> None:
        """The silence stage: apply a batch's commands in arrival order, and log them."""
        for command in commands:
            self.set(command)
            silence = command.silence
            if silence is None:
                log.info("silence lifted for %s/%s", command.line, command.device)
            else:
                log.info(
                    "alerts silenced for %s/%s until %s (%s)",
                    command.line,
                    command.device,
                    rfc3339(silence.until_ns),
                    silence.reason or "no reason given",
                )

    def apply(self, topic: str, payload: bytes) -> tuple[str, str, Silence | None]:
        """Parse a silence message and apply it; raises Rejected if malformed."""
        command = parse_silence(topic, payload)
        self.set(command)
        return command.line, command.device, command.silence

    def active(self, line: str, device: str, now_ns: int) -> Silence | None:
        for key in ((line, device), (line, SILENCE_ALL_DEVICES)):
            silence = self._by_key.get(key)
            if silence is not None and silence.until_ns > now_ns:
                return silence
        return None
