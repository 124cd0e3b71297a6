"""Scale-out: three gateways share the stream through the broker (real Mosquitto and
influxd).  Counts must match, and every device must be scored by one gateway at a
time, also when a gateway is killed mid-stream."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from devstack.influxdb import query
from devstack.mosquitto import Mosquitto
from devstack.process import free_port, wait_until
from gateway.cluster.broker_version import FIXED_IN, mosquitto_version
from tests.conftest import TEST_DB, GatewayProcess
from tests.helpers import count_points, python_module, summary, unique, wait_for_points

pytestmark = pytest.mark.integration

PARTITIONS = 12
CLUSTER = f"[cluster]\nenabled = true\npartitions = {PARTITIONS}\n"


# A broker of each test's own (overrides conftest's session one in this module), so
# conftest's start_gateway and start_stream run the test's gateways and simulators
# against it and stop them in their teardown, before it stops.
@pytest.fixture
def mosquitto(tmp_path):
    b = Mosquitto(tmp_path / "mosquitto", free_port()).start()
    yield b
    b.stop()


@pytest.fixture
def cluster(start_gateway):
    """Three cluster gateways; start_gateway stops them, also when one fails to start
    or the partitions never converge."""
    gws = [start_gateway(extra=CLUSTER) for _ in range(3)]

    def converged(alive: list[GatewayProcess]) -> bool:
        owned = [gw.metric("gateway_cluster_partitions_owned") for gw in alive]
        return sum(owned) == PARTITIONS and all(owned)

    wait_until(lambda: converged(gws), 30, "partitions assigned to all three", interval_s=0.2)
    return gws, converged


def scorers_by_device(influx_url: str, prefix: str) -> dict[str, list[str]]:
    """Per device, the gateway that scored each reading, in time order."""
    series = query(
        influx_url,
        f"SELECT gateway FROM reading WHERE device=~/^{prefix}/ GROUP BY device",
        TEST_DB,
    )
    return {s["tags"]["device"]: [v[1] for v in s["values"]] for s in series}


def test_three_gateways_share_the_stream(cluster, mosquitto, influxdb):
    gws, _ = cluster
    prefix = unique("c3")
    result = python_module(
        "sensors.simulate",
        "--broker-port",
        str(mosquitto.port),
        "--lines",
        "3",
        "--devices",
        "20",
        "--count",
        "20000",
        "--speed",
        "0",
        "--faults",
        "none",
        "--device-prefix",
        prefix,
    )
    assert result.returncode == 0, result.stderr
    published = int(summary(result.stdout)["published"])
    where = f"device=~/^{prefix}/"
    assert wait_for_points(influxdb.url, TEST_DB, where, published, 120) == published
    assert count_points(influxdb.url, TEST_DB, where) == published
    by_device = scorers_by_device(influxdb.url, prefix)
    assert len(by_device) == 60
    # State intact: each device's readings were all scored by one gateway.
    assert all(len(set(seq)) == 1 for seq in by_device.values())
    share = {gw.id: sum(seq.count(gw.id) for seq in by_device.values()) for gw in gws}
    assert all(share.values())
    print(f"3 gateways: published {published}, stored {published}, share {share}")
    # Each gateway read the broker's retained $SYS/broker/version (it came with the
    # subscription, long before the stream ended) and warns iff that version can stall.
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    # `mosquitto -h` prints its version and exits non-zero.
    banner = subprocess.run([binary, "-h"], check=False, capture_output=True, text=True).stdout
    version = mosquitto_version(banner.splitlines()[0].encode())
    assert version is not None, banner
    warned = ["inflight-quota defect" in gw.log.read_text() for gw in gws]
    assert warned == [version < FIXED_IN] * 3, (version, warned)


def test_a_killed_gateway_loses_nothing(cluster, influxdb, start_stream):
    gws, converged = cluster
    prefix = unique("ck")
    stream = start_stream(prefix, lines=2, devices=20, duration_s=8.0)
    where = f"device=~/^{prefix}/"
    wait_until(
        lambda: count_points(influxdb.url, TEST_DB, where) > 2000, 30, "flow", interval_s=0.1
    )
    victim, survivors = gws[0], gws[1:]
    victim.process.kill()
    wait_until(lambda: converged(survivors), 30, "survivors own every partition", interval_s=0.2)
    published = stream.finish()
    assert wait_for_points(influxdb.url, TEST_DB, where, published, 120) == published
    assert count_points(influxdb.url, TEST_DB, where) == published
    by_device = scorers_by_device(influxdb.url, prefix)
    # State intact: the two survivors never shared a device.  A device of the victim
    # moved once, to one survivor (in arrival order; readings the survivors took over
    # or rescued can be older than ones the victim had already scored).
    scorers = {d: set(seq) for d, seq in by_device.items()}
    assert all(len(s) == 1 or (len(s) == 2 and victim.id in s) for s in scorers.values())
    moved = [d for d, s in scorers.items() if len(s) == 2]
    assert moved
    rescued = sum(gw.metric("gateway_cluster_rescued_total") for gw in survivors)
    print(
        f"kill: published {published}, stored {published}, devices moved {len(moved)}, "
        f"rescued from the dead session {rescued:.0f}"
    )
