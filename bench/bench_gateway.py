"""Gateway throughput and latency: the real gateway, end to end, vs the naive pattern.

    python -m bench.bench_gateway             # ~6 min on 2 cores
    python -m bench.bench_gateway --quick     # ~1 min: 10 s scenarios, 100 000 backlog
    python -m bench.bench_gateway --profile   # also py-spy the gateway during (1)
    python -m bench.bench_gateway --profile gil   # ... only samples holding the GIL
    python -m bench.bench_gateway --detector isolation_forest   # another detector
    python -m bench.bench_gateway --compare-models             # old vs new default, one run
    python -m bench.bench_gateway --compare-models old=var/m/current,new=dynamics

Starts its own Mosquitto and InfluxDB 1.x (free ports, a temporary directory), trains
the model into ``var/bench/models/<detector>`` unless one is there (``--detector``,
default the model CLI's default, ``dynamics``; or ``--model PATH``), and runs
``python -m gateway`` with ``config/gateway.toml`` plus the bench's overrides (ports,
paths, ``[alerts] fire_after = resolve_after = 1``; more with ``--set``).
Load comes from ``bench.loadgen`` publisher processes, QoS 1, 200 devices on 10 lines.

``--baseline REV`` runs the gateway scenarios (1-3) twice in the same invocation, same
model and config: first with the gateway of git revision REV (a worktree under
``var/bench``, see ``bench.baseline``), then with this tree's; side by side, as below.

``--compare-models [SPEC]`` runs the gateway scenarios (1-3) once per model in the same
invocation, each on a fresh broker, InfluxDB and gateway, one model after the other,
and prints them side by side.  SPEC is a comma list of ``LABEL=MODEL`` or ``MODEL``,
where MODEL is a detector name (trained or reused as above) or a model path; without
SPEC: ``isolation_forest,dynamics`` (the old and the new default).  The naive
per-message gateway (4) and the decode comparison (5) do not depend on the gateway's
model: they run once, in the first model's run.

Scenarios:
 1. throughput: publish at 12 000 readings/s (``--rate``; 0 = as fast as the broker
    acknowledges) for ``--duration`` s; sustained = readings in InfluxDB / (first send
    → last stored);
    loss = broker-acknowledged - stored; gateway CPU % and max RSS.
 2. latency: a steady 1 000 readings/s of which ``--probe-rate``/s are latency probes
    (``bench.probe``): p50/p99/max publish → alert.
 3. backlog: gateway stopped, ``--backlog`` readings queued in its persistent
    session, then started: drain rate and max RSS while draining.
 4. naive: ``bench.naive_gateway`` (one sklearn call + one HTTP write per message)
    fed at ``--naive-rate`` for ``--naive-duration`` s; readings/s it stored, and the
    ratio to (1).  It scores with an isolation_forest model (the run's own if it is
    one, else ``var/bench/models/isolation_forest``): the pattern needs sklearn.
 5. decode: ``bench.decode_bench`` (json vs orjson vs msgspec).

Probe check: before starting, the latency probe's exact sequence (per probe device,
anomalous and normal readings alternating, as many as the scenario sends) is scored
through the model's own per-device inputs (``scorer.new_inputs()``), as the gateway
will: every anomalous reading must reach the alert threshold and every normal one
resolve it, during a device's warm-up and after it.  A model that fails this would
leave the latency figures without alerts, so the run stops instead.

Model state: the model's per-device memory, measured in this process by feeding a few
readings to each of the bench's devices through ``scorer.new_inputs()`` (tracemalloc:
arrays and per-device bookkeeping; for the time-aware detector also
``DeviceBank.memory_bytes()``), and the bound that implies at the inputs' device cap.
The gateway's own RSS is measured during the throughput scenario as before.

Prints a table and writes everything to ``var/bench/gateway-<timestamp>.json``.
CPU % is of one core (this machine has ``os.cpu_count()`` of them); ``other`` is CPU
used by processes that are not part of the benchmark (shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import urllib3
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench import decode_bench
from bench.baseline import baseline_tree
from bench.gateway_report import add_efficiency, brief, format_report
from bench.loadgen import LoadGenerator, LoadResult, LoadSpec, device_table
from bench.naive_gateway import READY_MESSAGE
from bench.probe import LatencyProbe, ProbeSpec
from bench.profile import Profiler
from bench.resources import ResourceSampler
from contract import ALERTS_PREFIX, ALERTS_SUBSCRIPTION, DEADLETTER_SUBSCRIPTION, status_topic
from devstack.influxdb import InfluxDB, query
from devstack.mosquitto import Mosquitto
from devstack.process import ManagedProcess, free_port, wait_until

log = logging.getLogger("bench.gateway")

ROOT = Path(__file__).resolve().parent.parent
DB = "bench"
NAIVE_DB = "bench_naive"
GATEWAY_ID = "bench-gw"
ANOMALOUS = {"temperature_c": 140.0, "humidity_pct": 5.0, "sound_db": 150.0}
PROBE_DEVICES = 4
# What ``model train`` trains without --detector, and the detector of the naive gateway.
DEFAULT_DETECTOR = "dynamics"
NAIVE_DETECTOR = "isolation_forest"
COMPARE_DEFAULT = "isolation_forest,dynamics"
# Readings fed to each device when measuring the model's per-device state.
STATE_READINGS = 10
_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=10.0))


# --- settings ------------------------------------------------------------------------------


SCENARIOS = ("throughput", "latency", "backlog", "naive", "decode")


@dataclass(frozen=True)
class BenchSettings:
    duration_s: float = 60.0
    # Offered readings/s in (1): above the 10,000/s target, so the figure is what the
    # gateway sustains, not what was offered.  0 = as fast as the broker takes them
    # (the broker then queues whatever the gateway has not taken yet).
    rate: float = 12_000.0
    latency_duration_s: float = 60.0
    latency_rate: float = 1000.0
    probe_rate: float = 10.0
    backlog: int = 1_000_000
    naive_duration_s: float = 30.0
    naive_rate: float = 1000.0
    devices: int = 200
    lines: int = 10
    processes: int = 2
    inflight: int = 2000
    decode_messages: int = 20_000
    scenarios: tuple[str, ...] = SCENARIOS
    # "" = no profile; "busy": py-spy samples of running threads; "gil": only the
    # thread holding the GIL (where the Python time goes).
    profile: str = ""
    # Wait this long without progress for readings to reach InfluxDB before calling
    # the rest lost.
    stall_timeout_s: float = 60.0


QUICK = {
    "duration_s": 10.0,
    "latency_duration_s": 10.0,
    "backlog": 100_000,
    "naive_duration_s": 8.0,
    "decode_messages": 5_000,
}


# --- MQTT side: status, alerts and dead letters -----------------------------------------------


class BusWatch:
    """Counts alerts and dead letters and follows the gateway's retained status."""

    def __init__(self, port: int, gateway_id: str):
        self.status: bytes | None = None
        self.alerts: Counter[str] = Counter()
        self.deadletters = 0
        self._status_topic = status_topic(gateway_id)
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="bench-watch",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(self._status_topic, 1), (ALERTS_SUBSCRIPTION, 1), (DEADLETTER_SUBSCRIPTION, 1)]
        )
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self._subscribed.is_set, 10, "the bench's MQTT subscription")

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == self._status_topic:
            self.status = msg.payload
        elif msg.topic.startswith(ALERTS_PREFIX):
            body = orjson.loads(msg.payload)
            kind = "/".join(str(body[k]) for k in ("kind", "fault") if k in body)
            self.alerts[f"{kind}/{body.get('state')}"] += 1
        else:
            self.deadletters += 1

    def counts(self) -> Counter[str]:
        return Counter({**self.alerts, "deadletters": self.deadletters})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def drop_session(port: int, client_id: str) -> None:
    """End a persistent MQTT session so the broker stops queueing for it."""
    done = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.on_connect = lambda *_: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    client.connect("127.0.0.1", port, clean_start=True, properties=props)
    client.loop_start()
    wait_until(done.is_set, 10, f"a clean session for {client_id}")
    client.disconnect()
    client.loop_stop()


