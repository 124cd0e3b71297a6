"""The serial bridge's read loop on a real pseudo-terminal (a fake node): unplug and
replug, a port that is not there yet, garbage and over-long lines, prompt stop.

The readings go to an in-memory sink here; tests/test_serial_integration.py runs the
same paths end to end through Mosquitto, the gateway and InfluxDB.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from devstack.process import wait_until
from sensors.serial_bridge.bridge import SerialBridge
from sensors.serial_bridge.config import BridgeConfig, ReaderSettings
from tests.fake_node import FakeNode
from tests.test_serial_parsers import ListSink


class RunningBridge:
    def __init__(self, node_link, **reader: object):
        self.cfg = BridgeConfig(
            port=str(node_link),
            device="press-01",
            line="line1",
            reader=ReaderSettings(
                reopen_min_s=0.02, reopen_max_s=0.2, read_timeout_s=0.05, **reader
            ),
        )
        self.sink = ListSink()
        self.stop = threading.Event()
        self.bridge = SerialBridge(self.cfg, self.sink, self.stop)
        self.stats = self.bridge.stats
        self.thread = threading.Thread(target=self.bridge.run, daemon=True)
        self.thread.start()

    def seqs(self) -> list[int]:
        return [r[2]["seq"] for r in self.sink.sent]

    def wait_open(self, opens: int = 1) -> None:
        wait_until(lambda: self.stats.port_open and self.stats.opens >= opens, 10, "port open")

    def wait_bytes(self, node: FakeNode, total: int) -> None:
        wait_until(lambda: self.stats.bytes_read >= total, 10, f"{total} bytes read")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "bridge did not stop"


@pytest.fixture
def node(tmp_path) -> Iterator[FakeNode]:
    fake = FakeNode(tmp_path / "ttyNODE")
    yield fake
    fake.close()


def test_readings_from_a_pty(node):
    bridge = RunningBridge(node.link)
    try:
        bridge.wait_open()
        sent = node.send_readings(50)
        wait_until(lambda: len(bridge.sink.sent) >= 50, 10, "50 readings")
    finally:
        bridge.close()
    assert bridge.seqs() == sent
    assert bridge.stats.lines == 50 and not bridge.stats.invalid
    assert not bridge.stats.port_open


def test_unplug_and_replug_loses_nothing_after_the_reopen(node):
    bridge = RunningBridge(node.link)
    try:
        bridge.wait_open()
        before = node.send_readings(20)
        node.write(b'{"temperature_c": 61.0, "humidi')  # cut off by the unplug
        bridge.wait_bytes(node, node.bytes_written)
        node.unplug()
        wait_until(lambda: not bridge.stats.port_open, 10, "bridge to notice the unplug")
        # While the device is away the bridge keeps retrying (with backoff), no crash.
        wait_until(lambda: bridge.stats.invalid["partial"] == 1, 10, "partial line counted")
        node.plug()
        bridge.wait_open(opens=2)
        after = node.send_readings(30, end=b"\r\n")
        wait_until(lambda: len(bridge.sink.sent) >= 50, 10, "50 readings")
    finally:
        bridge.close()
    assert bridge.seqs() == before + after
    assert (bridge.stats.reopens, bridge.stats.port_lost) == (1, 1)
    assert dict(bridge.stats.invalid) == {"partial": 1}


def test_port_missing_at_start_is_waited_for(node):
    node.unplug()
    bridge = RunningBridge(node.link)
    try:
        # Several attempts fail (no such file) before the node appears.
        wait_until(lambda: bridge.stats.open_failures >= 3, 10, "failed opens")
        assert bridge.stats.opens == 0
        node.plug()
        bridge.wait_open()
        sent = node.send_readings(5)
        wait_until(lambda: len(bridge.sink.sent) >= 5, 10, "5 readings")
    finally:
        bridge.close()
    assert bridge.seqs() == sent and bridge.stats.reopens == 0


def test_garbage_and_over_long_lines_on_a_pty(node):
    bridge = RunningBridge(node.link, max_line_bytes=256)
    expected: list[int] = []
    try:
        bridge.wait_open()
        for i in range(10):
            expected += node.send_readings(3, end=[b"\n", b"\r\n", b"\r"][i % 3])
            node.write(node.garbage(40) + b"\n")  # not_text
            node.write(node.garbage(4000) + b"\r\n")  # too_long (no line end for 4 kB)
            node.write(b'{"temperature_c": 61.0, "humidity_pct": 44.0}\n')  # missing_field
            node.write(b"   \r\n")  # blank: ignored
        wait_until(lambda: len(bridge.sink.sent) >= 30, 10, "30 readings")
        bridge.wait_bytes(node, node.bytes_written)
    finally:
        bridge.close()
    assert bridge.seqs() == expected
    assert dict(bridge.stats.invalid) == {"not_text": 10, "too_long": 10, "missing_field": 10}
    assert bridge.stats.lines == 60
