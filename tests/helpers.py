"""Test helpers: a collecting MQTT subscriber, real CLI wrappers, condition waits."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devstack.influxdb import query
from devstack.process import wait_until

ROOT = Path(__file__).resolve().parent.parent
_ids = itertools.count()


def unique(prefix: str) -> str:
    """Unique device/line names keep tests independent on shared services."""
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self):
        return orjson.loads(self.payload)


class Collector:
    """Subscribes (MQTT v5) and keeps every message; tests wait on conditions."""

    def __init__(self, port: int, topics: list[str], host: str = "127.0.0.1", **auth: str):
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=unique("collector"),
            protocol=mqtt.MQTTv5,
        )
        if auth:
            self.client.username_pw_set(auth["username"], auth.get("password"))
        self._topics = topics
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1" if host == "localhost" else host, port)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 10, f"subscription to {topics}")

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, msg.retain))

    def matching(self, pred: Callable[[Received], bool]) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if pred(m)]

    def wait_for(
        self, pred: Callable[[Received], bool], timeout_s: float = 10, count: int = 1
    ) -> list[Received]:
        wait_until(lambda: len(self.matching(pred)) >= count, timeout_s, "expected MQTT messages")
        return self.matching(pred)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mosquitto_pub(port: int, topic: str, message: str | bytes, *extra: str) -> None:
    """Publish with the real mosquitto_pub, as a user would (QoS 1)."""
    binary = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    args = [binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, *extra]
    if isinstance(message, bytes):
        subprocess.run([*args, "-s"], input=message, check=True, timeout=10)
    else:
        subprocess.run([*args, "-m", message], check=True, timeout=10)


def count_points(url: str, db: str, where: str) -> int:
    series = query(url, f"SELECT count(score) FROM reading WHERE {where}", db)
    return int(series[0]["values"][0][1]) if series else 0


def wait_for_points(url: str, db: str, where: str, expected: int, timeout_s: float = 30) -> int:
    wait_until(
        lambda: count_points(url, db, where) >= expected,
        timeout_s,
        f"{expected} points WHERE {where}",
        interval_s=0.1,
    )
    return count_points(url, db, where)


def python_module(*args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def summary(output: str) -> dict[str, str]:
    """The ``key=value`` summary line a publisher CLI prints (published first)."""
    for line in reversed(output.splitlines()):
        if line.startswith("published="):
            return dict(part.split("=", 1) for part in line.split())
    raise AssertionError(f"no summary line in output:\n{output}")


def simulate_csv(out, *, lines: int, devices: int, duration_s: int, seed: int, extra=()):
    """A labelled simulator dataset at 1 Hz with every fault type, made with the real CLI."""
    result = python_module(
        "sensors.simulate", "--csv", str(out), "--lines", str(lines), "--devices", str(devices),
        "--interval", "1", "--duration", str(duration_s), "--seed", str(seed), "--faults", "all",
        *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def train_model(csv_path, models_dir, *extra: str) -> str:
    """Train with the real CLI on a labelled simulator CSV; returns the new version."""
    result = python_module(
        "model", "train", "--csv", str(csv_path), "--models-dir", str(models_dir),
        "--label-column", "is_anomaly", "--fault-column", "fault", "--timestamp-column", "ts",
        *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("saved "))
    return Path(line.split()[1]).name


class Stream:
    """The simulator publishing in real time (QoS 1) in the background."""

    def __init__(
        self,
        port: int,
        prefix: str,
        *,
        lines: int = 1,
        devices: int = 4,
        interval_s: float = 0.02,
        duration_s: float = 6.0,
    ):
        self.prefix = prefix
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sensors.simulate", "--broker-port", str(port),
             "--lines", str(lines), "--devices", str(devices), "--interval", str(interval_s),
             "--speed", "1", "--duration", str(duration_s), "--faults", "none",
             "--device-prefix", prefix],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def finish(self, timeout_s: float = 120) -> int:
        """Wait for the end; returns the readings the broker acknowledged (all of them)."""
        out, err = self.proc.communicate(timeout=timeout_s)
        assert self.proc.returncode == 0, err[-3000:]
        stats = summary(out)
        assert stats["queued"] == stats["published"], stats
        assert stats["unacknowledged"] == "0" and stats["refused"] == "0", stats
        return int(stats["published"])


def paho_receives(client_class: type, header: int, body: bytes):
    """Feed one PUBLISH (fixed-header byte, body) to a paho-style client's decoder, the
    way its network loop does; returns the message its ``on_message`` got."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = client_class(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)  # no socket here to send a PUBACK on
    got: list = []
    client.on_message = lambda _c, _u, msg: got.append(msg)
    client._in_packet = {"command": header, "packet": body}
    assert client._handle_publish() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert len(got) == 1
    return got[0]


def publish_all(
    port: int, messages: list[tuple[str, bytes]], qos: int = 1, timeout_s: float = 30
) -> None:
    """Publish and return once every message is sent (QoS 0) or acknowledged (QoS 1)."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=unique("pub"),
        protocol=mqtt.MQTTv5,
    )
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout_s)
            assert info.is_published(), "a reading was not sent"
    finally:
        client.disconnect()
        client.loop_stop()
