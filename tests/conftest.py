"""Session fixtures: real Mosquitto and InfluxDB on free ports, a trained model,
and gateway processes started the way a user starts them (``python -m gateway``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.influxdb import InfluxDB
from devstack.mosquitto import Mosquitto
from devstack.process import ManagedProcess, free_port
from tests.helpers import ROOT, Collector, Stream, python_module, train_model, unique
from tests.notify_servers import NotifierProcess, SmtpServer, WebhookServer

TEST_DB = "factory_test"


def _require(binary: str) -> None:
    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        pytest.fail(f"{binary} is not installed; run `make test` (it installs it)")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory) -> Iterator[Mosquitto]:
    _require("mosquitto")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"), free_port()).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory) -> Iterator[InfluxDB]:
    _require("influxd")
    db = InfluxDB(tmp_path_factory.mktemp("influxdb"), free_port()).start()
    db.create_database(TEST_DB)
    yield db
    db.stop()


@pytest.fixture(scope="session")
def sim_csv(tmp_path_factory) -> Path:
    """A labelled simulator dataset, made with the real CLI."""
    out = tmp_path_factory.mktemp("data") / "sim.csv"
    result = python_module(
        "sensors.simulate",
        "--csv",
        str(out),
        "--lines",
        "2",
        "--devices",
        "3",
        "--interval",
        "1",
        "--duration",
        "3600",
        "--seed",
        "7",
        "--faults",
        "all",
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, sim_csv) -> Path:
    """A model trained with the real CLI on the simulator's labelled data."""
    models = tmp_path_factory.mktemp("models")
    # The per-reading detector: these tests send single readings to new devices and
    # check decisions reading by reading.  The default, time-aware model is tested end
    # to end in test_backtest_gateway, test_api_series and the lifecycle tests.
    train_model(sim_csv, models, "--detector", "isolation_forest")
    return models


class GatewayProcess:
    """``python -m gateway`` with a config pointing at the test services."""

    def __init__(
        self,
        tmp: Path,
        mosquitto: Mosquitto,
        influx_url: str,
        models: Path,
        extra: str = "",
        env: dict[str, str] | None = None,
        api: int = 1,
        database: str = TEST_DB,
    ):
        self.id = unique("gw")
        self.metrics_port = free_port()
        self.mosquitto = mosquitto
        self.config = tmp / f"{self.id}.toml"
        influx = (
            f'api = 1\nurl = "{influx_url}"\ndatabase = "{database}"\n'
            if api == 1
            else f'api = 2\nurl = "{influx_url}"\nbucket = "{database}"\norg = "test"\n'
        )
        self.config.write_text(
            f"""id = "{self.id}"
log_level = "INFO"
[mqtt]
host = "127.0.0.1"
port = {mosquitto.port}
[model]
path = "{models}/current"
[influx]
{influx}flush_interval_ms = 50
[metrics]
port = {self.metrics_port}
influx_interval_s = 1
[spool]
path = "{tmp}/{self.id}.spool.sqlite"
{extra}
"""
        )
        self._env = {**os.environ, **(env or {})}
        self.log = tmp / f"{self.id}.log"
        self.process: ManagedProcess | None = None

    def start(self, timeout_s: float = 30) -> GatewayProcess:
        status = Collector(self.mosquitto.port, [f"factory/gateway/{self.id}/status"])
        try:
            self.process = ManagedProcess(
                self.id,
                [sys.executable, "-m", "gateway", "--config", str(self.config)],
                self.log,
                ready=lambda: bool(status.matching(lambda m: m.payload == b"online")),
                env=self._env,
                cwd=ROOT,
            ).start(timeout_s)
        finally:
            status.close()
        return self

    def stop(self) -> int | None:
        return self.process.stop() if self.process else None

    def metric_labelled(self, name: str, labels: str) -> float:
        """Value of ``name{labels}`` from /metrics, or -1 when not exported yet."""
        import urllib3

        text = urllib3.request("GET", f"http://127.0.0.1:{self.metrics_port}/metrics").data
        prefix = f"{name}{{{labels}}} "
        for line in text.decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return -1.0

    def restart(self, timeout_s: float = 30) -> GatewayProcess:
        """Start again with the same id, hence the same persistent MQTT session."""
        self.stop()
        return self.start(timeout_s)

    def metric(self, name: str) -> float:
        """Current value of an unlabelled Prometheus sample from /metrics."""
        import urllib3

        text = urllib3.request("GET", f"http://127.0.0.1:{self.metrics_port}/metrics").data
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)


@pytest.fixture
def start_gateway(tmp_path, mosquitto, influxdb, models_dir):
    started: list[GatewayProcess] = []

    def _start(**kwargs) -> GatewayProcess:
        kwargs.setdefault("influx_url", influxdb.url)
        kwargs.setdefault("models", models_dir)
        gw = GatewayProcess(tmp_path, mosquitto, **kwargs).start()
        started.append(gw)
        return gw

    yield _start
    for gw in reversed(started):
        gw.stop()


@pytest.fixture
def start_stream(mosquitto):
    """Starts simulator streams (``tests.helpers.Stream``) on the ``mosquitto`` fixture
    in scope (a module may override it with a broker of its own); any still running at
    teardown (a failed test) is terminated, so none outlives the broker it publishes to."""
    started: list[Stream] = []

    def _start(prefix: str, **kwargs) -> Stream:
        stream = Stream(mosquitto.port, prefix, **kwargs)
        started.append(stream)
        return stream

    yield _start
    for stream in started:
        if stream.proc.poll() is None:
            stream.proc.terminate()
            try:
                stream.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                stream.proc.kill()
                stream.proc.communicate()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, mosquitto, influxdb, models_dir) -> Iterator[GatewayProcess]:
    """One gateway shared by a module's tests (each test uses its own device names)."""
    gw = GatewayProcess(
        tmp_path_factory.mktemp("gateway"), mosquitto, influxdb.url, models_dir
    ).start()
    yield gw
    gw.stop()


@pytest.fixture
def fake_systemd(tmp_path):
    """A real AF_UNIX datagram socket playing systemd's NOTIFY_SOCKET; collects messages."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    messages: list[str] = []
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    yield path, messages
    stop.set()
    thread.join()
    sock.close()


# --- people's end: a webhook endpoint, an SMTP server, the notifier -------------------


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    """A real HTTP endpoint (ThreadingHTTPServer) that records posts; modes in its doc."""
    server = WebhookServer()
    yield server
    server.stop()


@pytest.fixture
def smtp(tmp_path) -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) with STARTTLS and AUTH."""
    server = SmtpServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def start_notifier(tmp_path, mosquitto):
    """Starts ``python -m notify`` processes; each is stopped at teardown."""
    started: list[NotifierProcess] = []

    def _start(body: str, **kwargs) -> NotifierProcess:
        notifier = NotifierProcess(tmp_path, mosquitto.port, body, **kwargs)
        started.append(notifier)
        return notifier.start()

    yield _start
    for notifier in reversed(started):
        notifier.stop()
