"""Gateway pieces that need no services: config, line protocol, alert decisions."""

from __future__ import annotations

import pytest

from common.config import ConfigError, load_config, redacted
from gateway.alerts import FIRING, RESOLVED, AlertTracker
from gateway.config import AlertConfig, GatewayConfig, load_gateway_config
from gateway.lineprotocol import encode_point
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


def test_alert_fires_after_n_and_resolves_after_m():
    tracker = AlertTracker(AlertConfig(fire_after=2, resolve_after=3, renotify_s=0))
    seq = [True, False, True, True, True, False, False, True, False, False, False]
    out = [tracker.update("l", "d", a, i) for i, a in enumerate(seq)]
    assert out == [None, None, None, FIRING, None, None, None, None, None, None, RESOLVED]
    assert tracker.firing() == []


def test_alert_renotifies_while_firing():
    tracker = AlertTracker(AlertConfig(fire_after=1, resolve_after=1, renotify_s=10))
    s = 1_000_000_000
    assert tracker.update("l", "d", True, 0) == FIRING
    assert tracker.update("l", "d", True, 5 * s) is None
    assert tracker.update("l", "d", True, 10 * s) == FIRING
    assert tracker.firing() == [("l", "d")]


def test_alert_state_is_per_device():
    tracker = AlertTracker(AlertConfig(fire_after=1, resolve_after=1))
    assert tracker.update("l", "a", True, 0) == FIRING
    assert tracker.update("l", "b", False, 0) is None
    assert tracker.update("l", "a", False, 1) == RESOLVED
