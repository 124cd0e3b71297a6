"""Nothing lost: broker restart, InfluxDB outage, gateway SIGKILL, each mid-stream.

Each test has its own broker and database (they get stopped), publishes with the
real simulator at QoS 1, and compares counts: N published (acknowledged by the
broker) and N stored (distinct points in InfluxDB).
"""

from __future__ import annotations

import pytest

from devstack.influxdb import InfluxDB
from devstack.mosquitto import Mosquitto
from devstack.process import free_port, wait_until
from tests.conftest import TEST_DB, GatewayProcess
from tests.helpers import Stream, count_points, unique, wait_for_points

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "mosquitto", free_port()).start()
    yield b
    b.stop()


@pytest.fixture
def influx(tmp_path):
    db = InfluxDB(tmp_path / "influxdb", free_port()).start()
    db.create_database(TEST_DB)
    yield db
    db.stop()


def stored(influx: InfluxDB, prefix: str) -> int:
    return count_points(influx.url, TEST_DB, f"device=~/^{prefix}/")


def test_broker_restart_mid_stream_loses_nothing(tmp_path, broker, influx, models_dir):
    gw = GatewayProcess(tmp_path, broker, influx.url, models_dir).start()
    prefix = unique("brk")
    stream = Stream(broker.port, prefix)
    wait_until(lambda: stored(influx, prefix) > 200, 30, "readings flowing", interval_s=0.1)
    broker.restart()  # graceful stop: mosquitto persists queued QoS 1 messages
    published = stream.finish()
    assert wait_for_points(influx.url, TEST_DB, f"device=~/^{prefix}/", published, 60) == published
    assert stored(influx, prefix) == published  # exactly once per series/timestamp
    print(f"broker restart: published {published}, stored {stored(influx, prefix)}")
    gw.stop()


def test_influxdb_outage_spools_and_drains(tmp_path, broker, influx, models_dir):
    gw = GatewayProcess(tmp_path, broker, influx.url, models_dir).start()
    prefix = unique("infl")
    stream = Stream(broker.port, prefix, duration_s=8.0)
    wait_until(lambda: stored(influx, prefix) > 200, 30, "readings flowing", interval_s=0.1)
    influx.stop()
    wait_until(
        lambda: gw.metric("gateway_spool_points") > 500, 30, "readings to spool", interval_s=0.1
    )
    spooled_peak = gw.metric("gateway_spool_points")
    published = stream.finish()
    influx.start()
    assert wait_for_points(influx.url, TEST_DB, f"device=~/^{prefix}/", published, 60) == published
    wait_until(lambda: gw.metric("gateway_spool_points") == 0, 30, "spool drained")
    assert stored(influx, prefix) == published
    assert gw.metric("gateway_spool_drained_points_total") >= spooled_peak
    print(
        f"influx outage: published {published}, spooled peak {spooled_peak:.0f}, "
        f"stored {stored(influx, prefix)}"
    )
    gw.stop()


def test_gateway_sigkill_and_restart_loses_nothing(tmp_path, broker, influx, models_dir):
    gw = GatewayProcess(tmp_path, broker, influx.url, models_dir).start()
    prefix = unique("kill")
    stream = Stream(broker.port, prefix, duration_s=8.0)
    wait_until(lambda: stored(influx, prefix) > 200, 30, "readings flowing", interval_s=0.1)
    gw.process.kill()  # no flush, no offline status: the last will says offline
    before = stored(influx, prefix)
    gw.restart()  # same id: resumes the persistent session, gets what was not acked
    published = stream.finish()
    assert wait_for_points(influx.url, TEST_DB, f"device=~/^{prefix}/", published, 60) == published
    assert stored(influx, prefix) == published
    print(
        f"SIGKILL: published {published}, stored before kill {before}, "
        f"stored {stored(influx, prefix)}"
    )
    gw.stop()
