"""Load generator: N publisher processes, QoS 1, paced or as fast as the broker acks.

    gen = LoadGenerator(LoadSpec(host, port, rate=10_000, duration_s=60)).start()
    result = gen.join()          # LoadResult: exact broker-acknowledged count, rates

Each process owns one MQTT 5 session (``bench.mqtt_wire``: paho would cost more CPU
per publish than the gateway being measured) with a large in-flight window and its own
share of the devices (device ``i`` belongs to process ``i % processes``), and sends
round-robin over them.  Pacing is a token bucket per process (``rate / processes``);
``rate=0`` sends as fast as the window of unacknowledged messages allows.

Every payload is a valid contract reading built with ``contract.encode_reading``:
``seq`` counts per device and ``ts`` is the send time in epoch seconds with µs, made
strictly increasing per device (InfluxDB would store two readings of a device with
the same timestamp as one point, which would look like loss).  Each device follows its
own simulator series (faults at the simulator's default rate) in real time,
interpolated between the simulated seconds: a device sending 50 readings/s then
changes as fast as a real machine does, not 50 times faster, so the gateway's
sensor-fault checks (impossible jumps, stuck values) see realistic data.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import queue
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from bench.mqtt_wire import WirePublisher, utf8_field
from contract import encode_reading, reading_topic

FIELDS = ("temperature_c", "humidity_pct", "sound_db")
# Simulated seconds per device; a run longer than this wraps around (one jump).
_SERIES_STEPS = 600
# Sensor noise added to every value (far below the gateway's jump limits).
_NOISE = 0.0005
_CONNECT_TIMEOUT_S = 20.0
# A paced process that fell this far behind its schedule forgets the debt instead of
# bursting to catch up (the achieved rate then shows it could not keep the pace).
_MAX_BURST_S = 0.1


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    # Total readings/s over all processes; 0 = as fast as possible.
    rate: float = 0.0
    # Stop after this long, or after ``count`` readings in total (whichever is given).
    duration_s: float | None = None
    count: int | None = None
    lines: int = 10
    devices: int = 200
    line_prefix: str = "bench"
    processes: int = 2
    # Unacknowledged QoS 1 publishes per process.
    inflight: int = 2000
    seed: int = 1
    # Seconds to wait for the last PUBACKs after sending stops.
    flush_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if (self.duration_s is None) == (self.count is None):
            raise ValueError("give exactly one of duration_s and count")
        if self.processes < 1 or self.devices < self.processes or self.lines < 1:
            raise ValueError("need processes >= 1, devices >= processes, lines >= 1")
        if self.rate < 0 or self.inflight < 1:
            raise ValueError("rate must be >= 0 and inflight >= 1")


@dataclass
class LoadResult:
    attempted: int = 0
    # Acknowledged by the broker (PUBACK with a success reason code): the exact
    # number of readings the gateway is owed.
    acked: int = 0
    refused: int = 0
    unacked: int = 0
    # Wall-clock (time.time) of the first and last send over all processes.
    first_send: float = 0.0
    last_send: float = 0.0
    per_process: list[dict] = field(default_factory=list)

    @property
    def send_window_s(self) -> float:
        return max(self.last_send - self.first_send, 1e-9)

    @property
    def rate(self) -> float:
        """Acknowledged readings per second of sending."""
        return self.acked / self.send_window_s

    def as_dict(self) -> dict:
        out = asdict(self)
        out["send_window_s"] = round(self.send_window_s, 3)
        out["rate"] = round(self.rate, 1)
        return out


def line_name(prefix: str, index: int) -> str:
    return f"{prefix}-l{index:02d}"


def device_table(spec: LoadSpec, worker: int) -> list[tuple[str, str]]:
    """(line, device) pairs owned by one process."""
    return [
        (line_name(spec.line_prefix, i % spec.lines), f"{spec.line_prefix}-d{i:04d}")
        for i in range(worker, spec.devices, spec.processes)
    ]


def device_series(seed: int, n_devices: int) -> list[list[tuple[float, ...]]]:
    """Per device, one value tuple (``FIELDS`` order) per simulated second."""
    from sensors.simulator import Simulator

    sim = Simulator(lines=1, devices_per_line=n_devices, seed=seed, start_ts=0.0)
    series: dict[str, list[tuple[float, ...]]] = {d.device: [] for d in sim.devices}
    for r in sim.run(max_steps=_SERIES_STEPS):
        series[r.device].append(tuple(r.values[f] for f in FIELDS))
    return list(series.values())


def interpolate(
    series: list[tuple[float, ...]], t: float, noise: Callable[[], float]
) -> dict[str, float]:
    """The device's values ``t`` seconds into its series, linear between seconds, plus
    sensor noise at the 4th decimal.  Without the noise a field that the simulator
    repeats for a second (it rounds to 0.01) would be sent unchanged tens of times in
    a row and trip the gateway's stuck-sensor check, which counts readings."""
    k = int(t)
    a = series[k % len(series)]
    b = series[(k + 1) % len(series)]
    frac = t - k
    return {f: round(a[j] + (b[j] - a[j]) * frac + noise(), 4) for j, f in enumerate(FIELDS)}


# Publishes framed per ``send`` when running flat out (a paced sender sends what is due).
_CHUNK = 64
# ...and when paced, sends what is due at most every 2 ms.
_PACE_S = 0.002


