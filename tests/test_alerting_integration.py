"""Alert lifecycle, retained state, silences and sensor faults through the live gateway."""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from datetime import datetime

import orjson
import pytest

from devstack.influxdb import query
from tests.conftest import TEST_DB
from tests.helpers import Collector, mosquitto_pub, python_module, summary, unique, wait_until

pytestmark = pytest.mark.integration

ANOMALOUS = '{"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}'
NORMAL = '{{"temperature_c": {t}, "humidity_pct": 45, "sound_db": 75}}'

FAULT_CONFIG = """
[alerts]
resolve_after = 2
[sensor_faults]
stuck_after = 10
deadman_s = 2
error_burst = 3
resolve_after = 2
"""


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def _label_of(labels: dict[float, str], ts: str) -> str:
    """The label of the reading stamped ``ts``: both sides cut to whole ms, so allow
    1 ms either way (a device's readings are 1 s apart)."""
    at = _epoch(ts)
    near = [t for t in labels if abs(t - at) <= 0.0015]
    assert len(near) == 1, f"no single labelled reading at {ts}: {near}"
    return labels[near[0]]


@pytest.fixture
def gw(start_gateway):
    return start_gateway(extra=FAULT_CONFIG)


def test_retained_state_shows_what_is_firing_now(gw, mosquitto):
    device = unique("press")
    t0 = time.time() - 600
    alerts = Collector(mosquitto.port, [f"factory/alerts/line1/{device}"])
    try:
        body = {**orjson.loads(ANOMALOUS), "ts": t0}
        mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", orjson.dumps(body))
        alerts.wait_for(lambda m: m.json()["state"] == "firing")
    finally:
        alerts.close()
    late = Collector(mosquitto.port, [f"factory/state/line1/{device}"])
    try:
        (state,) = late.wait_for(lambda m: True)
    finally:
        late.close()
    body = state.json()
    assert state.retain and body["firing"][0]["kind"] == "process_anomaly"

    alerts = Collector(mosquitto.port, [f"factory/alerts/line1/{device}"])
    try:
        # resolve_after = 2 readings below the exit threshold; 10 s apart so that the
        # cool-down is physically plausible (no impossible_jump sensor fault).
        for i, t in enumerate((60.0, 60.5, 61.0), start=1):
            body = {**orjson.loads(NORMAL.format(t=t)), "ts": t0 + 10 * i}
            mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", orjson.dumps(body))
        (resolved,) = alerts.wait_for(lambda m: m.json()["state"] == "resolved")
    finally:
        alerts.close()
    assert resolved.json()["kind"] == "process_anomaly"
    late = Collector(mosquitto.port, [f"factory/state/line1/{device}"])
    try:
        (state,) = late.wait_for(lambda m: True)
    finally:
        late.close()
    assert state.json()["firing"] == []


def test_silence_mutes_a_device_until_lifted(gw, mosquitto):
    quiet, loud = unique("quiet"), unique("loud")
    silence_topic = f"factory/silence/line1/{quiet}"
    until = time.time() + 3600
    mosquitto_pub(
        mosquitto.port,
        silence_topic,
        orjson.dumps({"until": until, "reason": "bearing swap"}).decode(),
        "-r",
    )
    alerts = Collector(mosquitto.port, ["factory/alerts/line1/#"])
    states = Collector(mosquitto.port, [f"factory/state/line1/{quiet}"])
    try:
        mosquitto_pub(mosquitto.port, f"factory/line1/{quiet}/reading", ANOMALOUS)
        (state,) = states.wait_for(lambda m: m.json()["firing"])
        assert state.json()["silenced_until"] is not None
        # Alerts leave the gateway in order: once the loud device's alert is here,
        # a (wrongly) published alert for the quiet one would be here too.
        mosquitto_pub(mosquitto.port, f"factory/line1/{loud}/reading", ANOMALOUS)
        alerts.wait_for(lambda m: m.topic.endswith(loud))
        assert not alerts.matching(lambda m: m.topic.endswith(quiet))
        assert gw.metric("gateway_alerts_silenced_total") >= 1
    finally:
        alerts.close()
        states.close()
        mosquitto_pub(mosquitto.port, silence_topic, "", "-r")  # lift it


