"""``python -m sensors.serial_bridge`` end to end: a fake node on a pty -> the bridge
-> real Mosquitto -> the real gateway -> real InfluxDB.  Counts are exact."""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
import urllib3
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devstack.influxdb import query
from devstack.mosquitto import Mosquitto
from devstack.process import ManagedProcess, free_port, wait_until
from tests.conftest import TEST_DB
from tests.fake_node import FakeNode
from tests.helpers import ROOT, Collector, count_points, unique, wait_for_points

pytestmark = pytest.mark.integration

_SUMMARY = re.compile(r"^lines=\d+ .*$", re.MULTILINE)


class BridgeProcess:
    """The bridge as a user runs it, with its metrics on for condition waits."""

    def __init__(
        self,
        tmp: Path,
        port_path: Path,
        device: str,
        broker_port: int,
        *extra: str,
        env: dict[str, str] | None = None,
        need_broker: bool = True,
    ):
        self.device = device
        self.need_broker = need_broker
        self.metrics_port = free_port()
        self.log = tmp / f"bridge-{device}.log"
        argv = [
            sys.executable,
            "-m",
            "sensors.serial_bridge",
            "--port",
            str(port_path),
            "--device",
            device,
            "--line",
            "line1",
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            str(broker_port),
            "--metrics-port",
            str(self.metrics_port),
            *extra,
        ]
        # Fast reopen for the tests, through the documented environment overrides.
        fast = {"SERIAL_READER_REOPEN_MIN_S": "0.05", "SERIAL_READER_REOPEN_MAX_S": "0.5"}
        self.process = ManagedProcess(
            f"bridge-{device}",
            argv,
            self.log,
            ready=self._ready,
            env={**os.environ, **fast, **(env or {})},
            cwd=ROOT,
        )
        self.returncode: int | None = None

    def metrics(self) -> dict[str, float]:
        try:
            resp = urllib3.request(
                "GET", f"http://127.0.0.1:{self.metrics_port}/metrics", retries=False
            )
        except urllib3.exceptions.HTTPError:
            return {}
        out = {}
        for row in resp.data.decode().splitlines():
            if row and not row.startswith("#"):
                name, value = row.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(f"serial_bridge_{name}", -1.0)

    def _ready(self) -> bool:
        m = self.metrics()
        connected = m.get("serial_bridge_broker_connected") == 1 or not self.need_broker
        return m.get("serial_bridge_port_open") == 1 and connected

    def start(self) -> BridgeProcess:
        self.process.start(30)
        return self

    def wait_metric(self, name: str, value: float, timeout_s: float = 15) -> None:
        wait_until(lambda: self.metric(name) == value, timeout_s, f"{name} == {value}")

    def stop(self) -> dict[str, str]:
        """SIGTERM; returns the summary line's fields."""
        self.returncode = self.process.stop()
        found = _SUMMARY.findall(self.log.read_text(errors="replace"))
        assert found, f"no summary line in {self.log}:\n{self.process.tail()}"
        return dict(pair.split("=", 1) for pair in found[-1].split())


@pytest.fixture
def node(tmp_path) -> Iterator[FakeNode]:
    fake = FakeNode(tmp_path / f"tty-{unique('node')}")
    yield fake
    fake.close()


@pytest.fixture
def bridges() -> Iterator[list[BridgeProcess]]:
    started: list[BridgeProcess] = []
    yield started
    for bridge in started:
        bridge.process.stop()


def _start(bridges, tmp_path, node, broker_port, *extra) -> BridgeProcess:
    bridge = BridgeProcess(tmp_path, node.link, unique("serial"), broker_port, *extra)
    bridges.append(bridge)
    return bridge.start()


def test_fake_node_readings_reach_influxdb(gateway, mosquitto, influxdb, node, bridges, tmp_path):
    bridge = _start(bridges, tmp_path, node, mosquitto.port)
    where = f"device='{bridge.device}'"
    watch = Collector(mosquitto.port, [f"factory/line1/{bridge.device}/reading"])
    try:
        sent = node.send_readings(20) + node.send_readings(10, end=b"\r\n")
        sent += node.send_readings(10, end=b"\r")
        assert wait_for_points(influxdb.url, TEST_DB, where, 40) == 40
        messages = watch.wait_for(lambda m: True, count=40)
    finally:
        watch.close()
    summary = bridge.stop()
    assert bridge.returncode == 0
    assert summary["published"] == "40" and summary["lines"] == "40" and summary["invalid"] == "0"
    assert count_points(influxdb.url, TEST_DB, where) == 40
    bodies = [m.json() for m in messages]
    assert [b["seq"] for b in bodies] == sent  # seq passes through, in order
    assert all(b["ts"].endswith("Z") for b in bodies)  # the Pi's receive time, ms
    times = [
        row[0]
        for row in query(influxdb.url, f"SELECT score FROM reading WHERE {where}", TEST_DB)[0][
            "values"
        ]
    ]
    assert len(set(times)) == 40