# --- gateway config and process -------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: dict, prefix: str = "") -> str:
    """Enough TOML for the gateway config: scalars, lists, tables, arrays of tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict | list)]
    lines += [
        f"{k} = {_toml_value(v)}"
        for k, v in data.items()
        if isinstance(v, list) and not any(isinstance(i, dict) for i in v)
    ]
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            lines.append(f"\n[{name}]")
            lines.append(dump_toml(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(i, dict) for i in value):
            for item in value:
                lines.append(f"\n[[{name}]]")
                lines.append(dump_toml(item, f"{name}."))
    return "\n".join(line for line in lines if line)


def parse_override(text: str) -> tuple[list[str], object]:
    """``section.key=value``; the value is read as TOML (number, bool, "string")."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def gateway_config(
    base: Path,
    workdir: Path,
    model: Path,
    metrics_port: int,
    overrides: list[tuple[list[str], object]],
) -> dict:
    with open(base, "rb") as fh:
        cfg = tomllib.load(fh)
    forced: list[tuple[list[str], object]] = [
        (["id"], GATEWAY_ID),
        (["mqtt", "host"], "127.0.0.1"),
        (["mqtt", "port"], 0),  # set once the broker runs
        (["model", "path"], str(model)),
        (["influx", "api"], 1),
        (["influx", "url"], ""),  # set once InfluxDB runs
        (["influx", "database"], DB),
        # Each probe reading fires or resolves exactly one alert.
        (["alerts", "fire_after"], 1),
        (["alerts", "resolve_after"], 1),
        (["metrics", "host"], "127.0.0.1"),
        (["metrics", "port"], metrics_port),
        (["spool", "path"], str(workdir / "gateway-spool.sqlite")),
    ]
    for path, value in forced + overrides:
        table = cfg
        for part in path[:-1]:
            table = table.setdefault(part, {})
        table[path[-1]] = value
    return cfg


