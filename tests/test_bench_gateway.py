"""The gateway benchmark runs end to end on a tiny load (structure and zero loss, never speed).

Speed is what ``python -m bench.bench_gateway`` prints; this only proves the harness
itself works: its own Mosquitto/InfluxDB, the real gateway, every scenario, the JSON.
"""

from __future__ import annotations

import json
import tomllib

import pytest

from bench.bench_gateway import dump_toml
from bench.profile import summarise_profile
from tests.helpers import python_module

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
