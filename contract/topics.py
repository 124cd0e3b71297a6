"""MQTT topic layout (fixed: dashboards and other tools subscribe to these).

The one place a topic of the system is built or parsed:

- ``factory/<line>/<device>/reading``: a sensor's readings.
- ``factory/alerts/<line>/<device>``: alert transitions.
- ``factory/deadletter/<line>/<device>``: rejected messages.
- ``factory/state/<line>/<device>``: a device's current alerts, retained.
- ``factory/silence/<line>/<device|_all>``: maintenance silences, retained.
- ``factory/ack/<line>/<device>``: an operator acknowledges a firing alert (not retained).
- ``factory/gateway/<gateway-id>/status``: ``online`` / ``offline``, retained.
- Cluster only: ``factory/_part/<p>/<line>/<device>``, the readings of partition p,
  and ``factory/cluster/<group>/partition/<p>``, retained ``ready`` markers.

``parse_reading_topic``, ``parse_silence_topic``, ``parse_ack_topic`` and
``parse_state_topic`` check messages from outside and raise ``TopicError``; the parsers
of the gateway's own topics (status, partition markers) return None for any other topic.
"""

from __future__ import annotations

ROOT = "factory"
READING_SUBSCRIPTION = f"{ROOT}/+/+/reading"
ALERTS_PREFIX = f"{ROOT}/alerts/"
ALERTS_SUBSCRIPTION = f"{ALERTS_PREFIX}#"
DEADLETTER_PREFIX = f"{ROOT}/deadletter/"
DEADLETTER_SUBSCRIPTION = f"{DEADLETTER_PREFIX}#"
STATE_PREFIX = f"{ROOT}/state/"
STATE_SUBSCRIPTION = f"{STATE_PREFIX}#"
SILENCE_PREFIX = f"{ROOT}/silence/"
SILENCE_SUBSCRIPTION = f"{SILENCE_PREFIX}#"
# The device level of a silence that covers every device of its line.
SILENCE_ALL_DEVICES = "_all"
ACK_PREFIX = f"{ROOT}/ack/"
ACK_SUBSCRIPTION = f"{ACK_PREFIX}+/+"
STATUS_SUBSCRIPTION = f"{ROOT}/gateway/+/status"
PARTITION_ROOT = f"{ROOT}/_part"
CLUSTER_ROOT = f"{ROOT}/cluster"

# Names used when a rejected message's topic cannot be parsed into line/device.
UNKNOWN = "_unknown"
# Topic levels that would collide with the gateway's own namespaces.
# The line under which a gateway publishes alerts about itself (model drift).
GATEWAY_ALERT_LINE = "_gateway"
_RESERVED_LINES = frozenset(
    {
        "ack",
        "alerts",
        "deadletter",
        "gateway",
        "silence",
        "state",
        "cluster",
        "_part",
        GATEWAY_ALERT_LINE,
    }
)
_MAX_NAME_LEN = 64


class TopicError(ValueError):
    """A message arrived on a topic that does not follow the contract."""


def reading_topic(line: str, device: str) -> str:
    return f"{ROOT}/{line}/{device}/reading"


def alert_topic(line: str, device: str) -> str:
    return f"{ALERTS_PREFIX}{line}/{device}"


def deadletter_topic(line: str, device: str) -> str:
    return f"{DEADLETTER_PREFIX}{line}/{device}"


def state_topic(line: str, device: str) -> str:
    """Retained: the device's current alerts, for subscribers that start late."""
    return f"{STATE_PREFIX}{line}/{device}"


def silence_topic(line: str, device: str) -> str:
    """Retained: a maintenance silence (device ``SILENCE_ALL_DEVICES``: the whole line)."""
    return f"{SILENCE_PREFIX}{line}/{device}"


def ack_topic(line: str, device: str) -> str:
    """An acknowledgement of one of the device's alerts (``contract.alerting.ack_payload``)."""
    return f"{ACK_PREFIX}{line}/{device}"


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


def parse_silence_topic(topic: str) -> tuple[str, str]:
    """Return (line, device) from ``factory/silence/<line>/<device|_all>``."""
    parts = topic[len(SILENCE_PREFIX) :].split("/")
    if not topic.startswith(SILENCE_PREFIX) or len(parts) != 2 or not all(parts):
        raise TopicError(f"silence topic is {SILENCE_PREFIX}<line>/<device|{SILENCE_ALL_DEVICES}>")
    return parts[0], parts[1]


def parse_state_topic(topic: str) -> tuple[str, str]:
    """Return (line, device) from ``factory/state/<line>/<device>``."""
    parts = topic[len(STATE_PREFIX) :].split("/")
    if not topic.startswith(STATE_PREFIX) or len(parts) != 2 or not all(map(valid_name, parts)):
        raise TopicError(f"state topic is {STATE_PREFIX}<line>/<device>, names {NAME_RULE}")
    return parts[0], parts[1]


def parse_ack_topic(topic: str) -> tuple[str, str]:
    """Return (line, device) from ``factory/ack/<line>/<device>``."""
    parts = topic[len(ACK_PREFIX) :].split("/")
    if not topic.startswith(ACK_PREFIX) or len(parts) != 2 or not all(map(valid_name, parts)):
        raise TopicError(f"ack topic is {ACK_PREFIX}<line>/<device>, names {NAME_RULE}")
    return parts[0], parts[1]


def parse_status_topic(topic: str) -> str | None:
    """The gateway id from ``factory/gateway/<id>/status``; None for another topic."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != ROOT or parts[1] != "gateway" or parts[3] != "status":
        return None
    return parts[2]


# -- cluster: partition topics, partition markers, the shared ingest subscription


def shared_reading_subscription(group: str) -> str:
    """The cluster group's shared subscription on every reading topic."""
    return f"$share/{group}/{READING_SUBSCRIPTION}"


def partition_topic(partition: int, line: str, device: str) -> str:
    """Where a routing gateway republishes a reading of partition p."""
    return f"{PARTITION_ROOT}/{partition}/{line}/{device}"


def partition_subscription(partition: int) -> str:
    return f"{PARTITION_ROOT}/{partition}/+/+"


def split_reading_topic(topic: str) -> tuple[str, str]:
    """(line, device) of a reading topic, unchecked: one split, for per-message routing.

    ``parse_reading_topic`` checks the names (the scorer does, after routing);
    (UNKNOWN, UNKNOWN) for a topic with another number of levels.
    """
    parts = topic.split("/")
    return (parts[1], parts[2]) if len(parts) == 4 else (UNKNOWN, UNKNOWN)


def reading_topic_of_partition(topic: str) -> str:
    """``factory/_part/<p>/<line>/<device>`` -> ``factory/<line>/<device>/reading``.

    Per message, so one split and no checks (the scorer parses the result); a topic
    with fewer levels is returned as it is.
    """
    parts = topic.split("/", 4)
    return f"{ROOT}/{parts[3]}/{parts[4]}/reading" if len(parts) == 5 else topic


def partition_ready_topic(group: str, partition: int | str) -> str:
    """Retained marker: partition p has a subscribed session, forwarding is safe."""
    return f"{CLUSTER_ROOT}/{group}/partition/{partition}"


def partition_ready_subscription(group: str) -> str:
    return partition_ready_topic(group, "+")


def parse_partition_ready_topic(topic: str, group: str) -> int | None:
    """Partition p from the group's ``factory/cluster/<group>/partition/<p>``, else None."""
    prefix = partition_ready_topic(group, "")
    if not topic.startswith(prefix):
        return None
    partition = topic[len(prefix) :]
    return int(partition) if partition.isascii() and partition.isdigit() else None
