"""Prediction API speed: ``python -m api`` under gunicorn vs the naive approach.

    python -m bench.bench_api                       # ~3 min on 2 cores
    python -m bench.bench_api --model var/models/current --repeat 5
    python -m bench.bench_api --baseline 8e3c1f6    # also REV's API, same run, same model

Starts the API (``python -m api``) on a free port in a few gunicorn set-ups, and in
the same run the naive approach: Flask's development server with the sklearn
pipeline loaded directly and one ``predict`` call per record.  For each it measures,
with load-generator *processes* (raw HTTP/1.1 over keep-alive sockets, so the client
costs little CPU on this 2-core machine):

* latency of single-record and 100-record requests, one request at a time:
  p50/p99 seen by the client and inside the server (``Server-Timing`` header);
* throughput: requests/s with several client processes sending back to back, on
  kept-alive connections and with a new connection per request (as clients that do
  not keep a session do), measured in rounds that visit every server in turn; per
  round also the server's CPU per request (``/proc`` of all its processes) and how the
  kept-alive connections spread over its processes (``/proc/net/tcp``);
* the app alone: one-record ``/predict`` with the WSGI app called in-process.

Without ``--model`` a model is trained first on simulator data with the real CLI
(``python -m sensors.simulate`` + ``python -m model train``, ``--detector`` to choose;
the project default is the time-aware ``dynamics``).  Prints tables; exits non-zero
only if a server fails to start or answers with an error.

Models with per-device state (``dynamics``, rolling stream features) are measured
too: records without ``line``/``device`` are one unnamed device, scored in request
order with no stored history.  ``--device LINE/DEVICE --influx-url URL`` names the
device in every record, so each request also reads that device's stored history
from InfluxDB (up to ``history_readings`` readings) and runs it through the model:
the cost of a single reading for a known device.  The naive set-up (sklearn
``predict`` per record) has no per-device state and is skipped for such models.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.baseline import baseline_tree
from bench.rawhttp import RawClient, build_request
from bench.resources import connections_by_process, cpu_seconds, process_tree
from devstack.process import free_port

ROOT = Path(__file__).resolve().parent.parent
RECORD = {"temperature_c": 62.0, "humidity_pct": 44.0, "sound_db": 76.0}


# --- measurements --------------------------------------------------------------------------


def _latency_worker(port: int, body: bytes, count: int, out) -> None:
    client = RawClient(port)
    raw = build_request(port, body)
    for _ in range(min(20, count)):  # warm-up: connections, caches
        client.request(raw)
    client_ms, server_ms, errors = [], [], 0
    for _ in range(count):
        started = time.perf_counter()
        status, server = client.request(raw)
        client_ms.append((time.perf_counter() - started) * 1000)
        if status != 200:
            errors += 1
        if server is not None:
            server_ms.append(server)
    client.close()
    out.send((client_ms, server_ms, errors))


def _throughput_worker(
    port: int, body: bytes, keep_alive: bool, start_at: float, stop_at: float, out
) -> None:
    client = RawClient(port)
    raw = build_request(port, body, keep_alive)
    client.request(raw)
    while time.time() < start_at:
        time.sleep(0.001)
    done = errors = 0
    while time.time() < stop_at:
        status, _ = client.request(raw)
        done += 1
        errors += status != 200
    client.close()
    out.send((done, errors))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Latency:
    client_p50: float
    client_p99: float
    server_p50: float
    server_p99: float
    errors: int


def measure_latency(port: int, body: bytes, count: int) -> Latency:
    """One client process, one request at a time."""
    ours, theirs = mp.Pipe()
    proc = mp.Process(target=_latency_worker, args=(port, body, count, theirs))
    proc.start()
    client_ms, server_ms, errors = ours.recv()
    proc.join()
    return Latency(
        _percentile(client_ms, 0.5),
        _percentile(client_ms, 0.99),
        _percentile(server_ms, 0.5),
        _percentile(server_ms, 0.99),
        errors,
    )


@dataclass
class Round:
    rate: float  # requests/s
    errors: int
    # Server CPU per request over the round (all its processes), µs; and the kernel's part.
    cpu_us: float
    kernel_us: float
    # Kept-alive connections held by each server process halfway through, largest first.
    spread: list[int]


def measure_throughput(
    server: Server, body: bytes, clients: int, duration_s: float, keep_alive: bool = True
) -> Round:
    """Requests/s with ``clients`` processes sending back to back for ``duration_s``
    (on one kept-alive connection each, or a new connection per request), with the
    server's CPU per request and, halfway, how its connections spread over processes."""
    assert server.proc is not None
    pids = process_tree(server.proc.pid)
    start_at = time.time() + 0.5
    stop_at = start_at + duration_s
    spread: list[int] = []

    def look() -> None:
        held = connections_by_process(server.port, pids).values()
        spread.extend(sorted((n for n in held if n), reverse=True))

    probe = threading.Timer(start_at + duration_s / 2 - time.time(), look)
    user0, kernel0 = cpu_seconds(pids)
    probe.start()
    pipes, procs = [], []
    for _ in range(clients):
        ours, theirs = mp.Pipe()
        proc = mp.Process(
            target=_throughput_worker,
            args=(server.port, body, keep_alive, start_at, stop_at, theirs),
        )
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    results = [p.recv() for p in pipes]
    for proc in procs:
        proc.join()
    probe.join()
    user, kernel = (b - a for a, b in zip((user0, kernel0), cpu_seconds(pids), strict=True))
    done = max(sum(r[0] for r in results), 1)
    return Round(
        rate=sum(r[0] for r in results) / duration_s,
        errors=sum(r[1] for r in results),
        cpu_us=(user + kernel) / done * 1e6,
        kernel_us=kernel / done * 1e6,
        spread=spread,
    )