def test_sensor_faults_are_told_apart_from_machine_anomalies(gw, mosquitto, influxdb):
    device = unique("sensor")
    topic = f"factory/line1/{device}/reading"
    faults = Collector(mosquitto.port, [f"factory/alerts/line1/{device}"])
    try:
        mosquitto_pub(mosquitto.port, topic, NORMAL.format(t=60.0))
        mosquitto_pub(mosquitto.port, topic, NORMAL.format(t=99.0))  # +39 °C in ~0.1 s
        faults.wait_for(lambda m: m.json().get("fault") == "impossible_jump")
        mosquitto_pub(
            mosquitto.port, topic, '{"temperature_c": 60, "humidity_pct": 140, "sound_db": 75}'
        )
        faults.wait_for(lambda m: m.json().get("fault") == "out_of_range")
        for _ in range(3):
            mosquitto_pub(mosquitto.port, topic, "garbage")
        faults.wait_for(lambda m: m.json().get("fault") == "decode_errors")
        for _ in range(10):
            mosquitto_pub(mosquitto.port, topic, NORMAL.format(t=61.0))
        faults.wait_for(lambda m: m.json().get("fault") == "stuck")
        # No message at all for deadman_s: the deadman fires by itself.
        faults.wait_for(lambda m: m.json().get("fault") == "dropout", timeout_s=15)
        mosquitto_pub(mosquitto.port, topic, NORMAL.format(t=61.5))
        faults.wait_for(
            lambda m: m.json().get("fault") == "dropout" and m.json()["state"] == "resolved"
        )
    finally:
        faults.close()
    kinds = {m.json()["kind"] for m in faults.messages if m.json().get("fault")}
    assert kinds == {"sensor_fault"}
    fired = {
        m.json()["fault"]
        for m in faults.messages
        if m.json()["state"] == "firing" and m.json()["kind"] == "sensor_fault"
    }
    assert fired == {"impossible_jump", "out_of_range", "decode_errors", "stuck", "dropout"}
    series = query(
        influxdb.url,
        f"SELECT count(active) FROM sensor_fault WHERE device='{device}' GROUP BY kind",
        TEST_DB,
    )
    assert {s["tags"]["kind"] for s in series} >= fired - {"dropout"}


def test_simulator_stuck_faults_are_detected(gw, mosquitto, tmp_path):
    prefix = unique("stk")
    labels = tmp_path / "labels.csv"
    alerts = Collector(mosquitto.port, ["factory/alerts/#"])
    try:
        result = python_module(
            "sensors.simulate",
            "--broker-port",
            str(mosquitto.port),
            "--lines",
            "1",
            "--devices",
            "4",
            "--count",
            "4000",
            "--speed",
            "0",
            "--seed",
            "11",
            "--faults",
            "stuck",
            "--fault-rate",
            "30",
            "--device-prefix",
            prefix,
            "--labels-out",
            str(labels),
        )
        assert result.returncode == 0, result.stderr
        published = int(summary(result.stdout)["published"])
        # Devices with a stuck episode at least stuck_after readings long:
        runs: dict[str, int] = defaultdict(int)
        longest: dict[str, int] = defaultdict(int)
        label_at: dict[str, dict[float, str]] = defaultdict(dict)  # device -> ts -> fault
        with open(labels) as fh:
            for row in csv.DictReader(fh):
                dev = row["device"]
                runs[dev] = runs[dev] + 1 if row["fault"] == "stuck" else 0
                longest[dev] = max(longest[dev], runs[dev])
                label_at[dev][_epoch(row["ts"])] = row["fault"]
        expected = {d for d, n in longest.items() if n >= 12}
        assert expected, "the seed should inject stuck episodes"
        stuck = lambda m: m.json().get("fault") == "stuck" and prefix in m.topic  # noqa: E731
        alerts.wait_for(
            lambda m: stuck(m) and m.json()["state"] == "firing", count=len(expected), timeout_s=30
        )
        flagged = {m.json()["device"] for m in alerts.matching(stuck)}
    finally:
        alerts.close()
    assert expected <= flagged
    # With this seed every device has stuck episodes, so a per-device check could not
    # fail: check per alert that the reading it fired on (its ts) is labelled stuck.
    fired_on = [
        _label_of(label_at[m.json()["device"]], m.json()["ts"])
        for m in alerts.matching(stuck)
        if m.json()["state"] == "firing"
    ]
    assert fired_on and set(fired_on) == {"stuck"}, fired_on
    print(
        f"stuck: {published} readings, devices with stuck episodes {sorted(expected)}, "
        f"flagged {sorted(flagged)}"
    )


