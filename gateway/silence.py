"""Maintenance silences: retained MQTT messages that mute a device's or a line's alerts.

    mosquitto_pub -r -t factory/silence/line1/press-01 \
        -m '{"until": "2026-11-22T18:00:00Z", "reason": "bearing swap"}'
    mosquitto_pub -r -t factory/silence/line1/_all -m '{"until": 1795380000}'
    mosquitto_pub -r -t factory/silence/line1/press-01 -n        # lift it (empty retained message)

Being retained, silences survive gateway restarts.  A silenced device is still
scored, stored and tracked; only alert messages are held back (and counted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from contract import SILENCE_ALL_DEVICES, TopicError, parse_silence_topic
from contract.reading import DecodeLimits, Rejected, parse_ts

# gateway/app.py still imports the subscription from here; the contract owns it.
# A silence may reach this far ahead (a shutdown over a holiday, not forever).
_MAX_AHEAD = DecodeLimits(max_future_s=90 * 86400.0, max_age_s=365 * 86400.0)


@dataclass(frozen=True, slots=True)
class Silence:
    until_ns: int
    reason: str


class Silences:
    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Silence] = {}

    def apply(self, topic: str, payload: bytes) -> tuple[str, str, Silence | None]:
        """Set or clear the silence a message describes; raises Rejected if malformed."""
        try:
            line, device = parse_silence_topic(topic)
        except TopicError as exc:
            raise Rejected("bad_topic", str(exc)) from None
        if not payload:
            self._by_key.pop((line, device), None)
            return line, device, None
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise Rejected("not_json", f"invalid JSON: {str(exc)[:80]}") from None
        if not isinstance(body, dict) or "until" not in body:
            raise Rejected(
                "missing_field", 'a silence needs {"until": <RFC 3339 or epoch s>}', "until"
            )
        until_ns = parse_ts(body["until"], time.time_ns(), _MAX_AHEAD)
        silence = Silence(until_ns, str(body.get("reason", ""))[:200])
        self._by_key[(line, device)] = silence
        return line, device, silence

    def active(self, line: str, device: str, now_ns: int) -> Silence | None:
        for key in ((line, device), (line, SILENCE_ALL_DEVICES)):
            silence = self._by_key.get(key)
            if silence is not None and silence.until_ns > now_ns:
                return silence
        return None
