"""The durable, bounded outbox: one SQLite file (WAL) of notifications to send.

One row per (idempotency key, channel, recipient), UNIQUE: a redelivered MQTT
message, a replayed alert or a restart never queues the same transition twice for
the same person.  The intake commits rows *before* it acknowledges the MQTT message,
so a crash loses nothing: either the rows are committed, or the broker redelivers.

Row states::

    pending --send ok--> delivered
       |  \\--retryable failure--> pending (next_attempt later) --too old--> dead
       \\--permanent failure--> dead
    held --window ends--> folded   (one new pending digest row per channel+recipient)

A crash between a receiver taking a notification and the ``delivered`` commit means
it is sent again after the restart, with the same idempotency key (webhook header,
e-mail Message-ID): receivers can deduplicate on it.  Delivery is at least once.

Bounded: ``open_count`` (pending + held) is what the intake's receive gate compares
with ``outbox.max_pending``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from contract.payloads import rfc3339
from notify.alerts import Alert
from notify.routing import Target

log = logging.getLogger(__name__)

PENDING = "pending"
HELD = "held"
FOLDED = "folded"
DELIVERED = "delivered"
DEAD = "dead"
DIGEST = "digest"  # the `event` of a digest row

_SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    route TEXT NOT NULL,
    from_addr TEXT NOT NULL DEFAULT '',
    event TEXT NOT NULL,
    line TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    limited INTEGER NOT NULL,
    status TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    hold_until REAL,
    next_attempt REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    settled REAL,
    UNIQUE (key, channel, recipient)
);
CREATE INDEX IF NOT EXISTS due ON notifications (status, channel, next_attempt);
CREATE INDEX IF NOT EXISTS held ON notifications (status, hold_until);
CREATE INDEX IF NOT EXISTS by_key ON notifications (key);
"""


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    key: str
    channel: str
    recipient: str
    route: str
    from_addr: str
    event: str
    line: str
    device: str
    kind: str
    body: bytes
    created: float
    attempts: int

    @property
    def is_digest(self) -> bool:
        return self.event == DIGEST

    def alerts(self) -> list[dict]:
        """The alert (or, for a digest, every alert folded into it) as received."""
        value = orjson.loads(self.body)
        return value if self.is_digest else [value]


_ROW_COLUMNS = (
    "id, key, channel, recipient, route, from_addr, event, line, device, kind, body, created,"
    " attempts"
)


