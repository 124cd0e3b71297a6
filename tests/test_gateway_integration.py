"""The whole pipeline against real Mosquitto and InfluxDB, driven with the real
``mosquitto_pub`` and a ``python -m gateway`` process."""

from __future__ import annotations

import json
import signal
import time

import orjson
import pytest
import urllib3

from devstack.influxdb import query
from tests.conftest import TEST_DB
from tests.helpers import (
    Collector,
    count_points,
    mosquitto_pub,
    python_module,
    summary,
    unique,
    wait_for_points,
)

pytestmark = pytest.mark.integration

NORMAL = '{"temperature_c": 62.0, "humidity_pct": 44.0, "sound_db": 76.0}'
ANOMALOUS = '{"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}'


def test_contract_payload_is_stored_with_score(gateway, mosquitto, influxdb):
    device = unique("press")
    mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", NORMAL)
    wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 1)
    series = query(
        influxdb.url,
        f"SELECT temperature_c, humidity_pct, sound_db, score, is_anomaly, model_version, line "
        f"FROM reading WHERE device='{device}'",
        TEST_DB,
    )
    row = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
    assert (row["temperature_c"], row["humidity_pct"], row["sound_db"]) == (62.0, 44.0, 76.0)
    assert 0.0 <= row["score"] <= 1.0
    assert row["is_anomaly"] is False
    assert row["line"] == "line1" and row["model_version"]


def test_anomalous_reading_alerts_within_two_seconds(gateway, mosquitto, influxdb):
    device = unique("press")
    alerts = Collector(mosquitto.port, [f"factory/alerts/line1/{device}"])
    try:
        sent = time.monotonic()
        mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", ANOMALOUS)
        (alert,) = alerts.wait_for(lambda m: True, timeout_s=2.0)
        latency = time.monotonic() - sent
    finally:
        alerts.close()
    body = alert.json()
    assert latency < 2.0
    assert body["device"] == device and body["line"] == "line1"
    assert body["kind"] == "process_anomaly" and body["state"] == "firing"
    assert body["score"] >= body["threshold"]
    assert body["values"] == {"temperature_c": 95.0, "humidity_pct": 12.0, "sound_db": 104.0}
    assert body["model_version"] and body["ts"].endswith("Z")
    assert body["drivers"], "an alert says which features drove the score"
    wait_for_points(influxdb.url, TEST_DB, f"device='{device}' AND is_anomaly=true", 1)


def test_malformed_payloads_are_dead_lettered_and_flow_continues(gateway, mosquitto, influxdb):
    device = unique("press")
    topic = f"factory/line1/{device}/reading"
    bad = [
        (b"this is not json", "not_json"),
        (b'{"temperature_c": "hot", "humidity_pct": 40, "sound_db": 70}', "wrong_type"),
        (b'{"temperature_c": NaN, "humidity_pct": 40, "sound_db": 70}', "not_json"),
        (b'{"temperature_c": 70, "humidity_pct": 40}', "missing_field"),
        (b'{"temperature_c": 70, "humidity_pct": 400, "sound_db": 70}', "out_of_range"),
        (
            b'{"temperature_c": 70, "humidity_pct": 40, "sound_db": 70, "ts": "noon"}',
            "bad_timestamp",
        ),
        (b"[" * 5000, "not_json"),
        (b'{"pad": "' + b"x" * (1024 * 1024) + b'"}', "too_large"),
    ]
    dead = Collector(mosquitto.port, [f"factory/deadletter/line1/{device}"])
    try:
        for payload, _ in bad:
            mosquitto_pub(mosquitto.port, topic, payload)
        mosquitto_pub(mosquitto.port, topic, NORMAL)
        letters = dead.wait_for(lambda m: True, count=len(bad))
    finally:
        dead.close()
    reasons = [m.json()["reason"] for m in letters]
    assert reasons == [r for _, r in bad]
    wrong_type = letters[1].json()
    assert wrong_type["field"] == "temperature_c" and "number" in wrong_type["detail"]
    assert wrong_type["payload"].startswith('{"temperature_c": "hot"')
    assert letters[-1].json()["truncated"] is True
    assert wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 1) == 1

    metrics = urllib3.request("GET", f"http://127.0.0.1:{gateway.metrics_port}/metrics").data
    text = metrics.decode()
    assert 'gateway_messages_rejected_total{reason="not_json"}' in text
    not_json = [
        ln
        for ln in text.splitlines()
        if ln.startswith('gateway_messages_rejected_total{reason="not_json"}')
    ]
    assert float(not_json[0].split()[-1]) >= 3