class GatewayRunner:
    """``python -m gateway --config <generated toml>``, restartable (same session)."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        watch: BusWatch,
        metrics_port: int,
        tree: Path = ROOT,
    ):
        self._tree = tree
        self._config = config_path
        self._log = log_path
        self._watch = watch
        self.metrics_port = metrics_port
        self.process: ManagedProcess | None = None
        # The gateway must not pick up GATEWAY_* overrides from the caller's shell.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def pids(self) -> list[int]:
        proc = self.process.proc if self.process else None
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def start(self) -> float:
        """Start and wait for the retained ``online`` status; returns the start time."""
        self._watch.status = None
        self.process = ManagedProcess(
            "gateway",
            [sys.executable, "-m", "gateway", "--config", str(self._config)],
            self._log,
            ready=lambda: self._watch.status == b"online",
            env=self._env,
            cwd=self._tree,
        )
        started = time.time()
        self.process.start(120)
        return started

    def stop(self) -> None:
        if self.process is not None:
            code = self.process.stop(timeout_s=120)
            if code not in (0, None):
                log.warning("gateway exited with %s; see %s", code, self._log)

    def stored(self) -> int:
        """``gateway_readings_stored_total`` of the running process."""
        text = _http.request("GET", f"http://127.0.0.1:{self.metrics_port}/metrics").data
        for line in text.decode().splitlines():
            if line.startswith("gateway_readings_stored_total "):
                return int(float(line.split()[1]))
        raise RuntimeError("gateway metrics have no gateway_readings_stored_total")


# --- measuring --------------------------------------------------------------------------------


def count_points(url: str, db: str, line_prefix: str) -> int:
    series = query(url, f"SELECT count(score) FROM reading WHERE line =~ /^{line_prefix}-/", db)
    return int(series[0]["values"][0][1]) if series else 0


def wait_stored(
    progress: Callable[[], int], expected: int, stall_s: float, poll_s: float = 0.1
) -> tuple[int, float]:
    """Poll until ``progress()`` reaches ``expected`` or stops growing for ``stall_s``;
    returns (last value, time it was first seen)."""
    best, best_at = -1, time.time()
    while True:
        value = progress()
        now = time.time()
        if value > best:
            best, best_at = value, now
        if value >= expected or now - best_at > stall_s:
            return value, best_at
        time.sleep(poll_s)  # polling interval: the condition is re-checked


def stored_in_influx(url: str, db: str, prefix: str, expected: int, timeout_s: float = 30) -> int:
    """InfluxDB's count, polled until it reaches ``expected`` (writes are visible at
    once, but the gateway may still be finishing the last one) or ``timeout_s``."""
    count, _ = wait_stored(lambda: count_points(url, db, prefix), expected, timeout_s, 0.5)
    return count


# --- scenarios --------------------------------------------------------------------------------


@dataclass
class Stack:
    settings: BenchSettings
    workdir: Path
    mosquitto: Mosquitto
    influx: InfluxDB
    watch: BusWatch
    gateway: GatewayRunner
    sampler: ResourceSampler
    model: Path
    # The probe's normal reading (the model's training means).
    probe_normal: dict[str, float]
    # The naive gateway's model (an isolation_forest: it needs sklearn's score_samples).
    naive_model: Path | None = None
    load_pids: list[int] = field(default_factory=list)
    naive: ManagedProcess | None = None
    profiler: Profiler | None = None

    def load_spec(self, prefix: str, **kw) -> LoadSpec:
        s = self.settings
        return LoadSpec(
            "127.0.0.1",
            self.mosquitto.port,
            lines=s.lines,
            devices=s.devices,
            processes=s.processes,
            inflight=s.inflight,
            line_prefix=prefix,
            **kw,
        )

    def run_load(self, spec: LoadSpec, probe: LatencyProbe | None = None) -> LoadResult:
        gen = LoadGenerator(spec, name=f"load-{spec.line_prefix}").start()
        self.load_pids = gen.pids + ([probe.pid] if probe and probe.pid else [])
        if probe is not None:
            probe.go()
        try:
            return gen.join()
        finally:
            self.load_pids = [probe.pid] if probe and probe.pid else []

    def resources(self, start: float, end: float) -> dict:
        return self.sampler.summary(start, end)


def _loss(acked: int, stored: int) -> int:
    return acked - stored


def scenario_throughput(st: Stack) -> dict:
    s = st.settings
    before = st.watch.counts()
    base = st.gateway.stored()
    if s.profile:
        pid = st.gateway.pids()[0]
        st.profiler = Profiler(
            pid, s.duration_s, st.workdir / "profile.txt", gil=s.profile == "gil"
        )
    load = st.run_load(st.load_spec("tp", rate=s.rate, duration_s=s.duration_s))
    sent_end = time.time()
    at_send_end = st.gateway.stored() - base
    _, done_at = wait_stored(lambda: st.gateway.stored() - base, load.acked, s.stall_timeout_s)
    stored = stored_in_influx(st.influx.url, DB, "tp", load.acked)
    out = {
        "offered_rate": s.rate,
        "published": load.acked,
        "publish_rate": round(load.rate, 1),
        "stored": stored,
        "loss": _loss(load.acked, stored),
        "sustained_rate": round(stored / (done_at - load.first_send), 1),
        "rate_while_publishing": round(at_send_end / (sent_end - load.first_send), 1),
        "drain_after_last_send_s": round(max(done_at - load.last_send, 0.0), 2),
        "elapsed_s": round(done_at - load.first_send, 2),
        # What the gateway published meanwhile (the simulator's values include faults).
        "messages_out": dict(st.watch.counts() - before),
        "load": load.as_dict(),
        # From the first send: the publishers' start-up is not the system under load.
        "resources": st.resources(load.first_send, done_at),
    }
    if st.profiler is not None:
        out["profile"] = {"mode": s.profile, **st.profiler.finish()}
        st.profiler = None
    return out


def scenario_latency(st: Stack) -> dict:
    s = st.settings
    probe = LatencyProbe(
        ProbeSpec(
            "127.0.0.1",
            st.mosquitto.port,
            s.latency_duration_s,
            anomalous=ANOMALOUS,
            normal=st.probe_normal,
            rate=s.probe_rate,
            line="lat-probe",
            devices=PROBE_DEVICES,
        )
    ).start()
    st.load_pids = [probe.pid] if probe.pid else []
    rate = s.latency_rate - s.probe_rate
    load = st.run_load(st.load_spec("lat", rate=rate, duration_s=s.latency_duration_s), probe)
    result = probe.join()
    st.load_pids = []
    expected = load.acked + result.acked
    stored = stored_in_influx(st.influx.url, DB, "lat", expected, s.stall_timeout_s)
    end = time.time()
    return {
        "offered_rate": s.latency_rate,
        "published": expected,
        "publish_rate": round(load.rate + result.acked / s.latency_duration_s, 1),
        "stored": stored,
        "loss": _loss(expected, stored),
        "latency": result.summary(),
        "load": load.as_dict(),
        "resources": st.resources(load.first_send, end),
    }


def scenario_backlog(st: Stack) -> dict:
    s = st.settings
    st.gateway.stop()  # its persistent session stays: the broker queues for it
    load = st.run_load(st.load_spec("bl", count=s.backlog))
    started = st.gateway.start()
    ready = time.time()
    # A fresh process: its stored counter starts at zero.
    _, done_at = wait_stored(st.gateway.stored, load.acked, s.stall_timeout_s)
    stored = stored_in_influx(st.influx.url, DB, "bl", load.acked)
    return {
        "published": load.acked,
        "publish_rate": round(load.rate, 1),
        "stored": stored,
        "loss": _loss(load.acked, stored),
        "startup_s": round(ready - started, 2),
        "drain_s": round(done_at - ready, 2),
        "drain_rate": round(stored / max(done_at - ready, 1e-9), 1),
        "load": load.as_dict(),
        "resources": st.resources(started, done_at),
    }


def scenario_naive(st: Stack) -> dict:
    s = st.settings
    st.gateway.stop()
    # Otherwise the broker would queue every naive-run reading for the stopped gateway.
    drop_session(st.mosquitto.port, f"gateway-{GATEWAY_ID}")
    log_path = st.workdir / "naive.log"
    conn = f"--port {st.mosquitto.port} --influx-url {st.influx.url} --database {NAIVE_DB}"
    naive_model = st.naive_model or st.model
    naive_args = [*conn.split(), "--model", str(naive_model)]
    st.naive = ManagedProcess(
        "naive-gateway",
        [sys.executable, "-m", "bench.naive_gateway", *naive_args],
        log_path,
        ready=lambda: log_path.exists() and READY_MESSAGE in log_path.read_text(errors="replace"),
        cwd=ROOT,
    ).start(120)
    load = st.run_load(st.load_spec("nv", rate=s.naive_rate, duration_s=s.naive_duration_s))
    end = time.time()
    stored = count_points(st.influx.url, NAIVE_DB, "nv")
    resources = st.resources(load.first_send, end)
    st.naive.stop()
    st.naive = None
    return {
        "model": str(naive_model),
        "offered_rate": s.naive_rate,
        "published": load.acked,
        "stored_in_window": stored,
        "rate": round(stored / (end - load.first_send), 1),
        "kept_up": stored >= 0.98 * load.acked,
        "load": load.as_dict(),
        "resources": resources,
    }


# In this order: the backlog stops the gateway, the naive run ends its session.
RUNNERS = {
    "throughput": scenario_throughput,
    "latency": scenario_latency,
    "backlog": scenario_backlog,
    "naive": scenario_naive,
}


# --- the run ----------------------------------------------------------------------------------


def ensure_model(
    model: Path | None, models_dir: Path, retrain: bool, detector: str | None = None
) -> Path:
    """``model`` if given, else ``models_dir/<detector>/current``, trained with the real
    CLI on simulator data unless it is there already (or ``retrain``)."""
    if model is not None:
        return model
    detector = detector or DEFAULT_DETECTOR
    target = models_dir / detector
    if (target / "current").exists() and not retrain:
        return target / "current"
    log.info("training a %s model into %s", detector, target)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sim.csv"
        for argv in (
            ["sensors.simulate", "--csv", str(data), "--lines", "2", "--devices", "3",
             "--interval", "1", "--duration", "3600", "--seed", "7", "--faults", "all"],
            ["model", "train", "--csv", str(data), "--models-dir", str(target),
             "--label-column", "is_anomaly", "--fault-column", "fault",
             "--timestamp-column", "ts", "--detector", detector],
        ):  # fmt: skip
            subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, check=True, capture_output=True)
    return target / "current"


def parse_models(text: str) -> list[tuple[str, str]]:
    """``LABEL=MODEL,...`` or ``MODEL,...`` (MODEL: a detector name or a model path)."""
    out: list[tuple[str, str]] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        label, sep, value = item.partition("=")
        label, value = (label.strip(), value.strip()) if sep else (item, item)
        if not label or not value:
            raise argparse.ArgumentTypeError(f"expected LABEL=MODEL, got {item!r}")
        out.append((label, value))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"model labels must differ, got {labels}")
    if not out:
        raise argparse.ArgumentTypeError("no models given")
    return out


def resolve_models(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(label, model path) per model to run; detectors are trained or reused."""
    from model.detectors import ALL_DETECTORS

    if not args.compare_models:
        model = ensure_model(args.model, args.models_dir, args.retrain, args.detector)
        return [(args.detector or (DEFAULT_DETECTOR if args.model is None else "model"), model)]
    out = []
    for label, value in args.compare_models:
        if value in ALL_DETECTORS:
            out.append((label, ensure_model(None, args.models_dir, args.retrain, value)))
        elif Path(value).exists():
            out.append((label, Path(value)))
        else:
            raise SystemExit(f"{value!r} is neither a detector ({ALL_DETECTORS}) nor a model path")
    return out


