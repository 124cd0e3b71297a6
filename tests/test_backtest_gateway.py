"""The backtest decides exactly as the running gateway does.

A labelled simulator run is published to the real broker at full speed and scored by
a real gateway (real InfluxDB); the same file goes through ``python -m backtest``'s
replay.  Every stored score must equal the backtest's, float for float, and every
alert the gateway published must be one the backtest raised, and no other.  The
deadman is off in both: it runs on the wall clock in the gateway and on the readings'
clock offline, and a replay at full speed has no wall-clock gaps to see.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from backtest.load import read_recording
from backtest.replay import replay
from contract.timestamps import CSV_DEFAULT, parse_csv_ns
from devstack.process import wait_until
from gateway.config import load_gateway_config
from model.scorer import load_scorer
from tests.conftest import TEST_DB
from tests.helpers import (
    Collector,
    python_module,
    simulate_csv,
    train_model,
    unique,
    wait_for_points,
)

NO_DEADMAN = """
[sensor_faults]
deadman_s = 0.0
"""


@pytest.fixture(scope="module")
def small_dynamics_model(tmp_path_factory) -> Path:
    data = simulate_csv(
        tmp_path_factory.mktemp("bt-train") / "train.csv",
        lines=1, devices=3, duration_s=1800, seed=31,
    )  # fmt: skip
    models = tmp_path_factory.mktemp("bt-models")
    train_model(
        data, models, "--detector", "dynamics",
        "--param", "fit_after=300", "--param", "warmup=30", "--param", "refit_every=120",
    )  # fmt: skip
    return models


def _stored_scores(url: str, prefix: str) -> dict[tuple[str, int], float]:
    q = (
        f"SELECT score FROM reading WHERE device =~ /^{prefix}/ "
        f"GROUP BY device"  # one series per device
    )
    body = urllib.request.urlopen(
        f"{url}/query?" + urllib.parse.urlencode({"db": TEST_DB, "q": q, "epoch": "u"}),
        timeout=30,
    ).read()
    out = {}
    for series in json.loads(body)["results"][0].get("series", []):
        device = series["tags"]["device"]
        # Microseconds are exact in JSON numbers; rounded to the millisecond below.
        for ts, score in series["values"]:
            out[(device, round(ts / 1000) * 1_000_000)] = score
    return out


def test_gateway_and_backtest_make_identical_decisions(
    tmp_path, mosquitto, influxdb, start_gateway, small_dynamics_model
) -> None:
    prefix = unique("bt")
    data = simulate_csv(
        tmp_path / "eval.csv", lines=1, devices=2, duration_s=900, seed=32,
        extra=("--fault-rate", "20", "--device-prefix", prefix),
    )  # fmt: skip
    gw = start_gateway(models=small_dynamics_model, extra=NO_DEADMAN)

    scorer = load_scorer(small_dynamics_model / "current")
    rec = read_recording(data, scorer.raw_fields, time_rules=CSV_DEFAULT)
    cfg = load_gateway_config(gw.config)
    offline = replay(rec, scorer, cfg.alerts, cfg.sensor_faults)
    assert offline.alerts, "the run has faults: the backtest must raise alerts"

    alerts = Collector(mosquitto.port, ["factory/alerts/#"])
    try:
        sent = python_module(
            "sensors.replay", "--csv", str(data), "--speed", "0", "--keep-timestamps",
            "--broker-port", str(mosquitto.port),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        wait_for_points(influxdb.url, TEST_DB, f"device =~ /^{prefix}/", len(rec), timeout_s=120)
        expected = {
            (a.device.split("/", 1)[1], a.ts_ns, a.kind, a.detail)
            for a in offline.alerts + offline.reminders
        }

        def published() -> set[tuple[str, int, str, str]]:
            out = set()
            for m in alerts.matching(lambda m: m.json().get("device", "").startswith(prefix)):
                body = m.json()
                if body["state"] != "firing":
                    continue
                ts = parse_csv_ns(body["ts"])
                if body["kind"] == "sensor_fault":
                    out.add((body["device"], ts, "sensor_fault", body["fault"]))
                else:
                    driver = body["drivers"][0]["feature"] if body["drivers"] else ""
                    out.add((body["device"], ts, "process_anomaly", driver))
            return out

        wait_until(lambda: published() >= expected, 60, "the backtest's alerts on MQTT")
    finally:
        alerts.close()
    assert published() == expected

    stored = _stored_scores(influxdb.url, prefix)
    keys = [str(d) for d in rec.devices]
    # Keyed to the millisecond (the simulator's resolution): the replayed ts is sent
    # as epoch seconds, whose float may land a nanosecond below the millisecond.
    offline_scores = {
        (d, round(int(t) / 1e6) * 1_000_000): s
        for d, t, s in zip(keys, rec.ts_ns, offline.scores, strict=True)
    }
    assert stored.keys() == offline_scores.keys()
    diff = [k for k in stored if not np.isclose(stored[k], offline_scores[k], rtol=0, atol=0)]
    assert diff == [], diff[:5]