def test_unplug_and_replug_mid_stream(gateway, mosquitto, influxdb, node, bridges, tmp_path):
    bridge = _start(bridges, tmp_path, node, mosquitto.port)
    where = f"device='{bridge.device}'"
    node.send_readings(25)
    node.write(b'{"temperature_c": 61.0, "hum')  # the cable is pulled mid-line
    bridge.wait_metric("bytes_read_total", node.bytes_written)
    assert wait_for_points(influxdb.url, TEST_DB, where, 25) == 25
    node.unplug()
    bridge.wait_metric("port_open", 0)
    bridge.wait_metric("port_open_failures_total", 2)  # retrying while it is away
    node.plug()
    bridge.wait_metric("port_reopens_total", 1)
    bridge.wait_metric("port_open", 1)
    node.send_readings(25, end=b"\r\n")
    assert wait_for_points(influxdb.url, TEST_DB, where, 50) == 50
    summary = bridge.stop()
    assert bridge.returncode == 0
    assert (summary["published"], summary["reopens"], summary["port_lost"]) == ("50", "1", "1")
    assert summary["reasons"] == "partial:1"
    assert count_points(influxdb.url, TEST_DB, where) == 50


def test_interleaved_garbage_every_valid_line_arrives_every_bad_one_counted(
    gateway, mosquitto, influxdb, node, bridges, tmp_path
):
    bridge = _start(bridges, tmp_path, node, mosquitto.port)
    where = f"device='{bridge.device}'"
    bad = {
        "not_text": node.garbage(30) + b"\n",  # wrong baud rate
        "too_long": b"{" + b'"pad": 1, ' * 300 + b"\r\n",  # 3 kB > 1 KiB buffer
        "not_json": b'{"temperature_c": 61.0, "humidity_pct": 44.0, sound_db: 70}\n',
        "out_of_range": b'{"temperature_c": 61.0, "humidity_pct": 440.0, "sound_db": 70}\n',
        "missing_field": b'{"temperature_c": 61.0, "humidity_pct": 44.0}\r\n',
        "wrong_type": b'{"temperature_c": "61", "humidity_pct": 44.0, "sound_db": 70}\r',
    }
    valid = 0
    for round_no in range(5):
        for line in bad.values():
            node.send_readings(2, end=[b"\n", b"\r\n", b"\r"][round_no % 3])
            valid += 2
            node.write(line)
        node.write(b"# DHT22 read failed, retrying\n\x00\n")  # a comment, then a NUL line
    node.send_readings(1)
    valid += 1
    bridge.wait_metric("bytes_read_total", node.bytes_written)
    assert wait_for_points(influxdb.url, TEST_DB, where, valid) == valid
    summary = bridge.stop()
    assert bridge.returncode == 0
    expected = dict.fromkeys(bad, 5)
    expected["not_text"] += 5  # the NUL lines
    reasons = dict(pair.split(":") for pair in summary["reasons"].split(","))
    assert {k: int(v) for k, v in reasons.items()} == expected
    assert summary["published"] == str(valid) and summary["comments"] == "5"
    assert summary["lines"] == str(valid + sum(expected.values()) + 5)
    assert count_points(influxdb.url, TEST_DB, where) == valid


def test_csv_node_with_adc_scale_from_flags(gateway, mosquitto, influxdb, node, bridges, tmp_path):
    bridge = _start(
        bridges,
        tmp_path,
        node,
        mosquitto.port,
        "--format",
        "csv",
        "--csv-columns",
        "seq,temp,rh,noise",
        "--scale",
        "noise=0.1",
        "--offset",
        "sound_db=-5",
    )
    where = f"device='{bridge.device}'"
    node.write(b"0,62.0,44.0,812\r\n1,62.5,44.5,790\r\ntemperature,humidity,noise\r\n")
    assert wait_for_points(influxdb.url, TEST_DB, where, 2) == 2
    rows = query(influxdb.url, f"SELECT sound_db FROM reading WHERE {where}", TEST_DB)[0]["values"]
    assert [round(r[1], 6) for r in rows] == [76.2, 74.0]
    summary = bridge.stop()
    assert summary["reasons"] == "bad_csv:1"  # a header line has the wrong column count