def test_an_acknowledged_alert_keeps_its_id_and_the_history_is_in_influxdb(gw, mosquitto, influxdb):
    """Fire, acknowledge over MQTT (as the API and operators do), resolve: one id
    throughout, the retained state names who acknowledged, InfluxDB has every step."""
    device = unique("press")
    t0 = time.time() - 600
    alerts = Collector(mosquitto.port, [f"factory/alerts/line1/{device}"])
    states = Collector(mosquitto.port, [f"factory/state/line1/{device}"])
    try:
        body = {**orjson.loads(ANOMALOUS), "ts": t0}
        mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", orjson.dumps(body))
        (fired,) = alerts.wait_for(lambda m: m.json()["event"] == "firing")
        alert_id = fired.json()["alert_id"]
        ack = {"alert_id": alert_id, "by": "night shift", "note": "checking the cooler"}
        mosquitto_pub(mosquitto.port, f"factory/ack/line1/{device}", orjson.dumps(ack))
        (acked,) = alerts.wait_for(lambda m: m.json()["event"] == "acknowledged")
        assert acked.json()["alert_id"] == alert_id and acked.json()["state"] == "firing"
        assert acked.json()["acknowledged_by"] == "night shift"
        states.wait_for(lambda m: any("acknowledged_by" in f for f in m.json()["firing"]))
        late = Collector(mosquitto.port, [f"factory/state/line1/{device}"])
        try:
            (retained,) = late.wait_for(lambda m: True)
        finally:
            late.close()
        (entry,) = retained.json()["firing"]
        assert retained.retain and entry["alert_id"] == alert_id
        assert entry["acknowledged_at"] == acked.json()["acknowledged_at"]
        for i, t in enumerate((60.0, 60.5, 61.0), start=1):
            body = {**orjson.loads(NORMAL.format(t=t)), "ts": t0 + 10 * i}
            mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", orjson.dumps(body))
        (resolved,) = alerts.wait_for(lambda m: m.json()["event"] == "resolved")
        assert resolved.json()["alert_id"] == alert_id
    finally:
        alerts.close()
        states.close()

    def events() -> list[list]:
        series = query(
            influxdb.url,
            f'SELECT "event", "alert_id", "by" FROM alert_event WHERE device = \'{device}\'',
            TEST_DB,
        )
        return series[0]["values"] if series else []

    wait_until(lambda: len(events()) >= 3, 15, "three alert_event points")
    # Each at its own time: the readings' (10 min ago), the acknowledgement's (now).
    by_event = {row[1]: row for row in events()}
    assert sorted(by_event) == ["acknowledged", "firing", "resolved"]
    assert {row[2] for row in events()} == {alert_id}
    assert by_event["acknowledged"][3] == "night shift"


def test_a_firing_alert_survives_a_gateway_restart_under_its_id(gw, mosquitto):
    """The restarted gateway takes the alert over from the retained device state: still
    acknowledged, and it resolves under its first id instead of firing anew."""
    device = unique("press")
    t0 = time.time() - 600
    alerts = Collector(mosquitto.port, [f"factory/alerts/line1/{device}"])
    try:
        body = {**orjson.loads(ANOMALOUS), "ts": t0}
        mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", orjson.dumps(body))
        (fired,) = alerts.wait_for(lambda m: m.json()["event"] == "firing")
        alert_id = fired.json()["alert_id"]
        ack = {"alert_id": alert_id, "by": "night shift"}
        mosquitto_pub(mosquitto.port, f"factory/ack/line1/{device}", orjson.dumps(ack))
        alerts.wait_for(lambda m: m.json()["event"] == "acknowledged")

        gw.restart()
        wait_until(lambda: gw.metric("gateway_alerts_restored_total") >= 1, 15, "restored")
        for i, t in enumerate((60.0, 60.5, 61.0), start=1):
            body = {**orjson.loads(NORMAL.format(t=t)), "ts": t0 + 10 * i}
            mosquitto_pub(mosquitto.port, f"factory/line1/{device}/reading", orjson.dumps(body))
        (resolved,) = alerts.wait_for(lambda m: m.json()["event"] == "resolved")
        assert resolved.json()["alert_id"] == alert_id
        assert [m.json()["event"] for m in alerts.messages] == [
            "firing",
            "acknowledged",
            "resolved",
        ]
    finally:
        alerts.close()
