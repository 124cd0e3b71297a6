"""Poison messages through the live gateway: a hypothesis-driven mix of hostile
payloads interleaved with valid readings.  No crash, every bad one dead-lettered
with a reason, every valid one stored."""

from __future__ import annotations

import threading
import time

import orjson
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import TEST_DB
from tests.helpers import Collector, count_points, unique, wait_for_points

pytestmark = pytest.mark.integration

FIELDS = ("temperature_c", "humidity_pct", "sound_db")
NAMES = {
    "temperature_c": ("temperature", "Temperature_C", "TEMP"),
    "humidity_pct": ("humidity", "Humidity_%", "rh"),
    "sound_db": ("noise", "sound_volume", "Sound_Volume_dB", "loudness"),
}
RANGES = {"temperature_c": (-50, 250), "humidity_pct": (0, 100), "sound_db": (0, 200)}


def _valid(draw) -> dict:
    body = {}
    for field in FIELDS:
        name = draw(st.sampled_from((field, *NAMES[field])))
        lo, hi = RANGES[field]
        body[name] = draw(st.one_of(st.integers(lo, hi), st.floats(lo, hi)))
    # Unknown fields are metadata from newer clients: ignored, the reading is valid.
    extra = draw(
        st.dictionaries(
            st.text("xyz_", min_size=3, max_size=8),
            st.one_of(st.text(max_size=5), st.integers(-(2**53), 2**53), st.none()),
            max_size=2,
        )
    )
    body.update(extra)
    return body


@st.composite
def bad_payload(draw) -> tuple[str, bytes]:
    """(kind, payload) that the contract must reject."""
    base = dict.fromkeys(FIELDS, 50)
    kind = draw(
        st.sampled_from(
            ["bytes", "huge", "nesting", "nan", "string_number", "timestamp", "missing", "bool"]
        )
    )
    if kind == "bytes":
        data = draw(st.binary(min_size=1, max_size=200))
        try:
            if isinstance(orjson.loads(data), dict):
                data = b"\x00" + data
        except orjson.JSONDecodeError:
            pass
        return kind, data
    if kind == "huge":
        return kind, orjson.dumps({**base, "pad": "x" * draw(st.integers(70_000, 300_000))})
    if kind == "nesting":
        depth = draw(st.integers(100, 5000))
        return kind, b"[" * depth + b"]" * depth
    if kind == "nan":
        field = draw(st.sampled_from(FIELDS))
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        return kind, orjson.dumps(base).replace(
            f'"{field}":50'.encode(), f'"{field}":{literal}'.encode()
        )
    if kind == "string_number":
        field = draw(st.sampled_from(FIELDS))
        return kind, orjson.dumps({**base, field: str(draw(st.integers(0, 99)))})
    if kind == "timestamp":
        ts = draw(
            st.one_of(
                st.just(time.time() + 86400 * 365),
                st.just(-5.0),
                st.just(time.time() * 1000),
                st.text(max_size=12),
                st.just("2026-13-45T99:00:00Z"),
            )
        )
        return kind, orjson.dumps({**base, "ts": ts})
    if kind == "missing":
        dropped = draw(st.sampled_from(FIELDS))
        return kind, orjson.dumps({k: v for k, v in base.items() if k != dropped})
    return kind, orjson.dumps({**base, draw(st.sampled_from(FIELDS)): True})


@st.composite
def mixed_stream(draw) -> list[tuple[bool, str, bytes]]:
    n = draw(st.integers(10, 40))
    out = []
    for i in range(n):
        if draw(st.booleans()):
            body = _valid(draw)
            # Distinct timestamps per device: each valid reading is its own point.
            body["ts"] = round(time.time() - 3600 + i, 3)
            out.append((True, "valid", orjson.dumps(body)))
        else:
            kind, payload = draw(bad_payload())
            out.append((False, kind, payload))
    # A reading on a reserved line name is a bad topic, not a reading.
    if draw(st.booleans()):
        out.append((False, "topic", orjson.dumps(dict.fromkeys(FIELDS, 50))))
    return out


@pytest.fixture(scope="module")
def publisher(mosquitto):
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=unique("fuzz"),
        protocol=mqtt.MQTTv5,
    )
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    assert connected.wait(10)
    yield client
    client.disconnect()
    client.loop_stop()


@settings(
    phases=[Phase.explicit, Phase.generate],  # shrinking against live services is too slow
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(stream=mixed_stream())
def test_poison_messages_never_stop_the_flow(gateway, mosquitto, influxdb, publisher, stream):
    device = unique("fuzz")
    dead = Collector(mosquitto.port, ["factory/deadletter/#"])
    try:
        for _ok, kind, payload in stream:
            line = "alerts" if kind == "topic" else "fuzzline"
            info = publisher.publish(f"factory/{line}/{device}/reading", payload, qos=1)
            info.wait_for_publish(10)
        n_valid = sum(ok for ok, _, _ in stream)
        n_bad = len(stream) - n_valid
        mine = lambda m: device in m.json()["topic"]  # noqa: E731
        letters = dead.wait_for(mine, timeout_s=20, count=n_bad) if n_bad else []
        if n_valid:
            wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", n_valid, 20)
    finally:
        dead.close()
    assert len(letters) == n_bad
    assert all(m.json()["reason"] and m.json()["detail"] for m in letters)
    assert count_points(influxdb.url, TEST_DB, f"device='{device}'") == n_valid
    print(f"fuzz: {len(stream)} published, {n_valid} valid stored, {n_bad} dead-lettered")
