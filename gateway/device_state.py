"""The retained device state, ``factory/state/<line>/<device>``: written and read back.

After each alert transition of a device the gateway publishes, retained, what is firing
for it now (:func:`state_payload`).  When the gateway starts, the broker hands it these
retained messages (its subscription has no-local set, so it never sees its own later
ones), and :func:`parse_state` turns each into the alerts to restore: an alert that was
firing before a restart keeps its id and its acknowledgement, and resolves under that
id instead of firing again as a new alert.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from contract import Rejected, TopicError, parse_state_topic
from contract.alerting import check_alert_id
from contract.payloads import rfc3339
from contract.reading import DecodeLimits, parse_ts
from gateway.alert_book import OpenAlert
from gateway.silence import Silence

# A restored alert may have started long ago (a fault nobody fixed for weeks).
_ANY_PAST = DecodeLimits(max_future_s=300.0, max_age_s=10 * 365 * 86400.0)


def state_payload(
    line: str, device: str, ts_ns: int, firing: Iterable[OpenAlert], silence: Silence | None
) -> bytes:
    entries = []
    for alert in firing:
        entry: dict[str, object] = {
            "kind": alert.kind,
            "alert_id": alert.alert_id,
            "since": rfc3339(alert.started_ns),
            "started_ns": alert.started_ns,
        }
        if alert.fault:
            entry["fault"] = alert.fault
        if alert.acked_ns:
            entry["acknowledged_by"] = alert.acked_by
            entry["acknowledged_at"] = rfc3339(alert.acked_ns)
        entries.append(entry)
    body = {
        "line": line,
        "device": device,
        "ts": rfc3339(ts_ns or time.time_ns()),
        "firing": entries,
        "silenced_until": rfc3339(silence.until_ns) if silence else None,
    }
    return orjson.dumps(body)


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The alerts a retained state message says were firing for ``line``/``device``."""

    line: str
    device: str
    firing: tuple[OpenAlert, ...]


def parse_state(topic: str, payload: bytes) -> DeviceState:
    """Raises Rejected if the message is not a device state."""
    try:
        line, device = parse_state_topic(topic)
    except TopicError as exc:
        raise Rejected("bad_topic", str(exc)) from None
    if not payload:  # a cleared retained state
        return DeviceState(line, device, ())
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Rejected("not_json", f"invalid JSON: {str(exc)[:80]}") from None
    entries = body.get("firing") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise Rejected("missing_field", 'a device state needs "firing": [...]', "firing")
    firing = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            raise Rejected("bad_field", "a firing entry needs kind, alert_id, since", "firing")
        alert_id = check_alert_id(entry.get("alert_id"))
        started = entry.get("started_ns")
        if not isinstance(started, int) or isinstance(started, bool):
            started = parse_ts(entry.get("since"), time.time_ns(), _ANY_PAST)
        alert = OpenAlert(
            alert_id,
            line,
            device,
            entry["kind"],
            str(entry.get("fault") or ""),
            started,
        )
        if entry.get("acknowledged_by"):
            alert.acked_by = str(entry["acknowledged_by"])
            alert.acked_ns = parse_ts(entry.get("acknowledged_at"), time.time_ns(), _ANY_PAST)
        firing.append(alert)
    return DeviceState(line, device, tuple(firing))
