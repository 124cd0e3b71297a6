"""A bounded on-disk spool (SQLite) for points InfluxDB could not take.

While InfluxDB is unreachable the writer appends each batch here, commits it (the
batch is now durable), and only then acknowledges the MQTT messages.  Each batch
keeps the messages its readings came from, so a point InfluxDB refuses when the
spool drains is still dead-lettered.  When InfluxDB
answers again the spool drains oldest first, with the readings' original
timestamps, so re-written points land exactly where they would have.

Bounds, and what happens at them:
- ``max_bytes``: when a new batch would not fit, ``append`` refuses it; the writer
  then stops acknowledging, so the broker keeps the readings (back-pressure, not loss).
- ``max_age_s``: batches older than this are deleted and counted as expired: points
  that old would fall outside the database's retention anyway.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import orjson

from gateway.store import Origin, Points

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    id: int
    points: Points


def _pack_origins(origins: dict[int, Origin]) -> bytes | None:
    if not origins:
        return None
    # A valid reading's payload is UTF-8 JSON (the contract parsed it).
    rows = [(i, t, body.decode("utf-8", "replace"), ns) for i, (t, body, ns) in origins.items()]
    return zlib.compress(orjson.dumps(rows), 1)


def _unpack_origins(blob: bytes | None) -> dict[int, Origin]:
    if not blob:
        return {}
    rows = orjson.loads(zlib.decompress(blob))
    return {i: (topic, body.encode(), ns) for i, topic, body, ns in rows}


class Spool:
    def __init__(self, path: str | Path, max_bytes: int, max_age_s: float):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._max_age_ns = int(max_age_s * 1e9)
        self._lock = threading.Lock()
        # isolation_level=None: explicit transactions only; WAL + FULL sync so a
        # committed batch survives a crash and a power cut.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " created_ns INTEGER NOT NULL,"
            " points INTEGER NOT NULL,"
            " readings INTEGER NOT NULL,"
            " body BLOB NOT NULL,"
            " origins BLOB)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(batches)")}
        if "origins" not in columns:  # a spool written by an older gateway
            self._db.execute("ALTER TABLE batches ADD COLUMN origins BLOB")
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(points), 0),"
            " COALESCE(SUM(LENGTH(body) + COALESCE(LENGTH(origins), 0)), 0) FROM batches"
        ).fetchone()
        self.batches, self.points, self.bytes = int(row[0]), int(row[1]), int(row[2])
        if self.batches:
            log.info(
                "spool %s holds %d points from before; draining when InfluxDB answers",
                self.path,
                self.points,
            )

    @property
    def empty(self) -> bool:
        return self.batches == 0

    def append(self, points: Points) -> bool:
        """Store one batch durably, with the messages its readings came from (so a point
        InfluxDB later refuses is dead-lettered); False if it does not fit."""
        body = zlib.compress("\n".join(points.lines).encode(), 1)
        origins = _pack_origins(points.origins)
        size = len(body) + len(origins or b"")
        with self._lock:
            if self.bytes + size > self._max_bytes:
                return False
            self._db.execute(
                "INSERT INTO batches (created_ns, points, readings, body, origins)"
                " VALUES (?, ?, ?, ?, ?)",
                (time.time_ns(), len(points.lines), points.readings, body, origins),
            )
            self.batches += 1
            self.points += len(points.lines)
            self.bytes += size
        return True

    def oldest(self, max_points: int) -> list[SpooledBatch]:
        """The oldest batches, up to about ``max_points`` points (at least one batch)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, points, readings, body, origins FROM batches ORDER BY id LIMIT 64"
            ).fetchall()
        out: list[SpooledBatch] = []
        total = 0
        for batch_id, points, readings, body, origins in rows:
            if out and total + points > max_points:
                break
            lines = zlib.decompress(body).decode().split("\n")
            out.append(SpooledBatch(batch_id, Points(lines, _unpack_origins(origins), readings)))
            total += points
        return out

    def delete(self, batches: list[SpooledBatch]) -> None:
        with self._lock:
            self._delete_ids([b.id for b in batches])

    def _delete_ids(self, ids: list[int]) -> None:
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        row = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(points), 0),"
            f" COALESCE(SUM(LENGTH(body) + COALESCE(LENGTH(origins), 0)), 0)"
            f" FROM batches WHERE id IN ({marks})",
            ids,
        ).fetchone()
        self._db.execute(f"DELETE FROM batches WHERE id IN ({marks})", ids)
        self.batches -= int(row[0])
        self.points -= int(row[1])
        self.bytes -= int(row[2])

    def expire(self) -> int:
        """Delete batches older than the age limit; returns the points removed."""
        cutoff = time.time_ns() - self._max_age_ns
        with self._lock:
            rows = self._db.execute(
                "SELECT id, points FROM batches WHERE created_ns < ?", (cutoff,)
            ).fetchall()
            self._delete_ids([r[0] for r in rows])
        return sum(r[1] for r in rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
