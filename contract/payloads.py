"""Shapes of the messages the gateway publishes: alerts, dead letters, status."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

ONLINE = b"online"
OFFLINE = b"offline"

# How much of a rejected payload is echoed on the dead-letter topic.
DEADLETTER_PAYLOAD_PREFIX = 1024


def rfc3339(ts_ns: int) -> str:
    return (
        datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def deadletter_payload(
    topic: str, payload: bytes, reason: str, detail: str, field: str | None, received_ns: int
) -> bytes:
    prefix = payload[:DEADLETTER_PAYLOAD_PREFIX]
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail,
            "field": field,
            "topic": topic,
            "received_at": rfc3339(received_ns),
            "payload": prefix.decode("utf-8", errors="replace"),
            "payload_bytes": len(payload),
            "truncated": len(payload) > DEADLETTER_PAYLOAD_PREFIX,
        }
    )


def alert_payload(
    *,
    device: str,
    line: str,
    ts_ns: int,
    kind: str,
    state: str,
    score: float,
    threshold: float,
    values: dict[str, float],
    model_version: str,
    **extra: object,
) -> bytes:
    body: dict[str, object] = {
        "device": device,
        "line": line,
        "ts": rfc3339(ts_ns),
        "kind": kind,
        "state": state,
        "score": round(score, 6),
        "threshold": round(threshold, 6),
        "values": values,
        "model_version": model_version,
    }
    body.update(extra)
    return orjson.dumps(body)
