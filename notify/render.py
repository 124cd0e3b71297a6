"""What people read: the text, the e-mail subject and the webhook body of a notification.

Texts are short and plain (they end up in chat, on a phone lock screen and in
e-mail); everything machine-readable stays in the webhook body's ``alert``/``alerts``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from contract.alerting import ACKNOWLEDGED, FIRING, REPEATED, RESOLVED
from notify.outbox import Row

_TAGS = {
    FIRING: "FIRING",
    REPEATED: "STILL FIRING",
    ACKNOWLEDGED: "ACKNOWLEDGED",
    RESOLVED: "RESOLVED",
}
# Devices named one by one in a digest before "and N more".
_DIGEST_NAMED = 10


@dataclass(frozen=True, slots=True)
class Rendered:
    key: str
    event: str
    quiet: bool
    subject: str
    text: str
    webhook_body: dict[str, Any]


def _what(alert: dict[str, Any]) -> str:
    kind = str(alert.get("kind", "alert"))
    if alert.get("fault"):
        kind = f"{kind} ({alert['fault']})"
    return f"{kind} {alert.get('line', '?')}/{alert.get('device', '?')}"


def _values(alert: dict[str, Any]) -> str:
    values = alert.get("values")
    if not isinstance(values, dict) or not values:
        return ""
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _score(alert: dict[str, Any]) -> str:
    score, threshold = alert.get("score"), alert.get("threshold")
    if isinstance(score, int | float) and isinstance(threshold, int | float):
        return f"score {score:.3g} (threshold {threshold:.3g})"
    return ""


def alert_text(alert: dict[str, Any]) -> str:
    event = str(alert.get("event", FIRING))
    head = f"[{_TAGS.get(event, event.upper())}] {_what(alert)}"
    if event == RESOLVED:
        return f"{head}: back to normal (fired {alert.get('started', '?')})"
    if event == ACKNOWLEDGED:
        text = (
            f"{head}: acknowledged by {alert.get('acknowledged_by', '?')}"
            f" at {alert.get('acknowledged_at', '?')}"
        )
        return f"{text} ({alert['note']})" if alert.get("note") else text
    parts = [p for p in (alert.get("detail"), _score(alert), _values(alert)) if p]
    since = f"since {alert.get('started', alert.get('ts', '?'))}"
    return f"{head}: {'; '.join([*parts, since])}"


def subject(alert: dict[str, Any]) -> str:
    event = str(alert.get("event", FIRING))
    return f"[{_TAGS.get(event, event.upper())}] {_what(alert)}"


def digest_text(alerts: list[dict[str, Any]], window_s: float) -> str:
    """One line for a window's held notifications: the alerts, then what became of ones
    (resolved, acknowledged) that reached this person only in a digest."""
    minutes = f"{window_s / 60:g} min" if window_s >= 60 else f"{window_s:g} s"
    firing = [a for a in alerts if a.get("event", FIRING) in (FIRING, REPEATED)]
    shown = firing or alerts
    devices = Counter(f"{a.get('line', '?')}/{a.get('device', '?')}" for a in shown)
    named = ", ".join(
        f"{where} x{n}" if n > 1 else where for where, n in devices.most_common(_DIGEST_NAMED)
    )
    more = len(devices) - _DIGEST_NAMED
    if more > 0:
        named += f" and {more} more"
    kinds = ", ".join(sorted({str(a.get("kind", "?")) for a in shown}))
    plural = "s" if len(devices) != 1 else ""
    after = Counter(str(a.get("event")) for a in alerts if a not in firing)
    followed = ", ".join(f"{after[e]} {e}" for e in (RESOLVED, ACKNOWLEDGED) if after[e])
    if not firing:
        return (
            f"[DIGEST] {followed} ({kinds}) on {len(devices)} device{plural}"
            f" in the last {minutes}: {named}"
        )
    text = (
        f"[DIGEST] {len(firing)} more alerts ({kinds}) from {len(devices)} device{plural}"
        f" in the last {minutes}: {named}"
    )
    return f"{text}; also {followed} of earlier ones" if followed else text


def _with_link(text: str, alert: dict[str, Any], page_url: str) -> str:
    """Where to acknowledge or label it (the page lists it by device and start)."""
    if not page_url or alert.get("event") not in (FIRING, REPEATED):
        return text
    return f"{text}. Acknowledge or label it: {page_url}"


def render(row: Row, window_s: float, page_url: str = "") -> Rendered:
    alerts = row.alerts()
    if row.is_digest:
        text = digest_text(alerts, window_s)
        # Only what became of earlier alerts (resolved, acknowledged): inform, quietly.
        quiet = all(a.get("event") in (RESOLVED, ACKNOWLEDGED) for a in alerts)
        body: dict[str, Any] = {
            "text": text,
            "event": row.event,
            "idempotency_key": row.key,
            "quiet": quiet,
            "digest": True,
            "alerts": alerts,
        }
        subj = text.split(": ", 1)[0]
        return Rendered(row.key, row.event, quiet, subj, text, body)
    alert = alerts[0]
    quiet = row.event in (RESOLVED, ACKNOWLEDGED)
    text = _with_link(alert_text(alert), alert, page_url)
    body = {
        "text": text,
        "event": row.event,
        "idempotency_key": row.key,
        "quiet": quiet,
        "digest": False,
        "alert": alert,
    }
    return Rendered(row.key, row.event, quiet, subject(alert), text, body)