def _send_loop(
    pub: WirePublisher, spec: LoadSpec, worker: int, series: list[list[tuple[float, ...]]]
) -> tuple[int, float, float]:
    """Send until the duration or quota is reached; (sent, first send, last send)."""
    devices = device_table(spec, worker)
    topics = [utf8_field(reading_topic(line, device)) for line, device in devices]
    n_dev = len(devices)
    # Devices start at different points of their series (seconds).
    offsets = [(d * 7.3) % 60.0 for d in range(n_dev)]
    rng = random.Random(spec.seed + worker)
    noise = functools.partial(rng.uniform, -_NOISE, _NOISE)
    last_us = [0] * n_dev
    seqs = [0] * n_dev
    share = spec.processes
    rate = spec.rate / share
    # A paced sender wakes when this many are due, not for every single one.
    step = max(1.0, min(_CHUNK, rate * _PACE_S))
    quota = None
    if spec.count is not None:
        quota = spec.count // share + (1 if worker < spec.count % share else 0)
    publish = pub.publish
    start = time.perf_counter()
    deadline = start + spec.duration_s if spec.duration_s is not None else None
    first_send = wall_start = time.time()
    schedule_start = start
    i = 0
    while True:
        now = time.perf_counter()
        if (deadline is not None and now >= deadline) or (quota is not None and i >= quota):
            break
        n = _CHUNK if quota is None else min(_CHUNK, quota - i)
        if rate:
            due = (now - schedule_start) * rate
            if due - i > rate * _MAX_BURST_S:
                schedule_start = now - i / rate
                due = i
            if due - i < step:
                pub.service(min((i + step - due) / rate, 0.005))
                continue
            n = min(n, int(due - i))
        if pub.window <= 0:
            pub.service(0.05)  # window full: wait for PUBACKs
            continue
        for _ in range(min(n, pub.window)):
            d = i % n_dev
            now_us = time.time_ns() // 1000
            if now_us <= last_us[d]:
                now_us = last_us[d] + 1
            last_us[d] = now_us
            ts = now_us / 1e6
            values = interpolate(series[d], ts - wall_start + offsets[d], noise)
            publish(topics[d], encode_reading(values, ts, seqs[d]))
            seqs[d] += 1
            i += 1
        pub.service()
    return i, first_send, time.time()


def _worker(spec: LoadSpec, worker: int, client_id: str, ready, go, results) -> None:
    # Simulated before "ready", so every process starts sending at "go" and the
    # harness's CPU window holds only the sending.
    series = device_series(spec.seed + worker, len(device_table(spec, worker)))
    pub = WirePublisher(spec.host, spec.port, client_id, spec.inflight)
    try:
        pub.connect(_CONNECT_TIMEOUT_S)
    except Exception as exc:
        results.put({"worker": worker, "error": f"{type(exc).__name__}: {exc}"})
        return
    ready.put(worker)
    go.wait()
    try:
        cpu_before = time.process_time()
        sent, first, last = _send_loop(pub, spec, worker, series)
        cpu_s = time.process_time() - cpu_before
        pub.flush(spec.flush_timeout_s)
    except Exception as exc:  # report it to the harness instead of dying silently
        results.put({"worker": worker, "error": f"{type(exc).__name__}: {exc}"})
        return
    out = {
        "worker": worker,
        "attempted": sent,
        "acked": pub.acked,
        "refused": pub.refused,
        "unacked": pub.pending,
        "first_send": first,
        "last_send": last,
        # This process's own CPU (user + system) while sending.
        "send_cpu_s": round(cpu_s, 3),
    }
    pub.close()
    results.put(out)


class LoadGenerator:
    """Starts the publisher processes (all connected before any sends), then joins."""

    def __init__(self, spec: LoadSpec, name: str = "loadgen"):
        self.spec = spec
        self._name = name
        self._ctx = mp.get_context("spawn")  # no forked copies of the harness's threads
        self._procs: list = []
        self._results = self._ctx.Queue()
        self._go = self._ctx.Event()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def start(self, timeout_s: float = 60.0) -> LoadGenerator:
        ready = self._ctx.Queue()
        for w in range(self.spec.processes):
            proc = self._ctx.Process(
                target=_worker,
                args=(self.spec, w, f"{self._name}-{w}", ready, self._go, self._results),
                name=f"{self._name}-{w}",
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
        deadline = time.monotonic() + timeout_s
        for _ in self._procs:
            try:
                ready.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                self.terminate()
                failures = self._drain_errors()
                raise RuntimeError(f"load generator did not connect: {failures}") from None
        self._go.set()
        return self

    def _drain_errors(self) -> list[str]:
        errors = []
        while True:
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return errors
            if "error" in item:
                errors.append(item["error"])

    def join(self, timeout_s: float | None = None) -> LoadResult:
        """Wait for every process to finish sending and flushing; sum their counts."""
        if timeout_s is None:
            # Count mode: allow for as little as 500 readings/s.
            budget = self.spec.duration_s or (self.spec.count or 0) / 500
            timeout_s = budget + self.spec.flush_timeout_s + 600.0
        deadline = time.monotonic() + timeout_s
        parts = []
        for _ in self._procs:
            try:
                part = self._results.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                self.terminate()
                raise RuntimeError("load generator did not finish in time") from None
            if "error" in part:
                self.terminate()
                raise RuntimeError(f"load generator failed: {part['error']}")
            parts.append(part)
        for proc in self._procs:
            proc.join(10)
        parts.sort(key=lambda p: p["worker"])
        return LoadResult(
            attempted=sum(p["attempted"] for p in parts),
            acked=sum(p["acked"] for p in parts),
            refused=sum(p["refused"] for p in parts),
            unacked=sum(p["unacked"] for p in parts),
            first_send=min(p["first_send"] for p in parts),
            last_send=max(p["last_send"] for p in parts),
            per_process=parts,
        )

    def terminate(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def run_load(spec: LoadSpec) -> LoadResult:
    return LoadGenerator(spec).start().join()
