"""Delivery under a hung InfluxDB and a flood: this code against a baseline, one run.

    python -m bench.bench_delivery                     # ~4 min on 2 cores
    python -m bench.bench_delivery --baseline 8e3c1f6  # the gateway before issue #15

Each scenario runs twice, on a fresh Mosquitto, InfluxDB 1.x and gateway: once with
this tree's gateway and once with the baseline's (a ``git worktree`` of ``--baseline``,
default the commit before the delivery work), with the same model and each tree's default
config, both with a memory bound of 1000 readings.

1. hang: ``bench.loadgen`` offers ``--rate`` readings/s (QoS 1) for ``--duration`` s;
   after ``--hang-at`` s influxd is frozen with SIGSTOP (it accepts connections and
   never answers) for ``--hang`` s, then thawed.  Reported: seconds from the freeze
   to the first spooled point; the longest intake stall during the freeze (the
   longest time the gateway's received counter stood still); readings held in memory
   (inbox + unacknowledged, sampled every 50 ms; and the gateway's own high-water
   mark where it has one); spooled points; seconds to drain after the thaw;
   published (broker-acknowledged) vs stored vs dead-lettered.
2. flood: no spool, influxd frozen, ``--flood`` readings published at QoS 0 (outside
   MQTT flow control); the most readings the gateway held, against its bound
   (1000: ``mqtt.receive_maximum`` for the baseline, which its README said bounds memory;
   ``pipeline.max_held_readings`` for this tree); then thawed: stored.

Prints a table and writes ``var/bench/delivery-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import urllib3
from paho.mqtt.enums import CallbackAPIVersion

from bench.baseline import baseline_tree
from bench.bench_gateway import BusWatch, dump_toml, ensure_model
from bench.loadgen import LoadGenerator, LoadSpec
from common.logs import setup_logging
from devstack.influxdb import InfluxDB, query
from devstack.mosquitto import Mosquitto
from devstack.process import ManagedProcess, free_port, wait_until

log = logging.getLogger("bench.delivery")

ROOT = Path(__file__).resolve().parent.parent
DB = "bench"
GATEWAY_ID = "bench-delivery"
DEFAULT_BASELINE = "8e3c1f6"  # main before issue #15 (delivery accounting)
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=5.0))


@dataclass
class Samples:
    """Gateway metrics sampled every 50 ms: (time, {name: value})."""

    rows: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def series(self, name: str) -> list[tuple[float, float]]:
        return [(t, m[name]) for t, m in self.rows if name in m]

    def peak(self, *names: str) -> float:
        return max((sum(m.get(n, 0.0) for n in names) for _, m in self.rows), default=0.0)


class Sampler(threading.Thread):
    def __init__(self, metrics_port: int):
        super().__init__(daemon=True)
        self._url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.samples = Samples()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            try:
                text = _http.request("GET", self._url).data.decode()
            except urllib3.exceptions.HTTPError:
                continue
            values = {}
            for line in text.splitlines():
                if line.startswith("gateway_") and "{" not in line:
                    name, _, value = line.partition(" ")
                    values[name] = float(value)
            self.samples.rows.append((time.time(), values))

    def stop(self) -> Samples:
        self._halt.set()
        self.join(5)
        return self.samples


class Stack:
    """Broker, influxd and one gateway from ``tree``, in a temporary directory."""

    def __init__(self, tree: Path, model: Path, workdir: Path, spool: bool, receive_max: int):
        self.workdir = workdir
        self.broker = Mosquitto(workdir / "mosquitto", free_port()).start()
        self.influx = InfluxDB(workdir / "influxdb", free_port()).start()
        self.influx.create_database(DB)
        self.metrics_port = free_port()
        with open(tree / "config" / "gateway.toml", "rb") as fh:
            cfg = tomllib.load(fh)
        cfg["id"] = GATEWAY_ID
        cfg["mqtt"].update(host="127.0.0.1", port=self.broker.port, receive_maximum=receive_max)
        if "max_held_readings" in cfg.get("pipeline", {}):  # the bound of this tree's gateway
            cfg["pipeline"]["max_held_readings"] = receive_max
        cfg["model"]["path"] = str(model)
        cfg["influx"].update(api=1, url=self.influx.url, database=DB)
        cfg["metrics"].update(host="127.0.0.1", port=self.metrics_port)
        cfg["spool"]["path"] = str(workdir / "spool.sqlite") if spool else ""
        config = workdir / "gateway.toml"
        config.write_text(dump_toml(cfg))
        self.watch = BusWatch(self.broker.port, GATEWAY_ID)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.gateway = ManagedProcess(
            "gateway",
            [sys.executable, "-m", "gateway", "--config", str(config)],
            workdir / "gateway.log",
            ready=lambda: self.watch.status == b"online",
            env=env,
            cwd=tree,
        ).start(120)

    def freeze(self) -> None:
        self.influx.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.influx.process.send_signal(signal.SIGCONT)

    def stored(self) -> int:
        series = query(self.influx.url, "SELECT count(score) FROM reading", DB)
        total = int(series[0]["values"][0][1]) if series else 0
        warming = query(self.influx.url, "SELECT count(warming_up) FROM reading", DB)
        return total + (int(warming[0]["values"][0][1]) if warming else 0)

    def close(self) -> None:
        self.thaw()
        self.gateway.stop(timeout_s=60)
        self.watch.close()
        self.influx.stop()
        self.broker.stop()


def longest_stall(samples: Samples, start: float, end: float) -> float:
    """Longest time in [start, end] during which received did not grow."""
    series = [(t, v) for t, v in samples.series("gateway_messages_received_total")]
    longest, since, last = 0.0, start, None
    for t, v in series:
        if t < start or t > end:
            continue
        if last is not None and v > last:
            since = t
        last = v
        longest = max(longest, t - since)
    return longest


def first_time(samples: Samples, name: str, after: float, above: float = 0.0) -> float | None:
    for t, v in samples.series(name):
        if t >= after and v > above:
            return t - after
    return None


@contextlib.contextmanager
def sampled_stack(tree: Path, model: Path, *, spool: bool) -> Iterator[tuple[Stack, Sampler]]:
    """A fresh stack (bound 1000) with its metrics sampled; all of it stopped at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        st = Stack(tree, model, Path(tmp), spool=spool, receive_max=1000)
        sampler = Sampler(st.metrics_port)
        sampler.start()
        try:
            yield st, sampler
        finally:
            try:
                sampler.stop()
            finally:
                st.close()  # no service outlives the run