# --- servers -----------------------------------------------------------------------------


def wait_for_port(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on :{port} did not start in {timeout_s:g}s")


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    # The source tree it runs from (``--baseline``: another revision's worktree).
    tree: Path = ROOT

    def __enter__(self) -> Server:
        log_path = Path(tempfile.gettempdir()) / f"bench-api-{self.port}.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.argv, "--port", str(self.port)],
                cwd=self.tree,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.proc)
        # Ready means the model answers, not just the socket.
        client = RawClient(self.port)
        status, _ = client.request(build_request(self.port, json.dumps(RECORD).encode()))
        client.close()
        if status != 200:
            raise SystemExit(f"{self.name}: /predict answered {status}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)


# InfluxDB the API reads stored history from ("": none; --influx-url).
INFLUX = {"API_INFLUX_URL": "", "API_INFLUX_DATABASE": "factory"}


def api_server(model: Path, worker_class: str, workers: int, threads: int) -> Server:
    name = f"gunicorn {worker_class} {workers}w" + (
        f"x{threads}t" if worker_class == "gthread" else ""
    )
    return Server(
        name,
        [sys.executable, "-m", "api"],
        env={
            "API_MODEL_PATH": str(model),
            "API_SERVER_WORKER_CLASS": worker_class,
            "API_SERVER_WORKERS": str(workers),
            "API_SERVER_THREADS": str(threads),
            "API_LOG_LEVEL": "WARNING",
            **INFLUX,
        },
    )


def naive_server(model: Path) -> Server:
    return Server(
        "naive: Flask dev server, predict per record",
        [sys.executable, "-m", "bench.bench_api", "--serve-naive", "--model", str(model)],
    )


def serve_naive(model: Path, port: int) -> None:
    """What a first version of such an API looks like: sklearn per record per request."""
    import joblib
    import numpy as np
    from flask import Flask, g, jsonify, request

    from model.artifact import resolve

    pipeline = joblib.load(resolve(model) / "model.joblib")["pipeline"]
    app = Flask("naive")

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _timing(resp):
        resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - g.started) * 1000:.3f}"
        return resp

    @app.post("/predict")
    def predict():
        body = request.get_json()
        records = body if isinstance(body, list) else [body]
        out = []
        for rec in records:
            x = np.array([[rec["temperature_c"], rec["humidity_pct"], rec["sound_db"]]])
            out.append({"is_anomaly": bool(pipeline.predict(x)[0] == -1)})
        return jsonify(out if isinstance(body, list) else out[0])

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.run(host="127.0.0.1", port=port, threaded=True)


