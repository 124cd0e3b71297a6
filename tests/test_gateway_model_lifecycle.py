"""The gateway side of the model lifecycle: stream features, drift alerts, shadow mode."""

from __future__ import annotations

import csv
import random
import shutil
import time

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devstack.influxdb import query
from devstack.process import wait_until
from tests.conftest import TEST_DB
from tests.helpers import Collector, train_model, unique, wait_for_points

pytestmark = pytest.mark.integration

FIELDS = ("temperature_c", "humidity_pct", "sound_db")


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=unique("pub"),
        protocol=mqtt.MQTTv5,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def normal_rows(sim_csv, n: int, seed: int) -> list[dict[str, float]]:
    with open(sim_csv) as fh:
        rows = [
            {f: float(r[f]) for f in FIELDS} for r in csv.DictReader(fh) if r["is_anomaly"] == "0"
        ]
    return random.Random(seed).sample(rows, n)


def test_recalibrated_sensor_raises_a_model_drift_alert(start_gateway, mosquitto, sim_csv):
    gw = start_gateway(
        extra="[drift]\nwindow = 500\ncheck_interval_s = 0.2\n[sensor_faults]\nenabled = false\n"
    )
    drift = Collector(mosquitto.port, [f"factory/alerts/_gateway/{gw.id}"])
    t0 = time.time() - 3000

    def batch(rows, shift: float, offset: int, prefix: str):
        return [
            (
                f"factory/line7/{prefix}-{i % 10}/reading",
                orjson.dumps(
                    {**r, "temperature_c": r["temperature_c"] + shift, "ts": t0 + offset + i * 0.1}
                ),
            )
            for i, r in enumerate(rows)
        ]

    try:
        # Readings like the training data: PSI stays low, no alert.
        publish_all(mosquitto.port, batch(normal_rows(sim_csv, 600, 1), 0.0, 0, unique("ok")))
        wait_until(
            lambda: gw.metric_labelled("gateway_drift_psi", 'feature="temperature_c"') > 0,
            20,
            "PSI computed",
        )
        assert gw.metric_labelled("gateway_drift_psi", 'feature="temperature_c"') < 0.25
        assert not drift.messages
        # The same kind of readings from a sensor recalibrated +8 °C.
        publish_all(mosquitto.port, batch(normal_rows(sim_csv, 600, 2), 8.0, 100, unique("re")))
        (alert,) = drift.wait_for(lambda m: m.json()["state"] == "firing", timeout_s=20)
    finally:
        drift.close()
    body = alert.json()
    assert body["kind"] == "model_drift" and "retrain" in body["hint"]
    assert body["drifting_features"] == ["temperature_c"]
    assert body["values"]["temperature_c"] >= 0.25 > body["values"]["sound_db"]
    print(f"drift: PSI {body['values']}")


@pytest.fixture
def stream_models(tmp_path, sim_csv, models_dir):
    models = tmp_path / "stream-models"
    # Stream features are for the plain detectors (dynamics keeps its own statistics).
    train_model(sim_csv, models, "--detector", "isolation_forest",
                "--features", "temperature_c,humidity_pct,sound_db,sound_db__std_10")  # fmt: skip
    return models


def test_stream_feature_model_in_the_gateway(
    start_gateway, mosquitto, influxdb, stream_models, models_dir
):
    gw = start_gateway(
        models=stream_models, env={"GATEWAY_MODEL_SHADOW_PATH": f"{models_dir}/current"}
    )
    device = unique("win")
    t0 = time.time() - 600
    publish_all(
        mosquitto.port,
        [
            (
                f"factory/line1/{device}/reading",
                orjson.dumps(
                    {
                        "temperature_c": 60 + i * 0.01,
                        "humidity_pct": 45,
                        "sound_db": 75 + (i % 3),
                        "ts": t0 + i,
                    }
                ),
            )
            for i in range(30)
        ],
    )
    wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 21)
    warm = query(
        influxdb.url, f"SELECT count(warming_up) FROM reading WHERE device='{device}'", TEST_DB
    )
    assert warm[0]["values"][0][1] == 9  # a 10-reading window fills on the 10th
    # Shadow mode: the plain model scores from its own inputs; compared (only counted,
    # not acted on) on the 21 readings both models scored.
    assert gw.metric("gateway_shadow_scored_total") == 21


def test_shadow_model_is_scored_but_not_acted_on(
    start_gateway, mosquitto, influxdb, models_dir, tmp_path, sim_csv
):
    shadow = tmp_path / "shadow"
    shutil.copytree(models_dir, shadow, symlinks=True)
    train_model(sim_csv, shadow, "--detector", "pca_t2q")
    gw = start_gateway(env={"GATEWAY_MODEL_SHADOW_PATH": f"{shadow}/current"})
    device = unique("shd")
    publish_all(
        mosquitto.port,
        [
            (
                f"factory/line1/{device}/reading",
                orjson.dumps({"temperature_c": 60 + i * 0.1, "humidity_pct": 45, "sound_db": 75}),
            )
            for i in range(50)
        ],
    )
    wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 50)
    wait_until(lambda: gw.metric("gateway_shadow_scored_total") >= 50, 10, "shadow scoring")
    versions = query(
        influxdb.url,
        f"SELECT count(score) FROM reading WHERE device='{device}' GROUP BY model_version",
        TEST_DB,
    )
    assert [s["tags"]["model_version"] for s in versions] == [
        (models_dir / "current").resolve().name
    ]


SMALL_DYNAMICS = ("--detector", "dynamics", "--param", "fit_after=300", "--param", "warmup=20")


def test_time_aware_model_with_a_retrained_shadow(
    start_gateway, mosquitto, influxdb, sim_csv, tmp_path
):
    """The time-aware detector in the gateway, with a candidate of the same detector (other
    limits) in shadow mode: the shadow scores exactly the readings the active model scored."""
    active, shadow = tmp_path / "dyn", tmp_path / "dyn-shadow"
    train_model(sim_csv, active, *SMALL_DYNAMICS)
    train_model(sim_csv, shadow, *SMALL_DYNAMICS, "--param", "event_rate=0.001")
    gw = start_gateway(models=active, env={"GATEWAY_MODEL_SHADOW_PATH": f"{shadow}/current"})
    device = unique("dyn")
    t0 = time.time() - 600
    n = 80
    values = [
        {"temperature_c": 60 + (i % 5) * 0.1, "humidity_pct": 45 + (i % 3),
         "sound_db": 75 + (i % 7) * 0.2, "ts": t0 + i}
        for i in range(n)
    ]  # fmt: skip
    publish_all(
        mosquitto.port, [(f"factory/line1/{device}/reading", orjson.dumps(v)) for v in values]
    )
    wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", n)
    scored = query(
        influxdb.url, f"SELECT count(score) FROM reading WHERE device='{device}'", TEST_DB
    )[0]["values"][0][1]
    assert scored > n / 2
    wait_until(lambda: gw.metric("gateway_shadow_scored_total") >= scored, 10, "shadow scoring")
    assert gw.metric("gateway_shadow_scored_total") == scored