def naive_model_for(models: list[Path], args: argparse.Namespace) -> Path:
    """An isolation_forest model for the naive gateway: one of the run's, else trained."""
    from model.artifact import read_metadata, resolve

    for model in models:
        if read_metadata(resolve(model)).get("detector") == NAIVE_DETECTOR:
            return model
    # Not --retrain: the naive baseline does not need a fresh model every time.
    return ensure_model(None, args.models_dir, False, NAIVE_DETECTOR)


def probe_readings_per_device(settings: BenchSettings) -> int:
    """How many readings the latency probe sends to its busiest device."""
    total = math.ceil(settings.latency_duration_s * settings.probe_rate)
    return max(math.ceil(total / PROBE_DEVICES), 1)


def replay_probe(
    scorer, normal: dict[str, float], readings: int, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of one probe device's readings (anomalous at even seq, normal at odd),
    fed one at a time through the model's per-device inputs as the gateway does; NaN
    where the model gives no score.  Returns (anomalous scores, normal scores)."""
    inputs = scorer.new_inputs()
    fields = scorer.raw_fields
    rows = {
        "anomalous": np.array([[ANOMALOUS[f] for f in fields]]),
        "normal": np.array([[normal[f] for f in fields]]),
    }
    step_ns = int(PROBE_DEVICES / max(rate, 1e-9) * 1e9)
    start_ns = time.time_ns()
    scores = np.full(readings, np.nan)
    key = [("lat-probe", "lat-probe-p00")]
    for seq in range(readings):
        values = rows["anomalous" if seq % 2 == 0 else "normal"]
        batch = inputs.build(key, np.array([start_ns + seq * step_ns]), values)
        if batch.index.size:
            scores[seq] = float(scorer.score(batch.X)[0])
    return scores[0::2], scores[1::2]


def probe_values(
    model: Path, alerts: dict, readings: int = 2, rate: float = 10.0
) -> tuple[dict[str, float], dict]:
    """A reading the model calls normal (the training means of its reading fields),
    checked with the anomalous one against the gateway's alert thresholds over the
    probe's whole sequence of ``readings`` per device (see :func:`replay_probe`): for a
    model with per-device state a reading's score depends on the ones before it."""
    from model.scorer import load_scorer

    scorer = load_scorer(model)
    fields = scorer.raw_fields
    if set(fields) != set(ANOMALOUS):
        raise SystemExit(f"the probe needs a model on {sorted(ANOMALOUS)}, not {list(fields)}")
    stats = scorer.metadata["feature_stats"]
    missing = [f for f in fields if f not in stats]
    if missing:
        raise SystemExit(f"model {scorer.version} has no training means of {missing}")
    normal = {f: round(float(stats[f]["mean"]), 3) for f in fields}
    high, low = replay_probe(scorer, normal, readings, rate)
    # Alert hysteresis (gateway.alerts): fires at enter, resolves below enter * exit_ratio.
    enter = float(alerts.get("enter_score") or scorer.threshold)
    exit_ = enter * float(alerts.get("exit_ratio", 1.0))
    fires = np.nan_to_num(high, nan=-np.inf) >= enter
    resolves = np.nan_to_num(low, nan=np.inf) < exit_
    if not (fires.all() and resolves.all()):
        bad_a = np.flatnonzero(~fires)
        bad_n = np.flatnonzero(~resolves)
        first = min([2 * i for i in bad_a[:1]] + [2 * i + 1 for i in bad_n[:1]])
        raise SystemExit(
            f"model {scorer.version} ({scorer.detector}) does not separate the probe "
            f"readings over the probe's {readings} readings per device: normal must score "
            f"< {exit_:.3f} (max {np.nanmax(low, initial=np.nan):.3f}, {bad_n.size} fail), "
            f"anomalous >= {enter:.3f} (min {np.nanmin(high, initial=np.nan):.3f}, "
            f"{bad_a.size} fail); first failure at seq {first}"
        )
    info = {
        "version": scorer.version,
        "detector": scorer.detector,
        "threshold": scorer.threshold,
        "stateful": scorer.stateful,
        "probe_check": {
            "readings_per_device": readings,
            "anomalous_min": round(float(high.min()), 4),
            "normal_max": round(float(low.max()), 4) if low.size else None,
            "enter": enter,
            "exit": exit_,
        },
    }
    return normal, info


def model_state(
    model: Path, devices: int, lines: int, normal: dict[str, float], readings: int = STATE_READINGS
) -> dict:
    """The model's per-device memory on the bench's throughput devices: ``readings``
    readings fed to each through ``scorer.new_inputs()``, one batch per round (as the
    gateway's batches hold one or a few readings per device), memory traced."""
    from model.inputs import MAX_DEVICES, BankInputs, WindowInputs
    from model.scorer import load_scorer

    scorer = load_scorer(model)
    spec = LoadSpec("-", 0, count=1, lines=lines, devices=devices, processes=1, line_prefix="tp")
    keys = device_table(spec, 0)
    base = np.array([normal[f] for f in scorer.raw_fields])
    rng = np.random.default_rng(0)
    start_ns = time.time_ns()
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        inputs = scorer.new_inputs()
        for r in range(readings):
            values = base + rng.normal(0.0, 0.01, (len(keys), base.size))
            inputs.build(keys, np.full(len(keys), start_ns + r * 1_000_000_000), values)
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    out: dict = {
        "inputs": type(inputs).__name__,
        "devices": len(keys),
        "readings_per_device": readings,
        "traced_bytes": traced,
        "bytes_per_device": round(traced / len(keys), 1),
        "max_devices": 0,
    }
    if isinstance(inputs, BankInputs):
        bank = inputs.bank
        arrays = bank.memory_bytes()
        # Arrays grow by doubling up to max_devices slots: what one slot costs.
        slots = getattr(getattr(bank, "_st", None), "size", 0) or bank.devices
        out.update(
            bank_devices=bank.devices,
            bank_array_bytes=arrays,
            bank_bytes_per_slot=round(arrays / slots, 1),
            max_devices=bank.params.max_devices,
        )
        # At the cap: every slot in use (no doubling slack), plus the per-device
        # bookkeeping outside the arrays (key -> slot and last-seen dicts, the keys).
        other = max(traced - arrays, 0) / len(keys)
        out["bound_mb"] = round(bank.params.max_devices * (arrays / slots + other) / 1e6, 1)
    elif isinstance(inputs, WindowInputs):
        out["max_devices"] = MAX_DEVICES
        out["bound_mb"] = round(MAX_DEVICES * out["bytes_per_device"] / 1e6, 1)
    else:
        # Each reading stands alone: nothing is kept per device (what tracemalloc saw
        # is the harness's own, e.g. numpy's caches).
        out.update(bytes_per_device=0.0, bound_mb=0.0)
    return out


def machine_info() -> dict:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "?"
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"

    import numpy
    import paho.mqtt
    import sklearn

    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "sklearn": sklearn.__version__,
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": first_line([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"]),
        "influxd": first_line([shutil.which("influxd") or "/usr/bin/influxd", "version"]),
    }


def loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(v) for v in fh.read().split()[:3]]


def check_model(
    model: Path, settings: BenchSettings, args: argparse.Namespace
) -> tuple[dict[str, float], dict]:
    """(probe normal values, model info incl. the probe check and per-device state)."""
    cfg = gateway_config(args.gateway_config, Path("."), model, 0, args.set)
    normal, info = probe_values(
        model,
        cfg.get("alerts", {}),
        probe_readings_per_device(settings),
        settings.probe_rate,
    )
    info["state"] = model_state(model, settings.devices, settings.lines, normal)
    return normal, info


def run_model(
    settings: BenchSettings,
    args: argparse.Namespace,
    workdir: Path,
    model: Path,
    checked: tuple[dict[str, float], dict],
    naive_model: Path | None,
    tree: Path = ROOT,
) -> dict:
    """The scenarios of ``settings`` against one model and the gateway of ``tree``, on a
    stack of their own."""
    workdir.mkdir(parents=True, exist_ok=True)
    normal, model_info = checked
    metrics_port = free_port()
    base_config = args.gateway_config if tree == ROOT else tree / "config" / "gateway.toml"
    cfg = gateway_config(base_config, workdir, model, metrics_port, args.set)
    result: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_before": loadavg(),
        "settings": settings.__dict__,
        "broker_nodelay": args.broker_nodelay,
        "model": {"path": str(model), **model_info},
        "gateway_tree": str(tree),
        "scenarios": {},
    }
    stack_started: list = []
    try:
        broker_extra = "set_tcp_nodelay true\n" if args.broker_nodelay else ""
        mosq = Mosquitto(workdir / "mosquitto", free_port(), extra_config=broker_extra).start()
        stack_started.append(mosq)
        influx = InfluxDB(workdir / "influxdb", free_port()).start()
        stack_started.append(influx)
        influx.create_database(DB)
        influx.create_database(NAIVE_DB)
        watch = BusWatch(mosq.port, GATEWAY_ID)
        stack_started.append(watch)
        cfg["mqtt"]["port"] = mosq.port
        cfg["influx"]["url"] = influx.url
        config_path = workdir / "gateway.toml"
        config_path.write_text(dump_toml(cfg) + "\n")
        result["gateway_config"] = cfg
        gateway = GatewayRunner(config_path, workdir / "gateway.log", watch, metrics_port, tree)
        stack: Stack

        def naive_pids() -> list[int]:
            proc = stack.naive.proc if stack.naive else None
            return [proc.pid] if proc is not None and proc.poll() is None else []

        sampler = ResourceSampler(
            {
                "gateway": gateway.pids,
                "naive": naive_pids,
                "mosquitto": lambda: [mosq.process.proc.pid] if mosq.process else [],
                "influxd": lambda: [influx.process.proc.pid] if influx.process else [],
                "loadgen": lambda: list(stack.load_pids),
                "harness": lambda: [os.getpid()],
                "py-spy": lambda: stack.profiler.pid() if stack.profiler else [],
            }
        )
        stack = Stack(
            settings, workdir, mosq, influx, watch, gateway, sampler, model, normal, naive_model
        )
        sampler.start()
        stack_started.append(sampler)
        if {"throughput", "latency", "backlog"} & set(settings.scenarios):
            gateway.start()  # also creates the persistent session the backlog needs
            stack_started.append(gateway)
        for name, scenario in RUNNERS.items():
            if name in settings.scenarios:
                log.info("scenario %s", name)
                result["scenarios"][name] = scenario(stack)
                log.info("%s: %s", name, brief(result["scenarios"][name]))
    finally:
        for part in reversed(stack_started):
            try:  # one part failing to stop must not leave the others running
                part.close() if isinstance(part, BusWatch) else part.stop()
            except Exception:
                log.exception("could not stop %s", type(part).__name__)
    if "decode" in settings.scenarios:
        log.info("scenario decode")
        result["scenarios"]["decode"] = decode_bench.run(settings.decode_messages)
    for s in result["scenarios"].values():
        add_efficiency(s)
    add_naive_ratios(result, result["scenarios"].get("naive"))
    result["loadavg_after"] = loadavg()
    return result