class Outbox:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: explicit transactions; WAL + FULL: a committed row
        # survives a crash and a power cut (it is what lets us acknowledge the message).
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        (self.open_count,) = self._db.execute(
            "SELECT COUNT(*) FROM notifications WHERE status IN (?, ?)", (PENDING, HELD)
        ).fetchone()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("outbox is closed")
        return self._db

    def known(self, key: str) -> bool:
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT 1 FROM notifications WHERE key = ? LIMIT 1", (key,))
                .fetchone()
            )
        return row is not None

    def held_targets(self, key: str) -> set[tuple[str, str]]:
        """(channel, recipient) pairs for which the notification ``key`` was held for a
        digest (still held, or already folded into one) instead of sent on its own."""
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT channel, recipient FROM notifications WHERE key = ?"
                    " AND status IN (?, ?)",
                    (key, HELD, FOLDED),
                )
                .fetchall()
            )
        return {(channel, recipient) for channel, recipient in rows}

    def enqueue(
        self, alert: Alert, targets: Iterable[Target], hold_until: float | None, now: float
    ) -> int:
        """Queue the alert for each target (held until ``hold_until`` if set), one commit.

        Returns how many rows are new (0: every one was queued before)."""
        status = HELD if hold_until is not None else PENDING
        body = orjson.dumps(alert.body)
        rows = [
            (
                alert.key, t.channel, t.recipient, t.route, t.from_addr, alert.event,
                alert.line, alert.device, alert.kind, int(alert.limited), status, body, now,
                hold_until, now,
            )
            for t in targets
        ]  # fmt: skip
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO notifications (key, channel, recipient, route,"
                    " from_addr, event, line, device, kind, limited, status, body, created,"
                    " hold_until, next_attempt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                added = db.total_changes - before
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.open_count += added
        return added

    def due(self, channel: str, now: float, limit: int = 20) -> list[Row]:
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    f"SELECT {_ROW_COLUMNS} FROM notifications WHERE status = ? AND channel = ?"
                    " AND next_attempt <= ? ORDER BY next_attempt, id LIMIT ?",
                    (PENDING, channel, now, limit),
                )
                .fetchall()
            )
        return [Row(*r) for r in rows]

    def next_due(self, channel: str) -> float | None:
        with self._lock:
            (value,) = (
                self._conn()
                .execute(
                    "SELECT MIN(next_attempt) FROM notifications WHERE status = ? AND channel = ?",
                    (PENDING, channel),
                )
                .fetchone()
            )
        return value

    def _settle(self, row_id: int, status: str, now: float, error: str, attempts: int) -> None:
        with self._lock:
            cur = self._conn().execute(
                "UPDATE notifications SET status = ?, settled = ?, last_error = ?, attempts = ?"
                " WHERE id = ? AND status = ?",
                (status, now, error[:500], attempts, row_id, PENDING),
            )
            self.open_count -= cur.rowcount

    def mark_delivered(self, row: Row, now: float) -> None:
        self._settle(row.id, DELIVERED, now, "", row.attempts + 1)

    def mark_dead(self, row: Row, now: float, error: str, attempted: bool = True) -> None:
        self._settle(row.id, DEAD, now, error, row.attempts + int(attempted))

    def retry_later(self, row: Row, next_attempt: float, error: str) -> None:
        with self._lock:
            self._conn().execute(
                "UPDATE notifications SET attempts = attempts + 1, next_attempt = ?,"
                " last_error = ? WHERE id = ? AND status = ?",
                (next_attempt, error[:500], row.id, PENDING),
            )

    def fold_held(self, now: float) -> list[Row]:
        """Fold notifications held past their window's end into one digest row per
        (channel, recipient, window); returns the new digest rows (pending)."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                held = db.execute(
                    "SELECT channel, recipient, hold_until, route, from_addr, body"
                    " FROM notifications WHERE status = ? AND hold_until <= ?"
                    " ORDER BY id",
                    (HELD, now),
                ).fetchall()
                groups: dict[tuple[str, str, float], list[tuple[str, str, bytes]]] = {}
                for channel, recipient, until, route, from_addr, body in held:
                    groups.setdefault((channel, recipient, until), []).append(
                        (route, from_addr, body)
                    )
                new_ids = []
                for (channel, recipient, until), items in groups.items():
                    routes = ",".join(sorted({route for route, _, _ in items}))
                    body = b"[" + b",".join(b for _, _, b in items) + b"]"
                    # Deterministic: a digest of the same window keeps its key.
                    key = f"digest:{rfc3339(int(until * 1e9))}"
                    cur = db.execute(
                        "INSERT OR IGNORE INTO notifications (key, channel, recipient, route,"
                        " from_addr, event, line, device, kind, limited, status, body, created,"
                        " next_attempt) VALUES (?,?,?,?,?,?,'','','',0,?,?,?,?)",
                        (key, channel, recipient, routes, items[0][1], DIGEST, PENDING, body,
                         now, now),
                    )  # fmt: skip
                    if cur.rowcount:
                        new_ids.append(cur.lastrowid)
                folded = db.execute(
                    "UPDATE notifications SET status = ?, settled = ?"
                    " WHERE status = ? AND hold_until <= ?",
                    (FOLDED, now, HELD, now),
                ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.open_count += len(new_ids) - folded
            if not new_ids:
                return []
            marks = ",".join("?" * len(new_ids))
            rows = db.execute(
                f"SELECT {_ROW_COLUMNS} FROM notifications WHERE id IN ({marks})", new_ids
            ).fetchall()
        return [Row(*r) for r in rows]

    def sent_since(self, start: float) -> list[tuple[str, str, int]]:
        """Per device: rate-limited transitions queued for sending at or after ``start``
        (seeds the rate limiter after a restart)."""
        with self._lock:
            return (
                self._conn()
                .execute(
                    "SELECT line, device, COUNT(DISTINCT key) FROM notifications"
                    " WHERE created >= ? AND limited = 1 AND status IN (?, ?, ?)"
                    " GROUP BY line, device",
                    (start, PENDING, DELIVERED, DEAD),
                )
                .fetchall()
            )

    def drop_channels_except(self, channels: set[str], now: float) -> int:
        """Mark open rows of channels no longer enabled as dead (kept for inspection)."""
        marks = ",".join("?" * len(channels))
        where = f"status IN (?, ?) AND channel NOT IN ({marks})" if channels else "status IN (?, ?)"
        with self._lock:
            cur = self._conn().execute(
                f"UPDATE notifications SET status = ?, settled = ?,"
                f" last_error = 'channel no longer enabled' WHERE {where}",
                (DEAD, now, PENDING, HELD, *channels),
            )
            self.open_count -= cur.rowcount
        return cur.rowcount

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT status, COUNT(*) FROM notifications GROUP BY status")
                .fetchall()
            )
        out = dict.fromkeys((PENDING, HELD, FOLDED, DELIVERED, DEAD), 0)
        out.update(dict(rows))
        return out

    def prune(self, delivered_before: float, dead_before: float) -> int:
        """Forget settled rows past their keeping time (deduplication ends with them)."""
        with self._lock:
            cur = self._conn().execute(
                "DELETE FROM notifications WHERE (status IN (?, ?) AND settled < ?)"
                " OR (status = ? AND settled < ?)",
                (DELIVERED, FOLDED, delivered_before, DEAD, dead_before),
            )
        return cur.rowcount

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
