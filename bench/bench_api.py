"""Prediction API speed: ``python -m api`` under gunicorn vs the naive approach.

    python -m bench.bench_api                       # ~3 min on 2 cores
    python -m bench.bench_api --model var/models/current --repeat 5

Starts the API (``python -m api``) on a free port in a few gunicorn set-ups, and in
the same run the naive approach: Flask's development server with the sklearn
pipeline loaded directly and one ``predict`` call per record.  For each it measures,
with load-generator *processes* (raw HTTP/1.1 over keep-alive sockets, so the client
costs little CPU on this 2-core machine):

* latency of single-record and 100-record requests, one request at a time:
  p50/p99 seen by the client and inside the server (``Server-Timing`` header);
* throughput: requests/s with several client processes sending back to back, on
  kept-alive connections and with a new connection per request (as clients that do
  not keep a session do), measured in rounds that visit every server in turn.

Without ``--model`` a model is trained first on simulator data with the real CLI
(``python -m sensors.simulate`` + ``python -m model train``).  Prints tables; exits
non-zero only if a server fails to start or answers with an error.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.process import free_port

ROOT = Path(__file__).resolve().parent.parent
RECORD = {"temperature_c": 62.0, "humidity_pct": 44.0, "sound_db": 76.0}
_TIMING = re.compile(rb"server-timing: *app;dur=([0-9.]+)", re.IGNORECASE)


# --- a minimal HTTP/1.1 client: keep-alive, prebuilt request bytes ---------------------------


class RawClient:
    def __init__(self, port: int):
        self._port = port
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect(self) -> None:
        self._sock = socket.create_connection(("127.0.0.1", self._port), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, raw: bytes) -> tuple[int, float | None]:
        """Send one request; returns (status, server-side ms or None)."""
        for attempt in (1, 2):
            if self._sock is None:
                self._connect()
            try:
                return self._exchange(raw)
            except (ConnectionError, BrokenPipeError):
                # An idle keep-alive connection the server closed: reconnect once.
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read_more(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buf += chunk

    def _exchange(self, raw: bytes) -> tuple[int, float | None]:
        assert self._sock is not None
        self._sock.sendall(raw)
        while b"\r\n\r\n" not in self._buf:
            self._read_more()
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        match = re.search(rb"content-length: *(\d+)", lower)
        length = int(match.group(1)) if match else 0
        self._buf = rest
        while len(self._buf) < length:
            self._read_more()
        self._buf = self._buf[length:]
        if b"connection: close" in lower or b"connection: close" in raw[:200].lower():
            self.close()
        timing = _TIMING.search(head)
        return status, float(timing.group(1)) if timing else None


def build_request(port: int, body: bytes, keep_alive: bool = True) -> bytes:
    close = "" if keep_alive else "Connection: close\r\n"
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


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


def measure_throughput(
    port: int, body: bytes, clients: int, duration_s: float, keep_alive: bool = True
) -> tuple[float, int]:
    """Requests/s with ``clients`` processes sending back to back for ``duration_s``
    (on one kept-alive connection each, or a new connection per request)."""
    start_at = time.time() + 0.5
    stop_at = start_at + duration_s
    pipes, procs = [], []
    for _ in range(clients):
        ours, theirs = mp.Pipe()
        proc = mp.Process(
            target=_throughput_worker, args=(port, body, keep_alive, start_at, stop_at, theirs)
        )
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    results = [p.recv() for p in pipes]
    for proc in procs:
        proc.join()
    return sum(r[0] for r in results) / duration_s, sum(r[1] for r in results)


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

    def __enter__(self) -> Server:
        log_path = Path(tempfile.gettempdir()) / f"bench-api-{self.port}.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.argv, "--port", str(self.port)],
                cwd=ROOT,
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
            "API_INFLUX_URL": "",
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


# --- the run -------------------------------------------------------------------------------


def ensure_model(model: Path | None, workdir: Path) -> Path:
    if model is not None:
        return model
    data = workdir / "sim.csv"
    models = workdir / "models"
    for argv in (
        ["sensors.simulate", "--csv", str(data), "--lines", "2", "--devices", "3",
         "--interval", "1", "--duration", "3600", "--seed", "7", "--faults", "all"],
        ["model", "train", "--csv", str(data), "--models-dir", str(models),
         "--label-column", "is_anomaly", "--fault-column", "fault", "--timestamp-column", "ts"],
    ):  # fmt: skip
        subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, check=True, capture_output=True)
    return models / "current"


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
                    rate, failed = measure_throughput(
                        server.port, body, args.clients, args.duration, keep_alive
                    )
                    row["runs"][kind].append(rate)  # type: ignore[index]
                    row["errors"] += failed  # type: ignore[operator]
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
    print(f"errors: {sum(r['errors'] for r in rows)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_api", description=__doc__)
    parser.add_argument("--model", type=Path, help="model path (default: train one)")
    parser.add_argument("--requests", type=int, default=2000, help="latency samples, 1 record")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="throughput rounds (median shown)")
    parser.add_argument("--clients", type=int, default=4, help="client processes for throughput")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve-naive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_naive:
        serve_naive(args.model, args.port)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        model = ensure_model(args.model, Path(tmp))
        print(
            f"model {model.resolve().name}; {os.cpu_count()} CPUs; load average "
            f"{os.getloadavg()[0]:.1f}; throughput: median of {args.repeat} rounds "
            f"of {args.duration:g} s"
        )
        servers = [
            api_server(model, "gthread", 2, 2),  # the default (config/api.toml)
            api_server(model, "sync", 3, 1),
            api_server(model, "sync", 2, 1),
            naive_server(model),
        ]
        rows = run_all(servers, args)
    print_report(rows, args.clients)
    if args.json:
        args.json.write_text(json.dumps(rows, default=lambda o: o.__dict__, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
