"""Warn when the broker is a Mosquitto that can stall a cluster.

Mosquitto before 2.0.13 gets its outgoing inflight quota wrong (fixed in 2.0.13,
"various fixes around inflight quota management", eclipse/mosquitto#2306).  Measured
with ``bench/bench_cluster.py`` (two gateways offered about 11,000 readings/s, more
than they route): on 2.0.11, Debian 12's and Raspberry Pi OS's version, the broker sent
each routing session far more than its Receive Maximum, then, once those were
acknowledged, sent nothing more, and the readings still queued for the shared
subscription stayed there; on 2.0.21 (bookworm-backports) the same run lost nothing.
A single gateway does not use shared subscriptions and is not affected.

The broker announces its version as the retained ``$SYS/broker/version``
("mosquitto version 2.0.11"); cluster gateways subscribe to it and log a warning.
"""

from __future__ import annotations

import re

VERSION_TOPIC = "$SYS/broker/version"
FIXED_IN = (2, 0, 13)

_MOSQUITTO = re.compile(rb"^mosquitto version (\d+)\.(\d+)\.(\d+)")


def mosquitto_version(payload: bytes) -> tuple[int, int, int] | None:
    """(2, 0, 11) from b"mosquitto version 2.0.11"; None for other brokers or text."""
    match = _MOSQUITTO.match(payload.strip())
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def stall_warning(payload: bytes) -> str | None:
    """The warning to log for this broker version, or None when it is not affected."""
    version = mosquitto_version(payload)
    if version is None or version >= FIXED_IN:
        return None
    shown = ".".join(map(str, version))
    fixed = ".".join(map(str, FIXED_IN))
    return (
        f"the broker is Mosquitto {shown}: before {fixed} its inflight-quota defect can stop "
        "delivery to a cluster's shared subscription once the gateways fall behind (readings "
        f"stay queued in the broker); use Mosquitto {fixed} or newer for cluster mode "
        "(Debian 12 / Raspberry Pi OS: bookworm-backports has 2.0.21)"
    )
