"""Which partition a device belongs to, and which gateway owns a partition.

A device always maps to the same partition (a stable hash of ``line/device``), so
its readings are always scored by the partition's owner and its state (alert
lifecycle, sensor-fault watch) stays in one process.  Owners are chosen by
rendezvous (highest-random-weight) hashing: every gateway computes the same answer
from the same member list, and a join or leave moves only about 1/N of partitions.
"""

from __future__ import annotations

import hashlib
import zlib


def partition_of(line: str, device: str, partitions: int) -> int:
    return zlib.crc32(f"{line}/{device}".encode()) % partitions


def _weight(member: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}|{key}".encode(), digest_size=8).digest())


def owner(members: list[str] | set[str], key: str) -> str | None:
    return max(members, key=lambda m: _weight(m, key), default=None)


def owned_partitions(me: str, members: set[str], partitions: int) -> set[int]:
    return {p for p in range(partitions) if owner(members, f"partition-{p}") == me}
