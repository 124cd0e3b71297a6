"""Hot model reload in the running gateway: no reading lost, none scored by a
half-loaded model, a broken model never replaces a working one."""

from __future__ import annotations

import shutil
import signal

import pytest

from devstack.influxdb import query
from devstack.process import wait_until
from tests.conftest import TEST_DB
from tests.helpers import (
    count_points,
    mosquitto_pub,
    python_module,
    train_model,
    unique,
    wait_for_points,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def two_models(tmp_path, models_dir, sim_csv):
    """A private models dir with the active model and a second, inactive version."""
    models = tmp_path / "models"
    shutil.copytree(models_dir, models, symlinks=True)
    first = (models / "current").resolve().name
    second = train_model(sim_csv, models, "--seed", "99", "--no-activate")
    return models, first, second


def versions(influx_url: str, prefix: str) -> dict[str, int]:
    series = query(
        influx_url,
        f"SELECT count(score) FROM reading WHERE device=~/^{prefix}/ GROUP BY model_version",
        TEST_DB,
    )
    return {s["tags"]["model_version"]: s["values"][0][1] for s in series}


def test_switching_the_pointer_reloads_under_load(
    mosquitto, influxdb, two_models, start_gateway, start_stream
):
    models, first, second = two_models
    gw = start_gateway(models=models)
    prefix = unique("reload")
    stream = start_stream(prefix)
    where = f"device=~/^{prefix}/"
    wait_until(lambda: count_points(influxdb.url, TEST_DB, where) > 200, 30, "flow", interval_s=0.1)
    assert python_module("model", "activate", second, "--models-dir", str(models)).returncode == 0
    wait_until(
        lambda: second in versions(influxdb.url, prefix), 20, "new model in use", interval_s=0.1
    )
    published = stream.finish()
    assert wait_for_points(influxdb.url, TEST_DB, where, published, 60) == published
    by_version = versions(influxdb.url, prefix)
    # Every reading scored exactly once, by one of the two complete models.
    assert set(by_version) == {first, second}
    assert sum(by_version.values()) == published
    print(f"reload under load: published {published}, scored {by_version}")
    assert gw.metric("gateway_model_reloads_total") == 1

    # A broken model on SIGHUP: logged and counted, the working one keeps serving.
    broken = models / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text("{}")
    (models / "current").unlink()
    (models / "current").symlink_to("broken")
    gw.process.send_signal(signal.SIGHUP)
    wait_until(lambda: gw.metric("gateway_model_reload_failures_total") >= 1, 20, "failure")
    device = unique("after")
    mosquitto_pub(
        mosquitto.port,
        f"factory/line1/{device}/reading",
        '{"temperature_c": 60, "humidity_pct": 45, "sound_db": 75}',
    )
    wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 1)
    assert versions(influxdb.url, device) == {second: 1}
