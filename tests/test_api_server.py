"""``python -m api`` as a user runs it: gunicorn workers on a free port.

Multi-process metrics, limits enforced by the real server, a schemathesis run against
the live ``/openapi.json``, and hot reload (model pointer switch, SIGHUP) under load.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import urllib3

from contract import schema
from contract.alerting import alert_id
from contract.lineprotocol import encode_point
from devstack.process import ManagedProcess, free_port, wait_until
from model.artifact import activate, active_version
from tests.conftest import TEST_DB
from tests.helpers import ROOT, python_module, unique

pytestmark = pytest.mark.integration

NORMAL = {"temperature_c": 62.0, "humidity_pct": 44.0, "sound_db": 76.0}
API_KEY = "test-key-5e7d"


class ApiServer:
    """``python -m api --config <file> --port <free>``, ready when /ready answers 200.

    The model path comes from ``API_MODEL_PATH``, as ``make demo`` passes it."""

    def __init__(self, tmp: Path, models: Path, config: str = "", env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp / f"api-{self.port}.toml"
        self.config.write_text(f'log_level = "INFO"\n{config}\n')
        self.log = tmp / f"api-{self.port}.log"
        self._env = {**os.environ, "API_MODEL_PATH": f"{models}/current", **(env or {})}
        self._env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._http = urllib3.PoolManager(retries=False, timeout=5.0)
        self.process: ManagedProcess | None = None

    def _ready(self) -> bool:
        try:
            return self._http.request("GET", f"{self.url}/ready").status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def start(self, timeout_s: float = 30) -> ApiServer:
        argv = [sys.executable, "-m", "api", "--config", str(self.config), "--port", str(self.port)]
        self.process = ManagedProcess(
            f"api-{self.port}", argv, self.log, ready=self._ready, env=self._env, cwd=ROOT
        ).start(timeout_s)
        return self

    def stop(self) -> int | None:
        return self.process.stop() if self.process else None

    def request(self, method: str, path: str, body=None, **headers: str):
        data = orjson.dumps(body) if body is not None and not isinstance(body, bytes) else body
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        return self._http.request(method, f"{self.url}{path}", body=data, headers=headers)


def _version_from_train_output(stdout: str) -> str:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("saved "))
    return Path(line.split()[1]).name


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, models_dir, sim_csv) -> tuple[Path, str, str]:
    """A private models dir holding the session's model (v1) and a second one trained
    with the real CLI (``--no-activate``), so switching it never disturbs other tests."""
    store = tmp_path_factory.mktemp("api-models")
    v1 = active_version(models_dir)
    assert v1 is not None
    shutil.copytree(models_dir / v1, store / v1)
    result = python_module(
        "model", "train", "--csv", str(sim_csv), "--models-dir", str(store),
        "--label-column", "is_anomaly", "--fault-column", "fault", "--timestamp-column", "ts",
        "--seed", "11", "--no-activate",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    v2 = _version_from_train_output(result.stdout)
    assert v2 != v1
    return store, v1, v2


@pytest.fixture
def private_models(tmp_path, two_versions) -> tuple[Path, str, str]:
    """A fresh models dir per test with v1 active and v2 ready to activate."""
    store, v1, v2 = two_versions
    models = tmp_path / "models"
    for version in (v1, v2):
        shutil.copytree(store / version, models / version)
    activate(models, v1)
    return models, v1, v2


@pytest.fixture
def start_api(tmp_path):
    started: list[ApiServer] = []

    def _start(models: Path, config: str = "", **kwargs) -> ApiServer:
        server = ApiServer(tmp_path, models, config, **kwargs).start()
        started.append(server)
        return server

    yield _start
    for server in reversed(started):
        assert server.stop() == 0, server.process.tail() if server.process else ""


@dataclass
class LoadGenerator:
    """Threads posting /predict back to back until stopped; keeps every outcome."""

    server: ApiServer
    threads: int = 4
    keep_alive: bool = True
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]

    def _run(self) -> None:
        http = urllib3.PoolManager(maxsize=1, retries=False, timeout=10.0)
        headers = {"Content-Type": "application/json"}
        if not self.keep_alive:
            headers["Connection"] = "close"
        body = orjson.dumps([NORMAL] * 5)
        while not self._stop.is_set():
            version = failure = None
            try:
                resp = http.request(
                    "POST", f"{self.server.url}/predict", body=body, headers=headers
                )
                if resp.status == 200:
                    version = orjson.loads(resp.data)["model_version"]
                else:
                    failure = f"HTTP {resp.status}: {resp.data[:200]!r}"
            except Exception as exc:  # every failure counts, whatever its kind
                failure = f"{type(exc).__name__}: {exc}"
            with self._lock:
                if failure is None:
                    self.versions.append(version)
                else:
                    self.failures.append(failure)

    def start(self) -> LoadGenerator:
        for worker in self._workers:
            worker.start()
        return self

    def count(self, version: str) -> int:
        with self._lock:
            return self.versions.count(version)

    def tail(self, n: int) -> list[str]:
        with self._lock:
            return self.versions[-n:]

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(15)


def _wait_for_workers(server: ApiServer, count: int = 2) -> None:
    """/ready answers once one worker is up; wait until ``count`` distinct workers
    answer (each has loaded its model), so a switch cannot race a booting worker."""
    pids: set[int] = set()

    def seen_all() -> bool:
        http = urllib3.PoolManager(retries=False, timeout=5.0)
        resp = http.request("GET", f"{server.url}/health", headers={"Connection": "close"})
        pids.add(orjson.loads(resp.data)["pid"])
        return len(pids) >= count

    wait_until(seen_all, 30, f"{count} API workers")


def _fresh_connection_versions(server: ApiServer, n: int) -> Counter:
    """Versions answering ``n`` requests on new connections (spread over the workers)."""
    seen: Counter = Counter()
    for _ in range(n):
        http = urllib3.PoolManager(retries=False, timeout=5.0)
        resp = http.request(
            "POST", f"{server.url}/predict", body=orjson.dumps(NORMAL),
            headers={"Content-Type": "application/json", "Connection": "close"},
        )  # fmt: skip
        assert resp.status == 200, resp.data
        seen[orjson.loads(resp.data)["model_version"]] += 1
    return seen


def _all_workers_serve(server: ApiServer, new: str, old: str) -> bool:
    text = server.request("GET", "/metrics").data.decode()
    return (
        f'api_model_info{{version="{new}"}} 1.0' in text
        and f'api_model_info{{version="{old}"}} 0.0' in text
    )


def _scrape(server: ApiServer, name: str) -> float:
    text = server.request("GET", "/metrics").data.decode()
    values = [float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(f"{name} ")]
    return values[0] if values else 0.0


# --- the served API ------------------------------------------------------------------------


def _connections_to_two_workers(server: ApiServer) -> list[http.client.HTTPConnection]:
    """Two keep-alive connections served by different workers (each sticks to one)."""
    by_pid: dict[int, http.client.HTTPConnection] = {}

    def another() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/health")
        pid = orjson.loads(conn.getresponse().read())["pid"]
        if pid in by_pid:
            conn.close()
        else:
            by_pid[pid] = conn
        return len(by_pid) >= 2

    wait_until(another, 20, "connections to two different workers")
    return list(by_pid.values())


def test_metrics_add_up_over_all_workers(start_api, private_models):
    models, v1, _ = private_models
    # gthread keeps connections open, so each one stays with the worker that took it.
    server = start_api(models, '[server]\nworker_class = "gthread"\nworkers = 2\n')
    first, second = _connections_to_two_workers(server)
    body = orjson.dumps([NORMAL, NORMAL])
    for conn, requests in ((first, 30), (second, 50)):
        for _ in range(requests):
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
        conn.close()
    # Whichever worker answers the scrape, it reports the whole server: 2 x (30 + 50).
    for _ in range(4):
        assert _scrape(server, "api_predict_scored_total") == 160
    text = server.request("GET", "/metrics").data.decode()
    assert f'api_model_info{{version="{v1}"}} 1.0' in text


def test_real_server_enforces_limits_and_headers(start_api, private_models):
    models, _, _ = private_models
    server = start_api(models, "[limits]\nmax_body_bytes = 4096\nmax_records = 10\n")
    resp = server.request("POST", "/predict", b"[" + b" " * 100_000 + b"]")
    assert resp.status == 413 and resp.json()["error"]["code"] == "body_too_large"
    resp = server.request("POST", "/predict", [NORMAL] * 11)
    assert resp.status == 413 and resp.json()["error"]["code"] == "too_many_records"
    resp = server.request("POST", "/predict", b"nan", **{"Content-Type": "text/plain"})
    assert resp.status == 415
    ok = server.request("POST", "/predict", NORMAL)
    assert ok.status == 200 and ok.headers["Server-Timing"].startswith("app;dur=")
    # A chunked upload (no Content-Length) takes the Flask route: same answers, same limit.
    assert _post_chunked(server, orjson.dumps(NORMAL)) == (200, ok.json())
    bad = orjson.dumps([NORMAL, {"temperature_c": 1.0}])
    assert _post_chunked(server, bad) == (422, server.request("POST", "/predict", bad).json())
    status, body = _post_chunked(server, b"[" + b" " * 100_000 + b"]")
    assert status == 413 and body["error"]["code"] == "body_too_large"


def _post_chunked(server: ApiServer, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        pieces = (body[i : i + 1000] for i in range(0, len(body), 1000))
        conn.request(
            "POST", "/predict", body=pieces, encode_chunked=True,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        resp = conn.getresponse()
        assert resp.getheader("Content-Length") is not None
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


def test_unloadable_model_stops_start_up_with_a_clear_error(tmp_path):
    result = python_module(
        "api", "--port", str(free_port()),
        env={**os.environ, "API_MODEL_PATH": str(tmp_path / "nothing-here")},
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot load model" in result.stderr and "nothing-here" in result.stderr


def test_schemathesis_finds_no_server_error(
    start_api, private_models, influxdb, mosquitto, tmp_path
):
    models, _, _ = private_models
    # A firing alert, so the fuzzer's acknowledgements and labels reach the broker and the
    # database (a listed alert's id is what its stateful phase posts to).
    now = time.time_ns()
    tags = {"line": unique("fuzz"), "device": "press-01", "kind": "process_anomaly"}
    point = encode_point(
        schema.ALERT_EVENT,
        {**tags, schema.EVENT: schema.EVENT_FIRING},
        {schema.ALERT_ID: alert_id(tags["line"], "press-01", tags["kind"], now),
         schema.STARTED_NS: now, schema.SCORE: 0.9},
        now,
    )  # fmt: skip
    urllib3.request("POST", f"{influxdb.url}/write?db={TEST_DB}", body=point.encode())
    # A real broker too: an acknowledgement is published on it (without one, the
    # documented 503 is what a fuzzer calls a server error).
    server = start_api(
        models,
        f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{TEST_DB}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n',
        env={"API_KEYS": API_KEY},
    )
    # One worker: with two threads, hypothesis' lambda descriptions (ast.parse) crashed
    # once in CPython 3.11 ("AST constructor recursion depth mismatch"), a tool failure.
    result = python_module(
        "schemathesis.cli", "run", f"{server.url}/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance",
        "--max-examples", "100", "--seed", "1", "--workers", "1",
        "--generation-database", "none", "--header", f"X-API-Key: {API_KEY}",
        "--no-color", "--request-timeout", "10",
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout


# --- hot reload ------------------------------------------------------------------------------


def test_switching_current_reloads_without_failed_requests(start_api, private_models):
    models, v1, v2 = private_models
    server = start_api(models, "[model]\ncheck_interval_s = 0.5\n")
    load = LoadGenerator(server).start()
    try:
        wait_until(lambda: load.count(v1) >= 200, 30, "requests served by the first model")
        result = python_module("model", "activate", v2, "--models-dir", str(models))
        assert result.returncode == 0, result.stderr
        # Each worker notices within check_interval_s, loads v2 beside v1, then swaps;
        # the merged gauge shows v1 until the last live worker has switched.
        wait_until(lambda: _all_workers_serve(server, v2, v1), 30, "every worker to switch")
        wait_until(lambda: load.count(v2) >= 300, 30, "requests served by the new model")
        assert set(load.tail(100)) == {v2}
        assert _fresh_connection_versions(server, 30) == Counter({v2: 30})
    finally:
        load.stop()
    assert load.failures == []
    assert set(load.versions) == {v1, v2}
    assert _scrape(server, 'api_model_reloads_total{result="ok"}') >= 1


def test_sighup_reloads_workers_gracefully(start_api, private_models):
    models, v1, v2 = private_models
    # Pointer checks off: only the SIGHUP may switch the model.
    server = start_api(models, "[model]\ncheck_interval_s = 0\n")
    # A worker still booting when the pointer moves would load v2 without any SIGHUP.
    _wait_for_workers(server)
    load = LoadGenerator(server, keep_alive=True).start()
    try:
        wait_until(lambda: load.count(v1) >= 100, 30, "requests served by the first model")
        activate(models, v2)
        assert _fresh_connection_versions(server, 20) == Counter({v1: 20})
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: load.count(v2) >= 200, 30, "requests served by the new workers")
        assert set(load.tail(50)) == {v2}
    finally:
        load.stop()
    assert load.failures == []
    assert _fresh_connection_versions(server, 20) == Counter({v2: 20})


def test_broken_new_model_keeps_the_old_one_serving(start_api, private_models):
    models, v1, v2 = private_models
    server = start_api(models, "[model]\ncheck_interval_s = 0.2\n")
    _wait_for_workers(server)
    # Broken whichever way it is loaded: the compiled arrays, the pickled pipeline, and
    # the metadata (all a time-aware model reads).
    (models / v2 / "model.joblib").write_bytes(b"not a pickle")
    (models / v2 / "compiled.npz").write_bytes(b"not an npz")
    (models / v2 / "metadata.json").write_bytes(b"not json")
    link = models / "current"
    tmp_link = models / ".current-test"
    os.symlink(v2, tmp_link)
    os.replace(tmp_link, link)  # what `activate` does, minus its safety check
    wait_until(
        lambda: _scrape(server, 'api_model_reloads_total{result="failed"}') >= 1,
        20,
        "the failed reload to be counted",
    )
    assert _fresh_connection_versions(server, 10) == Counter({v1: 10})
    assert server.request("GET", "/ready").status == 200