def add_naive_ratios(result: dict, nv: dict | None) -> None:
    tp = result["scenarios"].get("throughput")
    if tp and nv and nv["rate"] > 0:
        result["naive_ratio"] = round(tp["sustained_rate"] / nv["rate"], 1)
        if tp.get("readings_per_cpu_s") and nv.get("readings_per_cpu_s"):
            result["naive_cpu_ratio"] = round(
                tp["readings_per_cpu_s"] / nv["readings_per_cpu_s"], 1
            )


def run(settings: BenchSettings, args: argparse.Namespace, workdir: Path) -> dict:
    """One model (the result as before), or with ``--compare-models`` one run per
    model under ``runs``; the naive and decode scenarios only in the first run."""
    models = resolve_models(args)
    naive_model = None
    if "naive" in settings.scenarios:
        naive_model = naive_model_for([m for _, m in models], args)
    # Every model must pass the probe check before anything runs.
    checked = [check_model(model, settings, args) for _, model in models]
    # (label, model, check, gateway tree) per run: models compared, or the same model
    # with the baseline's gateway and then this tree's.
    if args.baseline:
        runs = [
            (f"before {args.baseline}", models[0][1], checked[0], baseline_tree(args.baseline)),
            ("after", models[0][1], checked[0], ROOT),
        ]
    else:
        runs = [
            (label, model, check, ROOT)
            for (label, model), check in zip(models, checked, strict=True)
        ]
    if len(runs) == 1:
        result = run_model(settings, args, workdir, models[0][1], checked[0], naive_model)
        return {"machine": machine_info(), **result}
    result: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "loadavg_before": loadavg(),
        "settings": settings.__dict__,
        "runs": {},
    }
    once = ("naive", "decode")
    for i, (label, model, check, tree) in enumerate(runs):
        scenarios = tuple(n for n in settings.scenarios if i == 0 or n not in once)
        log.info("run %s: %s, gateway of %s (%s)", label, model, tree, ",".join(scenarios))
        run_settings = dataclasses.replace(settings, scenarios=scenarios)
        result["runs"][label] = run_model(
            run_settings,
            args,
            workdir / label.replace(" ", "-"),
            model,
            check,
            naive_model if i == 0 else None,
            tree,
        )
    first = next(iter(result["runs"].values()))["scenarios"]
    for run_result in list(result["runs"].values())[1:]:
        add_naive_ratios(run_result, first.get("naive"))
    result["loadavg_after"] = loadavg()
    return result


