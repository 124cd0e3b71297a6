"""mosquitto_pub is a first-class sensor: the real ``mosquitto_pub`` sends readings
(minimal body, with and without ``ts``), the real ``mosquitto_sub`` watches alerts
and dead letters, through the real gateway into InfluxDB."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import tty
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import orjson
import pytest

from devstack.influxdb import query
from devstack.process import wait_until
from tests.conftest import TEST_DB
from tests.helpers import mosquitto_pub, unique, wait_for_points

pytestmark = pytest.mark.integration

MINIMAL = '{"temperature_c": 71.2, "humidity_pct": 41.0, "sound_db": 68.5}'
ANOMALOUS = '{"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}'


class MosquittoSub:
    """``mosquitto_sub -v -d -C <count>`` as a user runs it in a terminal (a pty, so its
    output is line-buffered); ready once it reports the SUBACK.  Start it with the
    ``mosquitto_sub`` fixture, which stops it at teardown (also when the test fails)."""

    def __init__(self, port: int, topic: str, count: int = 1):
        binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        self.topic = topic
        self._master, slave = os.openpty()
        tty.setraw(slave)  # no CR/LF translation of its output
        args = ["-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-v", "-d"]
        self.proc = subprocess.Popen(
            [binary, *args, "-C", str(count), "-W", "30"],
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            wait_until(lambda: any("SUBACK" in ln for ln in self.lines), 10, "mosquitto_sub SUBACK")
        except BaseException:
            self.close()  # never returned to a fixture: stop it here
            raise

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                data = os.read(self._master, 4096)
            except OSError:  # EIO: mosquitto_sub exited and closed the terminal
                data = b""
            if not data:
                break
            *complete, pending = (pending + data).split(b"\n")
            self.lines.extend(ln.decode(errors="replace") for ln in complete)
        os.close(self._master)

    def messages(self, timeout_s: float = 15) -> list[dict]:
        """Wait for mosquitto_sub to exit after its -C messages; their JSON bodies."""
        try:
            self.proc.wait(timeout_s)
        finally:
            self.close()
        self._reader.join(5)
        prefix = self.topic + " "
        return [orjson.loads(ln[len(prefix) :]) for ln in self.lines if ln.startswith(prefix)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def mosquitto_sub(mosquitto) -> Iterator[Callable[..., MosquittoSub]]:
    """Starts ``MosquittoSub`` on the test broker; each is stopped at teardown, so a
    test failing before ``messages()`` leaves no mosquitto_sub running."""
    started: list[MosquittoSub] = []

    def _start(topic: str, count: int = 1) -> MosquittoSub:
        sub = MosquittoSub(mosquitto.port, topic, count)
        started.append(sub)
        return sub

    yield _start
    for sub in started:
        sub.close()


def _point(url: str, device: str) -> dict:
    series = query(url, f"SELECT * FROM reading WHERE device='{device}'", TEST_DB)
    (row,) = series[0]["values"]
    return dict(zip(series[0]["columns"], row, strict=True))


def test_minimal_body_without_ts_is_stamped_at_receipt(gateway, mosquitto, influxdb):
    device = unique("pub")
    before = time.time_ns()
    mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", MINIMAL)
    wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 1)
    point = _point(influxdb.url, device)
    assert before <= point["time"] <= time.time_ns()
    assert (point["temperature_c"], point["humidity_pct"], point["sound_db"]) == (71.2, 41.0, 68.5)
    assert point["is_anomaly"] is False


@pytest.mark.parametrize("form", ["rfc3339", "epoch"])
def test_body_with_ts_is_stored_at_that_time(gateway, mosquitto, influxdb, form):
    device = unique("pub")
    ts_s = int(time.time()) - 60
    ts = datetime.fromtimestamp(ts_s, tz=UTC).isoformat().replace("+00:00", "Z")
    body = orjson.loads(MINIMAL) | {"ts": ts if form == "rfc3339" else ts_s, "seq": 1}
    mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", orjson.dumps(body))
    wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 1)
    assert _point(influxdb.url, device)["time"] == ts_s * 1_000_000_000


def test_mosquitto_sub_sees_the_alert(gateway, mosquitto, influxdb, mosquitto_sub):
    device = unique("pub")
    sub = mosquitto_sub(f"factory/alerts/line1/{device}")
    mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", ANOMALOUS)
    (alert,) = sub.messages()
    assert alert["device"] == device and alert["line"] == "line1"
    assert alert["kind"] == "process_anomaly" and alert["state"] == "firing"
    assert alert["score"] >= alert["threshold"]
    assert alert["values"] == {"temperature_c": 95.0, "humidity_pct": 12.0, "sound_db": 104.0}


@pytest.mark.parametrize(
    ("body", "reason", "field"),
    [
        (
            '{"temperature_c": "hot", "humidity_pct": 41.0, "sound_db": 68.5}',
            "wrong_type",
            "temperature_c",
        ),
        ('{"temperature_c": 71.2, "humidity_pct": 41.0}', "missing_field", "sound_db"),
        ("temperature_c=71.2", "not_json", None),
    ],
)
def test_dead_letter_says_what_is_wrong_with_a_body(
    gateway, mosquitto, mosquitto_sub, body, reason, field
):
    device = unique("pub")
    topic = f"factory/line1/{device}/reading"
    sub = mosquitto_sub(f"factory/deadletter/line1/{device}")
    mosquitto_pub(mosquitto.port, topic, body)
    (letter,) = sub.messages()
    assert letter["reason"] == reason and letter["field"] == field
    assert letter["topic"] == topic and letter["payload"] == body
    assert letter["payload_bytes"] == len(body) and letter["truncated"] is False
    assert letter["detail"] and letter["received_at"].endswith("Z")
