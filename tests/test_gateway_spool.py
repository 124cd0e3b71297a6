"""The on-disk spool: batches keep the messages their readings came from, and a spool
written by an older gateway (without them) still opens and drains."""

from __future__ import annotations

import sqlite3
import time
import zlib

from gateway.spool import Spool
from gateway.store import Points


def test_a_batch_keeps_its_readings_messages_in_order(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1 << 20, max_age_s=3600)
    first = Points(
        ["reading,device=a x=1 1", "gateway x=1 2", "reading,device=b x=2 3"],
        {0: ("factory/l/a/reading", b'{"x": 1}', 11), 2: ("factory/l/b/reading", b'{"x": 2}', 13)},
        2,
    )
    spool.append(first)
    spool.append(Points(["gateway x=2 4"], {}, 0))
    spool.close()

    reopened = Spool(tmp_path / "s.sqlite", max_bytes=1 << 20, max_age_s=3600)
    batches = reopened.oldest(100)
    assert [b.points.lines for b in batches] == [first.lines, ["gateway x=2 4"]]
    assert batches[0].points.origins == first.origins
    assert batches[0].points.readings == 2 and batches[1].points.origins == {}
    assert reopened.points == 4
    reopened.delete(batches)
    assert reopened.empty and reopened.bytes == 0


def test_a_spool_from_before_origins_opens_and_drains(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE batches (id INTEGER PRIMARY KEY AUTOINCREMENT, created_ns INTEGER NOT NULL,"
        " points INTEGER NOT NULL, readings INTEGER NOT NULL, body BLOB NOT NULL)"
    )
    db.execute(
        "INSERT INTO batches (created_ns, points, readings, body) VALUES (?, 1, 1, ?)",
        (time.time_ns(), zlib.compress(b"reading,device=a x=1 1")),
    )
    db.commit()
    db.close()

    spool = Spool(path, max_bytes=1 << 20, max_age_s=3600)
    assert spool.points == 1
    (batch,) = spool.oldest(100)
    assert batch.points.lines == ["reading,device=a x=1 1"] and batch.points.origins == {}
    spool.append(Points(["reading,device=b x=2 2"], {0: ("t", b"p", 5)}, 1))
    assert spool.oldest(100)[1].points.origins == {0: ("t", b"p", 5)}
    spool.close()
