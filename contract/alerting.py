"""An alert's identity and history, acknowledgements and feedback labels: the vocabulary.

Every alert message (``factory/alerts/<line>/<device>``) carries:

- ``alert_id``: 16 hex digits, the same on the alert's first message, its repeats,
  its acknowledgement and its resolution, and on the labels people give it.  It is
  derived from (line, device, kind, fault, start time), so a redelivered or replayed
  alert keeps its id.
- ``event``: what happened to the alert (``EVENTS``).  ``state`` stays what the wire
  contract says it is, ``firing`` or ``resolved``: an acknowledged alert is still firing.
- ``started``: when the alert started firing (RFC 3339).

An operator acknowledges a firing alert on ``factory/ack/<line>/<device>`` with
:func:`ack_payload`'s body (``{"alert_id": ..., "by": ..., "note": ...}``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson

from contract import schema
from contract.reading import Rejected

# Events of an alert's history (the `event` of an alert message and of `alert_event`).
FIRING = schema.EVENT_FIRING  # started firing
REPEATED = schema.EVENT_REPEATED  # still firing: a reminder, until acknowledged
ACKNOWLEDGED = schema.EVENT_ACKNOWLEDGED  # a person took it on; reminders stop
RESOLVED = schema.EVENT_RESOLVED  # back to normal
SILENCED = schema.EVENT_SILENCED  # a transition a maintenance silence held back (history)
EVENTS = (FIRING, REPEATED, ACKNOWLEDGED, RESOLVED, SILENCED)

# Feedback labels an operator gives an alert.
REAL_FAULT = schema.LABEL_REAL_FAULT
FALSE_ALARM = schema.LABEL_FALSE_ALARM
LABELS = (REAL_FAULT, FALSE_ALARM)

ALERT_ID = re.compile(r"[0-9a-f]{16}")
MAX_BY = 64
MAX_NOTE = 500
MAX_FAULT_TYPE = 64


def alert_id(line: str, device: str, kind: str, started_ns: int, fault: str = "") -> str:
    """The id of the alert of ``kind`` (and sensor ``fault``) that started at ``started_ns``."""
    key = "\0".join((line, device, kind, fault, str(started_ns))).encode("utf-8")
    return hashlib.blake2b(key, digest_size=8).hexdigest()


def idempotency_key(alert: str, event: str, started_or_ts: str = "") -> str:
    """What a notification of one transition of an alert is known by, across restarts.

    ``repeated`` happens more than once per alert: its reading's time tells them apart.
    """
    return f"{alert}:{event}" if event != REPEATED else f"{alert}:{event}:{started_or_ts}"


def check_alert_id(value: object) -> str:
    """``value`` if it is an alert id; raises Rejected(bad_field) otherwise."""
    if not isinstance(value, str) or not ALERT_ID.fullmatch(value):
        raise Rejected("bad_field", "alert_id must be 16 lower-case hex digits", "alert_id")
    return value


def check_person(value: object, field: str = "by") -> str:
    """Who acknowledged or labelled: 1-64 printable characters."""
    ok = isinstance(value, str) and 0 < len(value.strip()) <= MAX_BY and value.isprintable()
    if not ok:
        raise Rejected("bad_field", f"{field} must be 1-{MAX_BY} printable characters", field)
    return value.strip()


def check_text(value: object, field: str, limit: int) -> str:
    """An optional free text (note, fault type): a string of at most ``limit`` characters."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise Rejected("bad_field", f"{field}: a string of at most {limit} characters", field)
    return value


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledgement: who took alert ``alert_id`` of ``line``/``device`` on."""

    line: str
    device: str
    alert_id: str
    by: str
    note: str = ""


def ack_payload(alert: str, by: str, note: str = "") -> bytes:
    """The body of an acknowledgement message on ``factory/ack/<line>/<device>``."""
    body = {"alert_id": check_alert_id(alert), "by": check_person(by)}
    if note:
        body["note"] = check_text(note, "note", MAX_NOTE)
    return orjson.dumps(body)


def parse_ack(line: str, device: str, payload: bytes) -> Ack:
    """The acknowledgement an ack message carries; raises Rejected if malformed."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejected("not_json", f"invalid JSON: {str(exc)[:80]}") from None
    if not isinstance(body, dict):
        raise Rejected("not_object", "an acknowledgement is a JSON object")
    for name in ("alert_id", "by"):
        if name not in body:
            raise Rejected(
                "missing_field", 'an acknowledgement needs {"alert_id": ..., "by": ...}', name
            )
    return Ack(
        line,
        device,
        check_alert_id(body["alert_id"]),
        check_person(body["by"]),
        check_text(body.get("note"), "note", MAX_NOTE),
    )
