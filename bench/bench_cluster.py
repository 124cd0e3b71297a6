"""Throughput with 1, 2 and 3 gateways sharing the stream (issue: scale out).

    python -m bench.bench_cluster [--duration 20] [--rate 12000] [--gateways 1,2,3]

For each count it starts a fresh Mosquitto and InfluxDB, N ``python -m gateway``
processes (``[cluster] enabled`` when N > 1; N = 1 runs plain, as a single gateway
does), publishes at QoS 1 at ``--rate`` (12 000 readings/s; 0 = as fast as the broker
acknowledges) for ``--duration`` seconds, waits until every acknowledged reading is
in InfluxDB, and prints the sustained rate (stored / time from first send to last
stored) and the loss.

On one 2-core box every gateway competes with the broker, the database and the load
generator for the same two cores; the figures say what this box does, not what a
cluster of machines would.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import urllib3

from bench.bench_gateway import DB, count_points, dump_toml, ensure_model, gateway_config
from bench.loadgen import LoadGenerator, LoadSpec
from common.logs import setup_logging
from devstack.influxdb import InfluxDB
from devstack.mosquitto import Mosquitto
from devstack.process import ManagedProcess, free_port, port_open, wait_until

log = logging.getLogger("bench.cluster")
ROOT = Path(__file__).resolve().parent.parent


def _owned(metrics_port: int) -> int:
    text = urllib3.request("GET", f"http://127.0.0.1:{metrics_port}/metrics").data.decode()
    for line in text.splitlines():
        if line.startswith("gateway_cluster_partitions_owned "):
            return int(float(line.split()[1]))
    return 0


def run_one(n: int, duration_s: float, rate: float, model: Path, workdir: Path) -> dict:
    workdir.mkdir(parents=True)
    mosq = Mosquitto(workdir / "mosquitto", free_port()).start()
    influx = InfluxDB(workdir / "influxdb", free_port()).start()
    influx.create_database(DB)
    gateways: list[ManagedProcess] = []
    ports: list[int] = []
    try:
        for i in range(n):
            port = free_port()
            ports.append(port)
            overrides = [
                (["id"], f"bench-gw-{i}"),
                (["spool", "path"], str(workdir / f"spool-{i}.sqlite")),
                (["cluster", "enabled"], n > 1),
                (["cluster", "partitions"], 16),
            ]
            cfg = gateway_config(ROOT / "config" / "gateway.toml", workdir, model, port, overrides)
            cfg["mqtt"]["port"] = mosq.port
            cfg["influx"]["url"] = influx.url
            path = workdir / f"gateway-{i}.toml"
            path.write_text(dump_toml(cfg) + "\n")
            gateways.append(
                ManagedProcess(
                    f"gateway-{i}",
                    [sys.executable, "-m", "gateway", "--config", str(path)],
                    workdir / f"gateway-{i}.log",
                    ready=lambda p=port: port_open("127.0.0.1", p),
                    cwd=ROOT,
                ).start(120)
            )
        if n > 1:  # the cluster has settled when the gateways own all 16 partitions
            wait_until(lambda: sum(_owned(p) for p in ports) == 16, 60, "partitions assigned")
        prefix = f"c{n}"
        load = (
            LoadGenerator(
                LoadSpec(
                    "127.0.0.1", mosq.port, rate=rate, duration_s=duration_s, line_prefix=prefix
                ),
                name=f"load-{prefix}",
            )
            .start()
            .join()
        )
        best, best_at = -1, time.time()
        while True:  # until all stored, or no progress for 60 s
            stored = count_points(influx.url, DB, prefix)
            if stored > best:
                best, best_at = stored, time.time()
            if stored >= load.acked or time.time() - best_at > 60:
                break
            time.sleep(0.2)
        return {
            "gateways": n,
            "published": load.acked,
            "stored": best,
            "loss": load.acked - best,
            "publish_rate": round(load.acked / load.send_window_s),
            "sustained_rate": round(best / (best_at - load.first_send)),
        }
    finally:
        for gw in reversed(gateways):
            gw.stop()
        influx.stop()
        mosq.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument(
        "--rate", type=float, default=12_000.0, help="offered readings/s, 0 = as fast as possible"
    )
    parser.add_argument("--gateways", default="1,2,3")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "bench" / "models")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    model = ensure_model(None, args.models_dir, retrain=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for n in (int(x) for x in args.gateways.split(",")):
            rows.append(run_one(n, args.duration, args.rate, model, Path(tmp) / f"n{n}"))
            r = rows[-1]
            sys.stdout.write(
                f"{n} gateway(s): published {r['published']}, stored {r['stored']}, "
                f"loss {r['loss']}, sustained {r['sustained_rate']}/s "
                f"(offered {r['publish_rate']}/s)\n"
            )
            sys.stdout.flush()
    return 1 if any(r["loss"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