def in_process_us(model: Path, count: int, workload: list[str]) -> float:
    """µs per one-record ``POST /predict`` with the WSGI app called directly (no HTTP,
    no gunicorn): what the app itself costs.  Runs in a fresh interpreter."""
    argv = [sys.executable, "-m", "bench.bench_api", "--in-process", str(count), *workload]
    out = subprocess.run(
        [*argv, "--model", str(model)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def serve_in_process(model: Path, count: int, influx_url: str, influx_db: str) -> None:
    import io

    from api.app import create_app
    from api.config import ApiConfig, InfluxQueryConfig, ModelConfig

    app = create_app(
        ApiConfig(
            model=ModelConfig(path=str(model), check_interval_s=0),
            influx=InfluxQueryConfig(url=influx_url, database=influx_db),
        )
    )
    body = json.dumps(RECORD).encode()
    base = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "SERVER_NAME": "bench",
        "SERVER_PORT": "5000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "wsgi.errors": sys.stderr,
    }  # fmt: skip
    statuses: list[str] = []

    def one() -> None:
        out = app(
            {**base, "wsgi.input": io.BytesIO(body)}, lambda st, _h, _e=None: statuses.append(st)
        )
        b"".join(out)

    for _ in range(min(500, count)):  # warm-up
        one()
    started = time.perf_counter()
    for _ in range(count):
        one()
    elapsed = time.perf_counter() - started
    if any(not st.startswith("200") for st in statuses):
        raise SystemExit(f"in-process /predict failed: {set(statuses)}")
    print(f"{elapsed / count * 1e6:.1f}")


# The default (config/api.toml) first, then the alternatives, then the naive approach.
DEFAULT_SETUPS = "gthread:2x2,sync:3,sync:2,naive"


def make_server(setup: str, model: Path, tree: Path | None = None) -> Server:
    """A set-up of this tree's API, or with ``tree`` of another revision's (same model)."""
    server = _make_server(setup, model)
    if tree is not None:
        server.tree = tree
        server.name = f"{server.name} [{tree.name}]"
    return server


def _make_server(setup: str, model: Path) -> Server:
    kind, _, size = setup.strip().partition(":")
    try:
        if kind == "naive" and not size:
            return naive_server(model)
        if kind == "gthread":
            workers, threads = (int(n) for n in size.split("x"))
            return api_server(model, kind, workers, threads)
        if kind == "sync":
            return api_server(model, kind, int(size), 1)
    except ValueError:
        pass
    raise SystemExit(f"--setups: cannot read {setup!r} (gthread:2x2, sync:3 or naive)")


# --- the run -------------------------------------------------------------------------------


def ensure_model(model: Path | None, workdir: Path, detector: str | None = None) -> Path:
    if model is not None:
        return model
    chosen = ["--detector", detector] if detector else []
    data = workdir / "sim.csv"
    models = workdir / "models"
    for argv in (
        ["sensors.simulate", "--csv", str(data), "--lines", "2", "--devices", "3",
         "--interval", "1", "--duration", "3600", "--seed", "7", "--faults", "all"],
        ["model", "train", "--csv", str(data), "--models-dir", str(models),
         "--label-column", "is_anomaly", "--fault-column", "fault", "--timestamp-column", "ts",
         *chosen],
    ):  # fmt: skip
        subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, check=True, capture_output=True)
    return models / "current"


