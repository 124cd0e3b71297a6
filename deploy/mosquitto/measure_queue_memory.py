"""How much broker memory a backlog of queued readings costs (sizes max_queued_messages).

Starts a real Mosquitto with factory.conf's queue settings, registers a persistent
QoS 1 subscriber that goes away (as a stopped gateway does), publishes N readings at QoS 1,
prints the broker's resident memory before and after, and counts what the subscriber
gets when it comes back::

    python deploy/mosquitto/measure_queue_memory.py --count 200000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from contract import READING_SUBSCRIPTION, reading_topic  # noqa: E402
from devstack.mosquitto import Mosquitto  # noqa: E402
from devstack.process import free_port, wait_until  # noqa: E402

READING = '{"temperature_c": 71.25, "humidity_pct": 41.5, "sound_db": 68.75, "seq": %d}'


def queue_limits() -> str:
    """The queue settings of the shipped factory.conf, so the figure matches it."""
    conf = (Path(__file__).parent / "factory.conf").read_text().splitlines()
    return "\n".join(line for line in conf if line.startswith("max_queued_")) + "\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _session(port: int, on_message=None) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="parked-gateway",
        protocol=mqtt.MQTTv5,
    )
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 86400
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    return client


def park_subscriber(port: int) -> None:
    """Subscribe with a 1-day session, then disconnect: the broker queues for us."""
    done = []
    client = _session(port)
    client.on_subscribe = lambda *a: done.append(True)
    client.subscribe(READING_SUBSCRIPTION, qos=1)
    client.loop_start()
    wait_until(lambda: bool(done), 10, "subscription")
    client.disconnect()
    client.loop_stop()


def drain(port: int, expected: int) -> int:
    """Come back and count what the broker kept for us."""
    received = [0]
    last = [time.monotonic()]

    def on_message(*_args) -> None:
        received[0] += 1
        last[0] = time.monotonic()

    client = _session(port, on_message)
    client.loop_start()
    try:
        wait_until(
            lambda: received[0] >= expected or time.monotonic() - last[0] > 5,
            600,
            "the queued readings",
            interval_s=0.2,
        )
    finally:
        client.disconnect()
        client.loop_stop()
    return received[0]


def publish(port: int, count: int) -> None:
    """QoS 1 with a bounded window, as a well-behaved sensor fleet publishes."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fleet")
    client.max_inflight_messages_set(200)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topic = reading_topic("line1", "press-01")
    try:
        for i in range(count):
            info = client.publish(topic, READING % i, qos=1)
            if i % 2000 == 1999:
                info.wait_for_publish(60)
        info.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(
            Path(tmp),
            free_port(),
            extra_config=queue_limits(),
        ).start()
        try:
            assert broker.process is not None and broker.process.proc is not None
            pid = broker.process.proc.pid
            park_subscriber(broker.port)
            before = rss_kib(pid)
            started = time.monotonic()
            publish(broker.port, args.count)
            elapsed = time.monotonic() - started
            after = rss_kib(pid)
            delivered = drain(broker.port, args.count)
        finally:
            broker.stop()
    per_msg = (after - before) * 1024 / args.count
    sys.stdout.write(
        f"published {args.count} readings ({len(READING) + 4} B payload) in {elapsed:.1f} s; "
        f"the returning subscriber got {delivered}\n"
        f"broker RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: "
        f"{per_msg:.0f} bytes per queued reading; "
        f"1,000,000 queued ~ {per_msg * 1e6 / 2**20:.0f} MiB\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