def test_simulator_run_every_reading_stored(gateway, mosquitto, influxdb):
    prefix = unique("sim")
    result = python_module(
        "sensors.simulate",
        "--broker-port",
        str(mosquitto.port),
        "--lines",
        "2",
        "--devices",
        "5",
        "--count",
        "3000",
        "--speed",
        "0",
        "--seed",
        "3",
        "--faults",
        "all",
        "--device-prefix",
        prefix,
    )
    assert result.returncode == 0, result.stderr
    stats = summary(result.stdout)
    published = int(stats["published"])
    assert published == int(stats["queued"]) and stats["unacknowledged"] == "0"
    assert published >= 2500  # dropouts remove some of the 3000 steps
    where = f"device=~/^{prefix}/"
    assert wait_for_points(influxdb.url, TEST_DB, where, published, timeout_s=60) == published
    # and not more: every reading exactly once
    assert count_points(influxdb.url, TEST_DB, where) == published


def test_gateway_health_is_written_to_influx(gateway, influxdb):
    where = f"gateway='{gateway.id}'"
    from devstack.process import wait_until

    wait_until(
        lambda: bool(
            query(influxdb.url, f"SELECT last(received) FROM gateway WHERE {where}", TEST_DB)
        ),
        10,
        "gateway health point",
        interval_s=0.2,
    )
    row = query(
        influxdb.url, f"SELECT last(received), last(stored) FROM gateway WHERE {where}", TEST_DB
    )[0]["values"][0]
    assert row[1] >= 0 and row[2] >= 0


def test_sigterm_flushes_and_publishes_offline(start_gateway, mosquitto, influxdb):
    gw = start_gateway()
    device = unique("press")
    status = Collector(mosquitto.port, [f"factory/gateway/{gw.id}/status"])
    try:
        for i in range(20):
            mosquitto_pub(
                mosquitto.port,
                f"factory/line1/{device}/reading",
                json.dumps(
                    {"temperature_c": 60 + i * 0.1, "humidity_pct": 40, "sound_db": 75, "seq": i}
                ),
            )
        wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 20)
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.proc.wait(30) == 0
        status.wait_for(lambda m: m.payload == b"offline")
    finally:
        status.close()
    # A late subscriber sees the retained status.
    late = Collector(mosquitto.port, [f"factory/gateway/{gw.id}/status"])
    try:
        (msg,) = late.wait_for(lambda m: True)
        assert msg.payload == b"offline" and msg.retain
    finally:
        late.close()


def test_check_config_reports_model_and_masks_secrets(models_dir, tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[model]\npath = "{models_dir}"\n[mqtt]\npassword = "hunter2"\n')
    result = python_module("gateway", "--config", str(cfg), "--check-config")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["config"]["mqtt"]["password"] == "***"
    assert "hunter2" not in result.stdout + result.stderr
    assert report["model"]["features"] == ["temperature_c", "humidity_pct", "sound_db"]


def test_check_config_rejects_bad_config(tmp_path):
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[mqtt]\nprot = 1883\n")
    result = python_module("gateway", "--config", str(cfg), "--check-config")
    assert result.returncode == 2
    assert "unknown key" in result.stderr and "prot" in result.stderr