def _model_kind(model: Path) -> tuple[bool, int]:
    """(keeps per-device state, history_readings) of the model."""
    from model.scorer import load_scorer

    scorer = load_scorer(model)
    return scorer.stateful, scorer.history_readings


def run_all(servers: list[Server], args: argparse.Namespace) -> list[dict[str, object]]:
    """All servers run at once (idle ones cost nothing); latency is measured one server
    at a time, throughput in rounds that visit every server in turn, so that other work
    on this 2-core machine slows them alike.  Throughput figures are round medians."""
    single = json.dumps(RECORD).encode()
    batch = json.dumps([RECORD] * 100).encode()
    rows: list[dict[str, object]] = []
    for server in servers:
        server.__enter__()
    try:
        for server in servers:
            print(f"latency: {server.name} ...", flush=True)
            naive = server.name.startswith("naive")
            one = measure_latency(server.port, single, args.requests // (4 if naive else 1))
            hundred = measure_latency(
                server.port, batch, max(20, args.requests // (100 if naive else 10))
            )
            runs: dict[str, list[float]] = {"keep_alive": [], "new_connection": [], "batch": []}
            errors = one.errors + hundred.errors
            rows.append(
                {
                    "name": server.name,
                    "single": one,
                    "batch": hundred,
                    "errors": errors,
                    "runs": runs,
                    "keep_alive_rounds": [],
                }
            )
        for round_no in range(1, args.repeat + 1):
            print(f"throughput round {round_no}/{args.repeat} ...", flush=True)
            for server, row in zip(servers, rows, strict=True):
                for kind, body, keep_alive in (
                    ("keep_alive", single, True),
                    ("new_connection", single, False),
                    ("batch", batch, True),
                ):
                    got = measure_throughput(server, body, args.clients, args.duration, keep_alive)
                    row["runs"][kind].append(got.rate)  # type: ignore[index]
                    row["errors"] += got.errors  # type: ignore[operator]
                    if kind == "keep_alive":
                        row["keep_alive_rounds"].append(got)  # type: ignore[attr-defined]
    finally:
        for server in servers:
            server.__exit__()
    for row in rows:
        runs = row["runs"]
        row["rps_keep_alive"] = statistics.median(runs["keep_alive"])  # type: ignore[index]
        row["rps_new_connection"] = statistics.median(runs["new_connection"])  # type: ignore[index]
        row["batch_rps"] = statistics.median(runs["batch"])  # type: ignore[index]
    return rows


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def print_report(rows: list[dict[str, object]], clients: int) -> None:
    print()
    print("Latency, one request at a time, ms (client = round trip, server = Server-Timing)")
    print(f"  {'server':<44} {'---- 1 record: client/server p50, p99 ----':>44}"
          f"  {'---- 100 records: client/server p50, p99 ----':>46}")  # fmt: skip
    for r in rows:
        s, b = r["single"], r["batch"]
        print(
            f"  {r['name']:<44} {_ms(s.client_p50):>8} {_ms(s.server_p50):>8}"
            f" {_ms(s.client_p99):>9} {_ms(s.server_p99):>8}"
            f"     {_ms(b.client_p50):>9} {_ms(b.server_p50):>9}"
            f" {_ms(b.client_p99):>9} {_ms(b.server_p99):>9}"
        )
    print()
    print(f"Throughput with {clients} client processes, requests/s (median of rounds)")
    print(f"  {'server':<44} {'1 rec keep-alive':>17} {'1 rec new conn':>15}"
          f" {'100 rec (records/s)':>22}")  # fmt: skip
    for r in rows:
        print(
            f"  {r['name']:<44} {r['rps_keep_alive']:>17.0f} {r['rps_new_connection']:>15.0f}"
            f" {r['batch_rps']:>8.0f} ({r['batch_rps'] * 100:>10,.0f})"
        )
    print()
    print("Each round, 1 record keep-alive: requests/s [kept-alive connections per server process]")
    for r in rows:
        rounds = r["keep_alive_rounds"]
        shown = "  ".join(f"{x.rate:,.0f} [{'+'.join(map(str, x.spread)) or '-'}]" for x in rounds)
        print(f"  {r['name']:<44} {shown}")
    print()
    print("Server CPU per request, 1 record keep-alive (all server processes; median of rounds)")
    for r in rows:
        rounds = r["keep_alive_rounds"]
        cpu = statistics.median(x.cpu_us for x in rounds)
        kernel = statistics.median(x.kernel_us for x in rounds)
        print(f"  {r['name']:<44} {cpu:>6,.0f} µs, {kernel:,.0f} µs of it in the kernel")
    print()
    print(f"errors: {sum(r['errors'] for r in rows)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_api", description=__doc__)
    parser.add_argument("--model", type=Path, help="model path (default: train one)")
    parser.add_argument("--requests", type=int, default=2000, help="latency samples, 1 record")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="throughput rounds (median shown)")
    parser.add_argument("--clients", type=int, default=4, help="client processes for throughput")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--detector", help="detector of the model trained without --model (default: project's)"
    )
    parser.add_argument(
        "--device",
        default="",
        help="LINE/DEVICE named in every record: stateful models read its stored history",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the API of git revision REV (a worktree) in each set-up, same rounds",
    )
    parser.add_argument("--influx-url", default="", help="InfluxDB the API reads history from")
    parser.add_argument("--influx-db", default="factory", help="its database (default factory)")
    parser.add_argument(
        "--setups",
        default=DEFAULT_SETUPS,
        help=f"servers to compare, comma-separated (default: {DEFAULT_SETUPS}): "
        "gthread:<workers>x<threads>, sync:<workers>, naive",
    )
    parser.add_argument("--serve-naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in-process", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--in-process-count", type=int, default=5000, help="requests timed in-process"
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device:
        line, sep, device = args.device.partition("/")
        if not (line and sep and device):
            parser.error("--device must be LINE/DEVICE")
        RECORD.update(line=line, device=device)
    INFLUX.update(API_INFLUX_URL=args.influx_url, API_INFLUX_DATABASE=args.influx_db)
    workload = ["--device", args.device, "--influx-url", args.influx_url]
    workload += ["--influx-db", args.influx_db]
    if args.serve_naive:
        serve_naive(args.model, args.port)
        return 0
    if args.in_process:
        serve_in_process(args.model, args.in_process, args.influx_url, args.influx_db)
        return 0

    setups = args.setups.split(",")
    for setup in setups:  # refuse a typo before training a model
        make_server(setup, Path("."))
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        model = ensure_model(args.model, Path(tmp), args.detector)
        stateful, history = _model_kind(model)
        if stateful and "naive" in setups:
            # Per-record sklearn predict has no per-device state: nothing to compare.
            setups = [s for s in setups if s != "naive"]
            print("naive set-up skipped: the model keeps per-device state")
        kind = f"stateful, history_readings {history}" if stateful else "plain"
        records = f"device {args.device}" if args.device else "no device"
        print(
            f"model {model.resolve().name} ({kind}); records: {records}, InfluxDB "
            f"{args.influx_url or 'none'}; {os.cpu_count()} CPUs; load average "
            f"{os.getloadavg()[0]:.1f}; throughput: median of {args.repeat} rounds "
            f"of {args.duration:g} s"
        )
        servers = [make_server(setup, model) for setup in setups]
        if args.baseline:
            tree = baseline_tree(args.baseline)
            servers = [
                make_server(setup, model, tree) for setup in setups if setup != "naive"
            ] + servers
        rows = run_all(servers, args)
        app_us = in_process_us(model, args.in_process_count, workload)
    print_report(rows, args.clients)
    print(f"in-process: {app_us:.0f} µs per 1-record /predict (the WSGI app called directly)")
    if args.json:
        args.json.write_text(json.dumps(rows, default=lambda o: o.__dict__, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