class PersistentSubscriber:
    """Sees every reading even across a broker restart (persistent QoS 1 session)."""

    def __init__(self, port: int, topic: str):
        self.payloads: list[bytes] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=unique("persistent"),
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = lambda c, u, msg: self.payloads.append(msg.payload)
        subscribed = []
        self.client.on_subscribe = lambda *a: subscribed.append(True)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        wait_until(lambda: subscribed, 10, "subscription")

    def seqs(self) -> set[int]:
        return {orjson.loads(p)["seq"] for p in list(self.payloads)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def own_broker(tmp_path) -> Iterator[Mosquitto]:
    """A broker of the test's own (the test stops and restarts it), stopped at teardown.
    Request it before ``bridges`` so the bridges are stopped first."""
    broker = Mosquitto(tmp_path / "broker", free_port()).start()
    yield broker
    broker.stop()


def test_broker_away_readings_wait_in_the_outbox_and_newest_are_dropped_when_full(
    tmp_path, node, own_broker, bridges
):
    broker = own_broker
    bridge = BridgeProcess(tmp_path, node.link, unique("serial"), broker.port, "--max-pending", "5")
    bridges.append(bridge)
    subscriber = PersistentSubscriber(broker.port, f"factory/line1/{bridge.device}/reading")
    try:
        bridge.start()
        node.send_readings(3)
        wait_until(lambda: subscriber.seqs() == {0, 1, 2}, 10, "3 readings while connected")
        broker.stop()
        bridge.wait_metric("broker_connected", 0)
        node.send_readings(8)  # seq 3..10: 5 fit the outbox, the newest 3 are dropped
        bridge.wait_metric("readings_dropped_total", 3)
        assert bridge.metric("outbox_pending") == 5
        broker.start()
        wait_until(lambda: len(subscriber.seqs()) >= 8, 30, "the outbox after the broker returned")
        summary = bridge.stop()
    finally:
        subscriber.close()
    # QoS 1 is at-least-once: a redelivered duplicate is allowed, a gap is not.
    assert sorted(subscriber.seqs()) == list(range(8))
    assert (summary["published"], summary["dropped"], summary["readings"]) == ("8", "3", "11")
    assert bridge.returncode == 0


def test_sigterm_with_the_broker_away_waits_boundedly_and_reports_the_loss(tmp_path, node, bridges):
    nobody = free_port()  # no broker listens here
    bridge = BridgeProcess(
        tmp_path,
        node.link,
        unique("serial"),
        nobody,
        env={"SERIAL_OUTBOX_FLUSH_TIMEOUT_S": "0.5"},
        need_broker=False,
    )
    bridges.append(bridge)
    bridge.start()
    node.send_readings(4)
    bridge.wait_metric("readings_queued_total", 4)
    summary = bridge.stop()
    assert bridge.returncode == 1  # readings were lost at exit: say so
    assert (summary["queued"], summary["published"], summary["unacknowledged"]) == ("4", "0", "4")
    assert "4 readings not acknowledged by the broker at shutdown" in bridge.log.read_text()


class ServiceManager:
    """systemd's end of sd_notify: a datagram socket collecting every notification."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed.is_set():
            try:
                self.messages.extend(self.sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue

    def seen(self, prefix: str) -> int:
        return sum(1 for m in list(self.messages) if m.startswith(prefix))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


def test_runs_as_a_systemd_notify_service_with_watchdog(tmp_path, node, bridges):
    manager = ServiceManager(tmp_path / "notify.sock")
    env = {
        "NOTIFY_SOCKET": manager.path,
        "WATCHDOG_USEC": "1000000",  # pings every 0.5 s
        "SERIAL_OUTBOX_FLUSH_TIMEOUT_S": "0.2",  # no broker here: do not wait for one
    }
    bridge = BridgeProcess(
        tmp_path,
        node.link,
        unique("serial"),
        free_port(),
        "--stats-interval",
        "0.2",
        env=env,
        need_broker=False,
    )
    bridges.append(bridge)
    try:
        bridge.start()
        wait_until(lambda: manager.seen("READY=1") == 1, 10, "READY=1")
        node.send_readings(2)
        wait_until(lambda: manager.seen("WATCHDOG=1") >= 3, 10, "watchdog pings")
        wait_until(lambda: manager.seen("STATUS=lines=2 "), 10, "counters in STATUS")
        bridge.stop()
        wait_until(lambda: manager.seen("STOPPING=1") == 1, 10, "STOPPING=1")
    finally:
        manager.close()
    assert f"STATUS=reading {node.link}" in manager.messages