def scenario_hang(tree: Path, model: Path, args: argparse.Namespace) -> dict:
    with sampled_stack(tree, model, spool=True) as (st, sampler):
        spec = LoadSpec("127.0.0.1", st.broker.port, rate=args.rate, duration_s=args.duration)
        gen = LoadGenerator(spec).start()
        started = time.time()
        wait_until(lambda: time.time() - started >= args.hang_at, args.hang_at + 5, "hang-at")
        frozen_at = time.time()
        st.freeze()
        wait_until(lambda: time.time() - frozen_at >= args.hang, args.hang + 5, "the hang")
        thawed_at = time.time()
        st.thaw()
        load = gen.join()
        wait_until(lambda: st.stored() >= load.acked, 300, "every reading stored", 0.5)
        drained_at = time.time()
        samples = sampler.stop()
        return {
            "published": load.acked,
            "stored": st.stored(),
            "deadlettered": st.watch.deadletters,
            "to_first_spooled_s": first_time(samples, "gateway_spooled_points_total", frozen_at),
            "longest_intake_stall_s": round(longest_stall(samples, frozen_at, thawed_at), 2),
            "held_peak_sampled": samples.peak(
                "gateway_intake_queue_depth", "gateway_unacked_messages"
            ),
            "held_peak_gauge": samples.peak("gateway_held_readings_peak") or None,
            "spooled_points": samples.peak("gateway_spooled_points_total"),
            "all_stored_after_thaw_s": round(drained_at - thawed_at, 1),
        }


def scenario_flood(tree: Path, model: Path, args: argparse.Namespace) -> dict:
    with sampled_stack(tree, model, spool=False) as (st, sampler):
        st.freeze()
        sent = publish_qos0(st.broker.port, args.flood)
        settle = time.time()
        # Let the gateway take what it will while InfluxDB hangs.
        wait_until(lambda: time.time() - settle >= 10, 15, "the flood to settle")
        st.thaw()
        wait_until(lambda: st.stored() >= sent, 300, "the flood stored", 0.5)
        samples = sampler.stop()
        return {
            "published_qos0": sent,
            "stored": st.stored(),
            "held_limit": 1000,
            "held_peak_sampled": samples.peak(
                "gateway_intake_queue_depth", "gateway_unacked_messages"
            ),
            "held_peak_gauge": samples.peak("gateway_held_readings_peak") or None,
        }


def publish_qos0(port: int, n: int) -> int:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-flood",
        protocol=mqtt.MQTTv5,
    )
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    now = time.time()
    infos = []
    for i in range(n):
        body = {"temperature_c": 60.0, "humidity_pct": 40.0, "sound_db": 70.0, "ts": now - n + i}
        infos.append(
            client.publish(f"factory/flood/d{i % 50:02d}/reading", orjson.dumps(body), qos=0)
        )
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()
    return n


ROWS = [
    ("hang", "published", "published (QoS 1, acked by the broker)"),
    ("hang", "stored", "stored in InfluxDB"),
    ("hang", "deadlettered", "dead-lettered"),
    ("hang", "to_first_spooled_s", "freeze -> first point spooled (s)"),
    ("hang", "longest_intake_stall_s", "longest intake stall while frozen (s)"),
    ("hang", "held_peak_sampled", "readings held, peak sampled (inbox + unacked)"),
    ("hang", "held_peak_gauge", "readings held, gateway's high-water mark"),
    ("hang", "spooled_points", "points spooled"),
    ("hang", "all_stored_after_thaw_s", "thaw -> everything stored (s)"),
    ("flood", "published_qos0", "flood: published at QoS 0"),
    ("flood", "stored", "flood: stored"),
    ("flood", "held_peak_sampled", "flood: readings held, peak sampled (limit 1000)"),
    ("flood", "held_peak_gauge", "flood: gateway's high-water mark"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--hang-at", type=float, default=8.0)
    parser.add_argument("--hang", type=float, default=15.0)
    parser.add_argument("--flood", type=int, default=20_000)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "bench" / "models")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    model = ensure_model(None, args.models_dir, retrain=False)
    trees = {"baseline": baseline_tree(args.baseline), "this": ROOT}
    result: dict[str, dict] = {name: {} for name in trees}
    for name, tree in trees.items():
        log.info("%s (%s): hang", name, tree)
        result[name]["hang"] = scenario_hang(tree, model, args)
        log.info("%s (%s): flood", name, tree)
        result[name]["flood"] = scenario_flood(tree, model, args)
    print(f"\n| | baseline {args.baseline} | this tree |\n|---|---|---|")
    for scenario, key, label in ROWS:
        a = result["baseline"][scenario].get(key)
        b = result["this"][scenario].get(key)
        print(f"| {label} | {_fmt(a)} | {_fmt(b)} |")
    out = ROOT / "var" / "bench" / f"delivery-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args) | {"models_dir": str(args.models_dir)},
                               "result": result}, indent=2, default=str))  # fmt: skip
    print(f"\nwritten to {out}")
    return 0


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
