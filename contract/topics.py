"""MQTT topic layout (fixed: dashboards and other tools subscribe to these)."""

from __future__ import annotations

ROOT = "factory"
READING_SUBSCRIPTION = f"{ROOT}/+/+/reading"
ALERTS_SUBSCRIPTION = f"{ROOT}/alerts/#"
DEADLETTER_SUBSCRIPTION = f"{ROOT}/deadletter/#"

# Names used when a rejected message's topic cannot be parsed into line/device.
UNKNOWN = "_unknown"
# Topic levels that would collide with the gateway's own namespaces.
_RESERVED_LINES = frozenset(
    {"alerts", "deadletter", "gateway", "silence", "state", "cluster", "_part"}
)
_MAX_NAME_LEN = 64


class TopicError(ValueError):
    """A reading arrived on a topic that does not follow the contract."""


def reading_topic(line: str, device: str) -> str:
    return f"{ROOT}/{line}/{device}/reading"


def alert_topic(line: str, device: str) -> str:
    return f"{ROOT}/alerts/{line}/{device}"


def deadletter_topic(line: str, device: str) -> str:
    return f"{ROOT}/deadletter/{line}/{device}"


def status_topic(gateway_id: str) -> str:
    return f"{ROOT}/gateway/{gateway_id}/status"


# MQTT wildcards and level separator, the space, and the backslash: InfluxDB 1.x line
# protocol cannot carry a backslash in a tag exactly (it is kept doubled, or refused
# at the end of a name), so such a name would be stored under another name or lost.
_FORBIDDEN_IN_NAMES = frozenset("+#/ \\")
NAME_RULE = "1-64 printable characters, none of: space + # / \\"


def valid_name(name: str) -> bool:
    """Line and device names become MQTT levels and InfluxDB tags, stored exactly as sent."""
    return (
        0 < len(name) <= _MAX_NAME_LEN
        and name.isprintable()
        and _FORBIDDEN_IN_NAMES.isdisjoint(name)
    )


def parse_reading_topic(topic: str) -> tuple[str, str]:
    """Return (line, device) from ``factory/<line>/<device>/reading``."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != ROOT or parts[3] != "reading":
        raise TopicError(f"not a reading topic: {topic[:128]!r}")
    line, device = parts[1], parts[2]
    if line in _RESERVED_LINES:
        raise TopicError(f"line name {line!r} is reserved")
    if not (valid_name(line) and valid_name(device)):
        raise TopicError(f"line and device names must be {NAME_RULE}")
    return line, device
