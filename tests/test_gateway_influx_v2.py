"""The InfluxDB v2 write path (influxdb-client) against a real line-protocol server.

No InfluxDB 2.x/3.x is installable on Debian; VictoriaMetrics accepts the same
``/api/v2/write`` requests, so the gateway's v2 sink is exercised end to end.
"""

from __future__ import annotations

import shutil

import pytest

from devstack.process import free_port, wait_until
from devstack.victoria import VictoriaMetrics
from tests.helpers import mosquitto_pub, unique

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def victoria(tmp_path_factory):
    if shutil.which("victoria-metrics") is None:
        pytest.fail("victoria-metrics is not installed; run `make test` (it installs it)")
    vm = VictoriaMetrics(tmp_path_factory.mktemp("vm"), free_port()).start()
    yield vm
    vm.stop()


def test_v2_api_stores_scored_readings(start_gateway, mosquitto, victoria):
    start_gateway(influx_url=victoria.url, api=2)
    device = unique("v2dev")
    for i in range(5):
        mosquitto_pub(
            mosquitto.port,
            f"factory/line9/{device}/reading",
            f'{{"temperature_c": {60 + i}, "humidity_pct": 40, "sound_db": 75, "seq": {i}}}',
        )

    def stored() -> list[dict]:
        victoria.flush()
        return victoria.export(f'{{__name__="reading_score",device="{device}"}}')

    wait_until(lambda: sum(len(s["values"]) for s in stored()) == 5, 20, "5 scores in VM")
    series = stored()
    assert series[0]["metric"]["line"] == "line9"
    assert series[0]["metric"]["model_version"]
    assert all(0 <= v <= 1 for s in series for v in s["values"])
    temps = victoria.export(f'{{__name__="reading_temperature_c",device="{device}"}}')
    assert sorted(v for s in temps for v in s["values"]) == [60, 61, 62, 63, 64]
