"""Alert messages as the notifier reads them (``factory/alerts/<line>/<device>``).

Only what notifying needs is checked: an object with an alert id, a known event and
the names that say what and where.  Anything else is kept as received and passed on
(``Alert.body``), so newer gateways can add keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from contract.alerting import ACKNOWLEDGED, ALERT_ID, REPEATED, RESOLVED, idempotency_key
from notify.config import NOTIFIED_EVENTS

MAX_PAYLOAD_BYTES = 64 * 1024
# Reasons a message is refused (the `reason` label of notifier_bad_input_total).
BAD_INPUT_REASONS = (
    "too_large",
    "not_json",
    "not_object",
    "missing_field",
    "bad_field",
    "unsupported_event",
)


class BadAlert(ValueError):
    """A message that can never become a valid alert; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    event: str
    line: str
    device: str
    kind: str
    ts: str
    body: dict[str, Any]

    @property
    def key(self) -> str:
        """The idempotency key of this transition (repeats differ by their reading's ts)."""
        return idempotency_key(self.alert_id, self.event, self.ts)

    @property
    def quiet(self) -> bool:
        """Resolutions and acknowledgements inform; they should not wake anyone."""
        return self.event in (RESOLVED, ACKNOWLEDGED)

    @property
    def limited(self) -> bool:
        """Only new and repeated alerts count against the rate limit (and can be held)."""
        return not self.quiet

    @property
    def where(self) -> str:
        return f"{self.line}/{self.device}"


def _text(body: dict[str, Any], name: str) -> str:
    if name not in body:
        raise BadAlert("missing_field", f"no {name!r}")
    value = body[name]
    if not isinstance(value, str) or not value:
        raise BadAlert("bad_field", f"{name!r} must be a non-empty string")
    return value


def parse_alert(payload: bytes) -> Alert:
    """The alert a message carries; raises BadAlert with the reason otherwise."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadAlert("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise BadAlert("not_json", f"invalid JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict):
        raise BadAlert("not_object", "an alert message is a JSON object")
    alert = _text(body, "alert_id")
    if not ALERT_ID.fullmatch(alert):
        raise BadAlert("bad_field", "alert_id must be 16 lower-case hex digits")
    event = _text(body, "event")
    if event not in NOTIFIED_EVENTS:
        raise BadAlert("unsupported_event", f"event {event!r} is not one of {NOTIFIED_EVENTS}")
    ts = _text(body, "ts") if event == REPEATED else str(body.get("ts", ""))
    return Alert(
        alert_id=alert,
        event=event,
        line=_text(body, "line"),
        device=_text(body, "device"),
        kind=_text(body, "kind"),
        ts=ts,
        body=body,
    )
