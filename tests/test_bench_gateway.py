"""The gateway benchmark runs end to end on a tiny load (structure and zero loss, never speed).

Speed is what ``python -m bench.bench_gateway`` prints; this only proves the harness
itself works: its own Mosquitto/InfluxDB, the real gateway, every scenario, the JSON,
with the old default model (isolation_forest) and, side by side, the time-aware one.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import pytest

from bench.bench_gateway import dump_toml, model_state, parse_models, probe_values
from bench.profile import summarise_profile
from tests.helpers import python_module, train_model

pytestmark = pytest.mark.integration

TINY = [
    "--duration", "3", "--rate", "200",
    "--latency-duration", "3", "--latency-rate", "200", "--probe-rate", "10",
    "--backlog", "2000",
    "--naive-duration", "2", "--naive-rate", "100",
    "--devices", "20", "--lines", "2", "--processes", "2",
    "--decode-messages", "500",
]  # fmt: skip


def test_benchmark_runs_end_to_end_without_loss(tmp_path, models_dir):
    out = tmp_path / "result.json"
    run = python_module(
        "bench.bench_gateway",
        *TINY,
        "--model",
        str(models_dir / "current"),
        "--output",
        str(out),
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    sc = result["scenarios"]
    assert set(sc) == {"throughput", "latency", "backlog", "naive", "decode"}

    for name in ("throughput", "latency", "backlog"):
        s = sc[name]
        assert s["published"] > 0, name
        assert s["stored"] == s["published"], name
        assert s["loss"] == 0, name
        assert s["resources"]["gateway"]["max_rss_mb"] > 0, name
        assert s["resources"]["mosquitto"]["max_rss_mb"] > 0, name
    # ~200/s for 3 s, every publish acknowledged by the broker.
    tp = sc["throughput"]
    assert tp["load"]["attempted"] == tp["load"]["acked"] == tp["published"]
    assert tp["sustained_rate"] > 0
    assert sc["backlog"]["published"] == 2000
    assert sc["backlog"]["drain_rate"] > 0

    probe = sc["latency"]["latency"]
    assert probe["sent"] == 30
    assert probe["missing"] == 0 and probe["wrong_state"] == 0
    assert probe["all"]["n"] == 30
    # Probe readings alternate anomalous / normal per device: each fires or resolves.
    assert probe["firing"]["n"] + probe["resolved"]["n"] == 30
    assert probe["firing"]["n"] >= probe["resolved"]["n"] > 0
    assert 0 < probe["all"]["p50_ms"] <= probe["all"]["p99_ms"] <= probe["all"]["max_ms"]

    naive = sc["naive"]
    assert naive["published"] > 0 and naive["stored_in_window"] > 0
    assert naive["resources"]["naive"]["max_rss_mb"] > 0
    assert result["naive_ratio"] > 0

    decode = sc["decode"]["us_per_message"]
    assert set(decode) >= {"json.loads", "orjson.loads", "msgspec.json.decode"}
    assert all(us > 0 for us in decode.values())

    assert result["gateway_config"]["alerts"]["resolve_after"] == 1
    assert "naive per-message" in run.stdout and "throughput @200/s" in run.stdout


@pytest.fixture(scope="module")
def dynamics_model(tmp_path_factory, sim_csv) -> Path:
    models = tmp_path_factory.mktemp("dynamics-models")
    train_model(sim_csv, models, "--detector", "dynamics")
    return models / "current"


def test_compare_models_runs_each_model_with_alerting_probes(tmp_path, models_dir):
    out = tmp_path / "result.json"
    run = python_module(
        "bench.bench_gateway",
        *TINY,
        "--only",
        "throughput,latency",
        "--compare-models",
        f"old={models_dir / 'current'},new=dynamics",
        "--models-dir",
        str(tmp_path / "models"),
        "--output",
        str(out),
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["runs"]) == ["old", "new"]
    old, new = result["runs"]["old"], result["runs"]["new"]
    assert old["model"]["detector"] == "isolation_forest"
    assert new["model"]["detector"] == "dynamics"
    assert (tmp_path / "models" / "dynamics" / "current").exists()
    for r in (old, new):
        assert set(r["scenarios"]) == {"throughput", "latency"}
        for s in r["scenarios"].values():
            assert s["published"] > 0 and s["loss"] == 0
        probe = r["scenarios"]["latency"]["latency"]
        # Every probe reading of the stateful model fires or resolves too.
        assert probe["all"]["n"] == probe["sent"] == 30
        assert probe["missing"] == 0 and probe["wrong_state"] == 0
    assert old["model"]["state"]["bytes_per_device"] == 0
    state = new["model"]["state"]
    assert state["inputs"] == "BankInputs" and state["devices"] == 20
    assert state["bank_devices"] == 20 and state["bytes_per_device"] > 0
    assert 0 < state["bound_mb"] < 1000
    assert "models side by side" in run.stdout and "model state B/device" in run.stdout


def test_probe_check_replays_the_probe_sequence_through_device_state(dynamics_model):
    normal, info = probe_values(dynamics_model, {"exit_ratio": 0.8}, readings=150, rate=10.0)
    assert set(normal) == {"temperature_c", "humidity_pct", "sound_db"}
    check = info["probe_check"]
    # Past the device's warm-up (60 readings): its history statistics are live.
    assert check["readings_per_device"] == 150
    assert check["anomalous_min"] >= check["enter"] > check["exit"] > check["normal_max"]
    with pytest.raises(SystemExit, match="does not separate the probe readings"):
        probe_values(dynamics_model, {"exit_ratio": 0.0}, readings=150, rate=10.0)


def test_model_state_is_bounded_per_device(dynamics_model):
    normal, _ = probe_values(dynamics_model, {}, readings=2)
    state = model_state(dynamics_model, devices=50, lines=5, normal=normal)
    assert state["bank_devices"] == 50
    assert state["bank_array_bytes"] >= 50 * state["bank_bytes_per_slot"]
    assert state["bound_mb"] == pytest.approx(
        state["max_devices"] * state["bank_bytes_per_slot"] / 1e6, rel=0.2
    )


def test_parse_models():
    assert parse_models("old=a/current, new=dynamics") == [
        ("old", "a/current"),
        ("new", "dynamics"),
    ]
    assert parse_models("isolation_forest,dynamics") == [
        ("isolation_forest", "isolation_forest"),
        ("dynamics", "dynamics"),
    ]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_models("a=x,a=y")


def test_profile_summary_separates_waiting_from_busy_samples(tmp_path):
    src = tmp_path / "work.py"
    src.write_text("def busy():\n    total = sum(range(10))\n    done.wait()\n")
    raw = "\n".join(
        [
            f"thread (1): scorer;run ({src}:1);busy ({src}:2) 30",
            f"thread (1): scorer;run ({src}:1);busy ({src}:3) 50",
            f"thread (2): writer;run ({src}:1);busy ({src}:2) 10",
        ]
    )
    summary = summarise_profile(raw)
    assert summary["busy_samples"] == 40
    assert summary["waiting_samples"] == 50
    assert summary["threads_pct"] == [["scorer", 75.0], ["writer", 25.0]]
    assert summary["self_pct"][0][1] == 100.0


def test_generated_gateway_config_is_valid_toml():
    cfg = {
        "id": "bench-gw",
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "sensor_faults": {"max_rate": {"temperature_c": 5.0}, "enabled": True},
        "decode": {"extra_fields": [{"name": "vibration", "aliases": ["vib"]}]},
    }
    assert tomllib.loads(dump_toml(cfg)) == cfg