def build_settings(args: argparse.Namespace) -> BenchSettings:
    values = {}
    if args.quick:
        values.update(QUICK)
    for name in BenchSettings.__dataclass_fields__:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return BenchSettings(**values)


def main(argv: list[str] | None = None) -> int:
    from model.detectors import ALL_DETECTORS

    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_gateway",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--quick", action="store_true", help="short scenarios (~1 min)")
    parser.add_argument("--duration", dest="duration_s", type=float, help="(1) seconds [60]")
    parser.add_argument("--rate", type=float, help="(1) readings/s, 0 = max [12000]")
    parser.add_argument("--latency-duration", dest="latency_duration_s", type=float)
    parser.add_argument("--latency-rate", type=float, help="(2) total readings/s [1000]")
    parser.add_argument("--probe-rate", type=float, help="(2) probe readings/s [10]")
    parser.add_argument("--backlog", type=int, help="(3) readings queued [1000000]")
    parser.add_argument("--naive-duration", dest="naive_duration_s", type=float)
    parser.add_argument("--naive-rate", type=float, help="(4) offered readings/s [1000]")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--lines", type=int)
    parser.add_argument("--processes", type=int, help="publisher processes [2]")
    parser.add_argument("--inflight", type=int, help="unacked publishes per process [2000]")
    parser.add_argument("--decode-messages", type=int)
    parser.add_argument(
        "--only",
        dest="scenarios",
        type=lambda v: tuple(x.strip() for x in v.split(",") if x.strip()),
        help=f"comma list of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="busy",
        choices=("busy", "gil"),
        help="py-spy the gateway during (1): running threads, or only the GIL holder",
    )
    parser.add_argument("--model", type=Path, help="model to use (default: train/reuse)")
    parser.add_argument(
        "--detector",
        choices=sorted(ALL_DETECTORS),
        help=f"detector to train/reuse without --model [{DEFAULT_DETECTOR}]",
    )
    parser.add_argument(
        "--compare-models",
        nargs="?",
        const=parse_models(COMPARE_DEFAULT),
        type=parse_models,
        metavar="LABEL=MODEL,...",
        help=f"run (1)-(3) once per model (detector name or path) and compare [{COMPARE_DEFAULT}]",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="run (1)-(3) with the gateway of git revision REV, then this tree's, and compare",
    )
    parser.add_argument("--models-dir", type=Path, default=ROOT / "var" / "bench" / "models")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--gateway-config", type=Path, default=ROOT / "config" / "gateway.toml")
    parser.add_argument(
        "--set",
        type=parse_override,
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="gateway config override, e.g. pipeline.batch_max=1000 (repeatable)",
    )
    parser.add_argument(
        "--broker-nodelay",
        action="store_true",
        help="run Mosquitto with set_tcp_nodelay true (default: Mosquitto's default, off)",
    )
    parser.add_argument("--output", type=Path, help="JSON file [var/bench/gateway-<time>.json]")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = build_settings(args)
    unknown = set(settings.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {sorted(unknown)}")
    if args.compare_models and args.baseline:
        parser.error("give --compare-models or --baseline, not both")
    if args.compare_models and (args.model or args.detector):
        parser.error("--compare-models names its models: drop --model/--detector")
    if args.detector and args.model:
        parser.error("give --model or --detector, not both")

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        result = run(settings, args, workdir)
    except BaseException:
        log.error("benchmark failed; logs are in %s", workdir)
        raise
    output = args.output or (
        ROOT / "var" / "bench" / f"gateway-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    runs = result.get("runs") or {"": result}
    for label, _ in runs.items():
        raw_profile = workdir / label.replace(" ", "-") / "profile.txt"
        if raw_profile.exists():  # collapsed stacks, e.g. for flamegraph.pl or speedscope
            suffix = f".{label}.pyspy.txt" if label else ".pyspy.txt"
            shutil.copyfile(raw_profile, output.with_suffix(suffix))
    if args.keep:
        log.info("work dir kept: %s", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(format_report(result))
    print(f"\nresults: {output}")
    losses = [
        s.get("loss") for r in runs.values() for s in r["scenarios"].values() if isinstance(s, dict)
    ]
    return 1 if any(loss for loss in losses if loss is not None) else 0


if __name__ == "__main__":
    sys.exit(main())
