"""Gateway pieces that need no services: config, line protocol, alert decisions."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import ConfigError, load_config, redacted
from contract import Reading, Rejected
from contract.lineprotocol import encode_point
from gateway.alerts import FIRING, PENDING, RESOLVED, AlertTracker
from gateway.cluster.broker_version import FIXED_IN, mosquitto_version, stall_warning
from gateway.config import (
    AlertConfig,
    AlertRule,
    GatewayConfig,
    SensorFaultConfig,
    load_gateway_config,
)
from gateway.sensor_faults import SensorFaults
from gateway.silence import Silences
from tests.helpers import ROOT


def test_default_config_file_loads():
    cfg = load_gateway_config(ROOT / "config" / "gateway.toml")
    assert cfg.mqtt.port == 1883
    assert cfg.influx.url == "http://localhost:8086"


def test_env_overrides_every_connection_setting(tmp_path):
    env = {
        "GATEWAY_MQTT_HOST": "broker.plant",
        "GATEWAY_MQTT_PORT": "8883",
        "GATEWAY_MQTT_TLS": "true",
        "GATEWAY_MQTT_PASSWORD": "s3cret",
        "GATEWAY_INFLUX_API": "2",
        "GATEWAY_INFLUX_URL": "https://influx.cloud",
        "GATEWAY_INFLUX_TOKEN": "tok",
        "GATEWAY_ID": "gw-7",
    }
    cfg = load_config(GatewayConfig, None, "GATEWAY", env)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("broker.plant", 8883, True)
    assert (cfg.influx.api, cfg.influx.url, cfg.id) == (2, "https://influx.cloud", "gw-7")
    shown = redacted(cfg)
    assert shown["mqtt"]["password"] == "***" and shown["influx"]["token"] == "***"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt]\nhots = 'x'\n", "unknown key"),
        ("[mqtt]\nport = 'abc'\n", "mqtt.port"),
        ("[mqtt]\nport = 70000\n", "port 70000"),
        ("[influx]\napi = 3\n", "influx.api"),
        ("[alerts]\nfire_after = 0\n", "fire_after"),
        ("[mqtt\n", "gateway.toml"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(path)


def test_line_protocol_escaping():
    line = encode_point(
        "reading",
        {"line": "line 1", "device": "a,b=c", "model_version": ""},
        {"temperature_c": 71.5, "is_anomaly": True, "seq": 3, "note": 'say "hi"'},
        1_700_000_000_000_000_000,
    )
    assert line == (
        "reading,device=a\\,b\\=c,line=line\\ 1 "
        'temperature_c=71.5,is_anomaly=true,seq=3i,note="say \\"hi\\"" 1700000000000000000'
    )


S = 1_000_000_000  # one second in ns


def feed(tracker, scores, threshold=0.5, step_s=1.0):
    return [
        tracker.update("l", "d", "process_anomaly", sc, threshold, int(i * step_s * S))
        for i, sc in enumerate(scores)
    ]


def test_alert_fires_after_n_and_resolves_after_m():
    tracker = AlertTracker(AlertConfig(fire_after=2, resolve_after=3, renotify_s=0))
    out = feed(tracker, [0.9, 0.1, 0.9, 0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1])
    assert out == [None, None, None, FIRING, None, None, None, None, None, None, RESOLVED]
    assert tracker.firing() == []


def test_pending_before_firing_and_min_duration():
    tracker = AlertTracker(AlertConfig(fire_after=1, min_duration_s=3, resolve_after=1))
    out = feed(tracker, [0.9, 0.9, 0.9])
    assert out == [None, None, None]
    assert tracker.state("l", "d", "process_anomaly") == PENDING
    assert feed(tracker, [0.9, 0.9, 0.9, 0.9])[3] == FIRING  # 3 s after the first


def test_hysteresis_holds_between_exit_and_enter():
    # enter 0.5, exit 0.5 x 0.8 = 0.4: scores between keep the alert firing
    tracker = AlertTracker(AlertConfig(exit_ratio=0.8, resolve_after=2, renotify_s=0))
    out = feed(tracker, [0.6, 0.45, 0.42, 0.45, 0.41, 0.3, 0.3])
    assert out == [FIRING, None, None, None, None, None, RESOLVED]


def test_enter_score_overrides_model_threshold():
    tracker = AlertTracker(AlertConfig(enter_score=0.95, resolve_after=1))
    assert feed(tracker, [0.9, 0.96]) == [None, FIRING]


def test_alert_renotifies_while_firing():
    tracker = AlertTracker(AlertConfig(fire_after=1, resolve_after=1, renotify_s=10))
    out = [tracker.update("l", "d", "k", 0.9, 0.5, t * S) for t in (0, 5, 10)]
    assert out == [FIRING, None, FIRING]
    assert tracker.firing() == [("l", "d", "k")]


def test_alert_state_is_per_device_and_kind():
    tracker = AlertTracker(AlertConfig(fire_after=1, resolve_after=1))
    assert tracker.update("l", "a", "k", 0.9, 0.5, 0) == FIRING
    assert tracker.update("l", "b", "k", 0.1, 0.5, 0) is None
    assert tracker.update("l", "a", "other", 0.9, 0.5, 0) == FIRING
    assert tracker.update("l", "a", "k", 0.1, 0.5, 1) == RESOLVED


def test_rules_per_line_and_device_class():
    cfg = AlertConfig(
        fire_after=1,
        rules=(
            AlertRule(line="line2", device="mill-*", fire_after=3),
            AlertRule(line="line2", resolve_after=9),
        ),
    )
    book = AlertTracker(cfg).rules
    assert book.for_device("line1", "mill-1").fire_after == 1
    assert book.for_device("line2", "mill-1").fire_after == 3
    assert book.for_device("line2", "mill-1").resolve_after == cfg.resolve_after
    assert book.for_device("line2", "press-1").resolve_after == 9


def test_rules_load_from_toml(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[alerts]\nfire_after = 2\n[[alerts.rules]]\nline = "line9"\nfire_after = 5\n')
    cfg = load_gateway_config(path)
    assert cfg.alerts.rules[0].fire_after == 5 and cfg.alerts.rules[0].resolve_after is None


def reading(values, t_s, device="d"):
    return Reading("l", device, int(t_s * S), dict(values), None, int(t_s * S))


def faults_seen(transitions):
    return [(tr.fault, tr.state) for tr in transitions]


def test_stuck_sensor_fires_and_resolves():
    faults = SensorFaults(SensorFaultConfig(stuck_after=4, resolve_after=2))
    seen = []
    for t in range(6):
        seen += faults.on_reading(reading({"temperature_c": 50.0, "sound_db": 60 + t}, t), t)
    assert faults_seen(seen) == [("stuck", FIRING)]
    seen = []
    for t in range(6, 8):
        seen += faults.on_reading(reading({"temperature_c": 49.0 + t / 4, "sound_db": 60.0}, t), t)
    assert faults_seen(seen) == [("stuck", RESOLVED)]


def test_impossible_jump():
    faults = SensorFaults(SensorFaultConfig(max_rate={"temperature_c": 5.0}))
    faults.on_reading(reading({"temperature_c": 50.0}, 0), 0)
    assert faults_seen(faults.on_reading(reading({"temperature_c": 53.0}, 1), 1)) == []
    tr = faults.on_reading(reading({"temperature_c": 90.0}, 2), 2)
    assert faults_seen(tr) == [("impossible_jump", FIRING)]
    assert "temperature_c changed 37.0/s" in tr[0].detail


def test_deadman_fires_without_a_message_and_resolves_on_the_next():
    faults = SensorFaults(SensorFaultConfig(deadman_s=30))
    faults.on_reading(reading({"temperature_c": 50.0}, 0), now=100.0)
    assert faults.check_deadman(now=120.0, now_ns=0) == []
    assert faults_seen(faults.check_deadman(now=131.0, now_ns=0)) == [("dropout", FIRING)]
    assert faults.check_deadman(now=140.0, now_ns=0) == []  # fires once
    back = faults.on_reading(reading({"temperature_c": 50.5}, 41), now=141.0)
    assert faults_seen(back) == [("dropout", RESOLVED)]


def test_out_of_range_and_decode_error_burst():
    faults = SensorFaults(SensorFaultConfig(error_burst=3, error_window_s=60, resolve_after=1))
    first = faults.on_rejected("l", "d", "out_of_range", "humidity_pct=140", 0, now=0)
    assert faults_seen(first) == [("out_of_range", FIRING)]
    faults.on_rejected("l", "d", "not_json", "x", 0, now=1)
    burst = faults.on_rejected("l", "d", "not_json", "x", 0, now=2)
    assert faults_seen(burst) == [("decode_errors", FIRING)]
    assert faults_seen(faults.on_rejected("l", "e", "not_json", "x", 0, now=100)) == []
    healed = faults.on_reading(reading({"temperature_c": 50.0}, 3), 3)
    assert sorted(faults_seen(healed)) == [("decode_errors", RESOLVED), ("out_of_range", RESOLVED)]


def test_silences_by_device_and_line():
    silences = Silences()
    now = time.time_ns()
    until = now / 1e9 + 3600
    silences.apply("factory/silence/line1/press-01", orjson.dumps({"until": until}))
    assert silences.active("line1", "press-01", now) is not None
    assert silences.active("line1", "press-02", now) is None
    silences.apply("factory/silence/line1/_all", orjson.dumps({"until": until, "reason": "x"}))
    assert silences.active("line1", "press-02", now).reason == "x"
    assert silences.active("line1", "press-02", int(now + 7200 * 1e9)) is None  # expired
    silences.apply("factory/silence/line1/_all", b"")
    assert silences.active("line1", "press-02", now) is None
    with pytest.raises(Rejected, match="until"):
        silences.apply("factory/silence/line1/x", b'{"reason": "no end"}')


@settings(max_examples=200, deadline=None)
@given(
    values=st.dictionaries(
        st.sampled_from(["temperature_c", "humidity pct", "a,b=c", "sound_db"]),
        st.floats(allow_nan=False, allow_infinity=False),
        max_size=4,
    ),
    score=st.one_of(st.none(), st.floats(0, 1)),
    seq=st.one_of(st.none(), st.integers(0, 2**40)),
    gateway=st.one_of(st.none(), st.text(max_size=8)),
)
def test_the_scorers_pre_formatted_reading_line_matches_the_generic_encoder(
    values, score, seq, gateway
):
    from contract.lineprotocol import ReadingEncoder, format_field

    fields: dict = dict(values)
    tail = ""
    if score is None:
        fields["warming_up"] = True
        tail += ",warming_up=true"
    else:
        fields["score"], fields["is_anomaly"] = score, score >= 0.5
        tail += f",score={score!r},is_anomaly={'true' if score >= 0.5 else 'false'}"
    if seq is not None:
        fields["seq"] = seq
        tail += f",seq={seq}i"
    if gateway is not None:
        fields["gateway"] = gateway
        tail += f",gateway={format_field(gateway)}"
    tags = {"line": "line 1", "device": "d=1", "model_version": "v1"}
    line = ReadingEncoder().encode_reading("line 1", "d=1", "v1", values, tail, 42)
    assert line == encode_point("reading", tags, fields, 42)


def test_reading_encoder_matches_the_generic_encoder():
    from contract.lineprotocol import ReadingEncoder

    enc = ReadingEncoder(max_cached=2)
    fields = {"temperature_c": 71.5, "score": 0.25, "is_anomaly": False, "seq": 7}
    for line, device in [("line 1", "a,b=c"), ("l2", "d"), ("l3", "e"), ("line 1", "a,b=c")]:
        tags = {"line": line, "device": device, "model_version": "v1"}
        assert enc.encode(line, device, "v1", fields, 123) == encode_point(
            "reading", tags, fields, 123
        )


# --- cluster: the broker version check ---------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "version", "warns"),
    [
        (b"mosquitto version 2.0.11", (2, 0, 11), True),
        (b"mosquitto version 2.0.12\n", (2, 0, 12), True),
        (b"mosquitto version 1.6.9", (1, 6, 9), True),
        (b"mosquitto version 2.0.13", (2, 0, 13), False),
        (b"mosquitto version 2.0.21", (2, 0, 21), False),
        (b"mosquitto version 2.1.0", (2, 1, 0), False),
        (b"VerneMQ 2.0", None, False),
        (b"", None, False),
        (b"\xff\xfe", None, False),
    ],
)
def test_broker_version_warning(payload, version, warns):
    assert mosquitto_version(payload) == version
    warning = stall_warning(payload)
    assert (warning is not None) == warns
    if warns:
        shown = ".".join(map(str, version))
        assert f"Mosquitto {shown}" in warning and ".".join(map(str, FIXED_IN)) in warning
