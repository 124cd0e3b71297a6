"""Nothing accepted is lost silently: every reading the contract accepts is stored,
spooled or dead-lettered, and counted; a hung InfluxDB is an outage; the gateway
holds to its memory bound whatever the broker sends.

Real Mosquitto and a real influxd per test (it gets frozen with SIGSTOP); every
test counts published = stored + dead-lettered.
"""

from __future__ import annotations

import signal
import time

import orjson
import pytest
import urllib3

from devstack.influxdb import InfluxDB
from devstack.process import free_port, wait_until
from tests.conftest import TEST_DB
from tests.helpers import Collector, count_points, publish_all, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def influxdb(tmp_path):
    """An influxd of this test's own, so freezing it affects nothing else; thawed and
    stopped at teardown even when the test fails while it is frozen."""
    db = InfluxDB(tmp_path / "influxdb", free_port()).start()
    db.create_database(TEST_DB)
    yield db
    db.process.send_signal(signal.SIGCONT)
    db.stop()


@pytest.fixture
def frozen(influxdb):
    """Freeze influxd (it accepts connections, never answers) until the test thaws it."""
    process = influxdb.process

    class Freezer:
        def freeze(self) -> None:
            process.send_signal(signal.SIGSTOP)

        def thaw(self) -> None:
            process.send_signal(signal.SIGCONT)

    freezer = Freezer()
    yield freezer
    freezer.thaw()


@pytest.fixture
def dead_letters(mosquitto):
    collector = Collector(mosquitto.port, ["factory/deadletter/#"])
    yield collector
    collector.close()


def make_seq_a_float(influxdb: InfluxDB) -> None:
    """Give the `reading` measurement a float `seq` field in the current shard: every
    reading the gateway writes with its integer `seq` then meets a field type conflict."""
    point = f"reading,line=conflict,device=conflict seq=1.5 {time.time_ns()}"
    resp = urllib3.request(
        "POST", f"{influxdb.url}/write?db={TEST_DB}&precision=ns", body=point.encode()
    )
    assert resp.status == 204, resp.data


def readings(line: str, device: str, n: int, *, with_seq: bool) -> list[tuple[str, bytes]]:
    """n readings a second apart, ending now; half of them carry `seq` if asked."""
    now = time.time()
    out = []
    for i in range(n):
        body: dict[str, object] = {
            "temperature_c": 60.0 + i / 10,
            "humidity_pct": 40.0,
            "sound_db": 70.0,
            "ts": now - n + i,
        }
        if with_seq and i % 2 == 0:
            body["seq"] = i
        out.append((f"factory/{line}/{device}/reading", orjson.dumps(body)))
    return out


def stored(influxdb: InfluxDB, device: str) -> int:
    return count_points(influxdb.url, TEST_DB, f"device='{device}'")


def store_refused(dead_letters: Collector, device: str) -> list[dict]:
    return [
        m.json()
        for m in dead_letters.matching(lambda m: m.topic.endswith(f"/{device}"))
        if m.json()["reason"] == "store_refused"
    ]


def test_points_influxdb_refuses_are_dead_lettered_and_the_rest_stored(
    influxdb, start_gateway, mosquitto, dead_letters
):
    gw = start_gateway()
    make_seq_a_float(influxdb)
    device = unique("refused")
    sent = readings("acct", device, 40, with_seq=True)
    publish_all(mosquitto.port, sent)
    with_seq = [payload for _, payload in sent if b'"seq"' in payload]

    wait_until(
        lambda: len(store_refused(dead_letters, device)) == len(with_seq), 30, "dead letters"
    )
    wait_until(lambda: stored(influxdb, device) == len(sent) - len(with_seq), 30, "the rest stored")
    letters = store_refused(dead_letters, device)
    # Exactly the refused readings, each with its original payload and InfluxDB's reason.
    assert sorted(m["payload"] for m in letters) == sorted(p.decode() for p in with_seq)
    assert all("field type conflict" in m["detail"] for m in letters)
    assert all(m["topic"] == f"factory/acct/{device}/reading" for m in letters)
    # Counted as what was really refused, and everything acknowledged.
    assert gw.metric("gateway_points_dropped_total") == len(with_seq)
    rejected = gw.metric_labelled("gateway_messages_rejected_total", 'reason="store_refused"')
    assert rejected == len(with_seq)
    wait_until(lambda: gw.metric("gateway_unacked_messages") == 0, 10, "all acknowledged")
    assert stored(influxdb, device) + len(letters) == len(sent)


def test_hung_influxdb_spools_then_drains_and_dead_letters_what_it_refuses(
    influxdb, frozen, start_gateway, mosquitto, dead_letters
):
    # InfluxDB gets a minute to answer a spool drain but only 1 s before a write is
    # spooled: waiting out the full timeout (the old behaviour) would not spool in time.
    gw = start_gateway(env={"GATEWAY_INFLUX_TIMEOUT_S": "60"})
    make_seq_a_float(influxdb)
    device = unique("hung")
    sent = readings("acct", device, 60, with_seq=True)
    with_seq = sum(b'"seq"' in payload for _, payload in sent)
    frozen.freeze()
    publish_all(mosquitto.port, sent)
    # Spooled and acknowledged while InfluxDB still hangs.
    wait_until(
        lambda: gw.metric("gateway_spooled_points_total") >= len(sent), 20, "readings spooled"
    )
    wait_until(lambda: gw.metric("gateway_unacked_messages") == 0, 10, "acknowledged")
    frozen.thaw()
    wait_until(lambda: gw.metric("gateway_spool_points") == 0, 90, "spool drained")
    wait_until(lambda: len(store_refused(dead_letters, device)) == with_seq, 30, "dead letters")
    assert stored(influxdb, device) == len(sent) - with_seq
    assert gw.metric("gateway_points_dropped_total") == with_seq


def test_held_readings_stay_within_the_limit_whatever_the_broker_sends(
    influxdb, frozen, start_gateway, mosquitto
):
    limit = 50
    # No spool: nothing is acknowledged while InfluxDB hangs.  Readings at QoS 0 are
    # outside the broker's flow control (Receive Maximum counts QoS 1 and 2 only), so
    # only the gateway's own bound (pipeline.max_held_readings) keeps them out of memory.
    gw = start_gateway(
        env={"GATEWAY_PIPELINE_MAX_HELD_READINGS": str(limit), "GATEWAY_SPOOL_PATH": ""}
    )
    device = unique("flood")
    sent = readings("acct", device, 1000, with_seq=False)
    frozen.freeze()
    publish_all(mosquitto.port, sent, qos=0)
    wait_until(lambda: gw.metric("gateway_held_readings") == limit, 30, "the bound reached")
    held_peak = gw.metric("gateway_held_readings_peak")
    received = gw.metric("gateway_messages_received_total")
    assert held_peak <= limit
    assert received <= limit
    frozen.thaw()
    wait_until(lambda: stored(influxdb, device) == len(sent), 120, "the flood stored")
    assert gw.metric("gateway_held_readings_peak") <= limit
    print(f"{len(sent)} readings at QoS 0, limit {limit}: peak held {held_peak:.0f}")
