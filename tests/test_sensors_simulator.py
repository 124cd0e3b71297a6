"""Simulator: determinism, plausible physics, labelled faults, CSV, publishing to a real broker."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from itertools import islice, pairwise
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.mqtt import MqttSettings
from contract import READING_SUBSCRIPTION, decode_reading, encode_reading, reading_topic
from contract.fields import DEFAULT_FIELDS
from devstack.process import free_port, wait_until
from sensors.dataset_writer import HEADER, write_dataset
from sensors.faults import FAULT_TYPES, parse_fault_types
from sensors.sim_publish import run_publish
from sensors.simulate import main as simulate_main
from sensors.simulator import SimReading, Simulator, device_names
from tests.helpers import ROOT, Collector, mosquitto_pub, unique

TEMP, HUM, SOUND = "temperature_c", "humidity_pct", "sound_db"


# --- a minimal Mosquitto config of its own: the ACL test below depends on it -----------


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def run_mosquitto(run_dir: Path, extra_config: str = "") -> Iterator[int]:
    """Start mosquitto on a free port; yields the port once it accepts connections."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # otherwise it drops to a user that may not exist
    conf = run_dir / "mosquitto.conf"
    conf.write_text("\n".join([*lines, extra_config]) + "\n")
    log_path = run_dir / "mosquitto.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log_file, stderr=log_file)
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {log_path.read_text()}")
            return _accepts(port)

        wait_until(listening, 10, "mosquitto to listen")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory) -> Iterator[int]:
    with run_mosquitto(tmp_path_factory.mktemp("mosquitto")) as port:
        yield port


def settings_for(port: int) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port)


def open_collector(port: int) -> tuple[Collector, str]:
    """A subscriber to all readings and to a marker topic of its own."""
    marker = f"test/sentinel/{unique('s')}"
    return Collector(port, [READING_SUBSCRIPTION, marker]), marker


def collect_until_marker(collector: Collector, port: int, marker: str) -> list:
    """Every reading the broker delivered before a marker sent after publishing ended.

    The broker forwards to one subscriber in the order it accepted the messages, so
    once the marker arrives every acknowledged reading has arrived too.
    """
    mosquitto_pub(port, marker, "end")
    collector.wait_for(lambda m: m.topic == marker, timeout_s=10)
    return collector.matching(lambda m: m.topic.endswith("/reading"))


# --- helpers ----------------------------------------------------------------------------


def take(sim: Simulator, steps: int, start_ts: float = 1_700_000_000.0) -> list[SimReading]:
    return list(sim.run(start_ts=start_ts, max_steps=steps))


def by_device(readings: list[SimReading]) -> dict[str, list[SimReading]]:
    out: dict[str, list[SimReading]] = defaultdict(list)
    for r in readings:
        out[r.device].append(r)
    return out


def episodes(readings: list[SimReading], label: str) -> list[list[SimReading]]:
    """Runs of consecutive samples of one device carrying ``label``."""
    runs: list[list[SimReading]] = []
    for device_readings in by_device(readings).values():
        current: list[SimReading] = []
        for r in device_readings:
            if r.fault == label and current and r.seq == current[-1].seq + 1:
                current.append(r)
            else:
                if current:
                    runs.append(current)
                current = [r] if r.fault == label else []
        if current:
            runs.append(current)
    return runs


# --- determinism and layout ---------------------------------------------------------------


def test_same_seed_same_stream_different_seed_different():
    a = take(Simulator(lines=2, devices_per_line=2, seed=5), 1800)
    b = take(Simulator(lines=2, devices_per_line=2, seed=5), 1800)
    c = take(Simulator(lines=2, devices_per_line=2, seed=6), 1800)
    assert a == b
    assert [r.values for r in a[:50]] != [r.values for r in c[:50]]


def test_faults_do_not_change_the_clean_signal():
    """Faults draw from their own stream: unlabelled readings equal a fault-free run."""
    faulty = take(Simulator(devices_per_line=3, seed=3, fault_rate_per_hour=20), 3600)
    clean = {
        (r.device, r.seq): r
        for r in take(Simulator(devices_per_line=3, seed=3, fault_types=()), 3600)
    }
    normal = [r for r in faulty if r.fault == "none"]
    assert len(normal) > len(faulty) // 3
    assert all(r.values == clean[r.device, r.seq].values for r in normal)


def test_device_names_are_unique_across_lines():
    ids = device_names(2, 3)
    assert [(d.line, d.device) for d in ids] == [
        ("line1", "press-01"),
        ("line1", "press-02"),
        ("line1", "press-03"),
        ("line2", "press-04"),
        ("line2", "press-05"),
        ("line2", "press-06"),
    ]
    custom = device_names(1, 120, device_prefix="mill", line_prefix="hall")
    assert custom[0].device == "mill-001" and custom[-1].device == "mill-120"
    assert {d.line for d in custom} == {"hall1"}


def test_round_robin_time_order_seq_and_distinct_timestamps():
    sim = Simulator(lines=2, devices_per_line=3, interval_s=0.5, seed=1, fault_types=())
    readings = take(sim, 200)
    assert len(readings) == 200 * 6
    assert [r.device for r in readings[:6]] == [d.device for d in sim.devices]
    ts = [r.ts for r in readings]
    assert all(b > a for a, b in pairwise(ts))
    for device_readings in by_device(readings).values():
        assert [r.seq for r in device_readings] == list(range(200))
        gaps = np.diff([r.ts for r in device_readings])
        assert np.allclose(gaps, 0.5, atol=0.0011)


# --- plausibility ---------------------------------------------------------------------------


def test_normal_behaviour_is_physically_plausible():
    readings = take(Simulator(lines=1, devices_per_line=4, seed=11, fault_types=()), 3600)
    for device, rs in by_device(readings).items():
        t = np.array([r.values[TEMP] for r in rs])
        h = np.array([r.values[HUM] for r in rs])
        s = np.array([r.values[SOUND] for r in rs])
        assert t.min() > 18 and t.max() < 85, device
        assert h.min() > 25 and h.max() < 65, device
        assert s.min() > 40 and s.max() < 95, device
        running = s > 65
        # A production cycle: the machine both runs and idles within an hour.
        assert 0.3 < running.mean() < 0.9, device
        assert t[running].mean() > t[~running].mean() + 8, device
        assert np.corrcoef(t, s)[0, 1] > 0.5, device
        # Thermal lag: temperature never jumps, while sound does at a state change.
        assert np.abs(np.diff(t)).max() < 5, device
        assert np.abs(s[5:] - s[:-5]).max() > 10, device
        # Humidity is a slow ambient variation.
        step = np.abs(np.diff(h)).mean()
        assert step < 0.3 and h.std() > 4 * step, device


def test_values_stay_in_contract_ranges_and_encode_valid_payloads():
    sim = Simulator(lines=2, devices_per_line=3, seed=2, fault_rate_per_hour=30)
    now = time.time()
    readings = list(islice(sim.run(start_ts=sim.backdated_start(count=5000, now=now)), 5000))
    ranges = {f.name: (f.minimum, f.maximum) for f in DEFAULT_FIELDS}
    for r in readings:
        assert set(r.values) == set(ranges)
        for name, value in r.values.items():
            assert ranges[name][0] <= value <= ranges[name][1]
        decoded = decode_reading(
            reading_topic(r.line, r.device),
            encode_reading(r.values, ts=r.ts, seq=r.seq),
            received_ns=int(now * 1e9),
        )
        assert decoded.values == r.values and decoded.seq == r.seq


# --- faults -----------------------------------------------------------------------------------


def test_parse_fault_types():
    assert parse_fault_types("all") == FAULT_TYPES
    assert parse_fault_types("none") == ()
    assert parse_fault_types("") == ()
    assert parse_fault_types("spike, drift,spike") == ("spike", "drift")
    with pytest.raises(ValueError, match="unknown fault"):
        parse_fault_types("spike,gremlins")


def test_labels_are_consistent_and_rates_respected():
    sim = Simulator(lines=2, devices_per_line=5, seed=9, fault_rate_per_hour=6)
    run = sim.run(start_ts=0.0, max_steps=3600)
    readings = list(run)
    assert {r.fault for r in readings} <= {*FAULT_TYPES, "none"} - {"dropout"}
    assert all(r.is_anomaly == int(r.fault != "none") for r in readings)
    assert set(run.episodes) == set(FAULT_TYPES)
    # 10 device-hours at 6 per hour; starts pause while a fault is active.
    assert 20 < sum(run.episodes.values()) < 90
    assert len(readings) + run.dropped == 3600 * 10
    assert run.labels == Counter(r.fault for r in readings)

    quiet = list(Simulator(devices_per_line=3, fault_rate_per_hour=0).run(max_steps=600))
    assert {r.fault for r in quiet} == {"none"}


FAULTY_STEPS = 7200


def fault_pair(kind: str) -> tuple[list[SimReading], dict[tuple[str, int], SimReading]]:
    """A run with only ``kind`` faults, and the same plant without faults."""
    common = {"lines": 1, "devices_per_line": 2, "seed": 21}
    faulty = take(Simulator(**common, fault_types=(kind,), fault_rate_per_hour=20), FAULTY_STEPS)
    clean = take(Simulator(**common, fault_types=()), FAULTY_STEPS)
    return faulty, {(r.device, r.seq): r for r in clean}


def changed_fields(r: SimReading, clean: SimReading) -> set[str]:
    return {name for name in r.values if r.values[name] != clean.values[name]}


@pytest.mark.parametrize("kind", [f for f in FAULT_TYPES if f != "dropout"])
def test_fault_signature(kind: str):
    faulty, clean = fault_pair(kind)
    labelled = [r for r in faulty if r.fault == kind]
    assert labelled, f"no {kind} in {FAULTY_STEPS} steps"
    assert all(r.is_anomaly == 1 for r in labelled)
    assert all(r.values == clean[r.device, r.seq].values for r in faulty if r.fault == "none")
    # Episodes cut short by the end of the run do not show their full signature.
    runs = [run for run in episodes(faulty, kind) if run[-1].seq < FAULTY_STEPS - 1]
    assert runs
    if kind == "spike":
        for run in runs:
            assert len(run) <= 3
            for r in run:
                base = clean[r.device, r.seq]
                jumps = [abs(r.values[f] - base.values[f]) for f in (TEMP, SOUND)]
                assert max(jumps) >= 19.99 and min(jumps) == 0
                assert r.values[HUM] == base.values[HUM]
    elif kind == "drift":
        for run in runs:
            offsets = [r.values[TEMP] - clean[r.device, r.seq].values[TEMP] for r in run]
            assert all(changed_fields(r, clean[r.device, r.seq]) <= {TEMP} for r in run)
            # Linear growth: the offset's magnitude keeps rising, one sign throughout.
            assert all(abs(b) >= abs(a) - 0.011 for a, b in pairwise(offsets))
            assert len({np.sign(o) for o in offsets if abs(o) > 0.02}) == 1
            assert abs(offsets[-1]) > 2.5
    elif kind == "stuck":
        for run in runs:
            assert len(run) >= 30
            frozen = [f for f in (TEMP, HUM, SOUND) if len({r.values[f] for r in run}) == 1]
            assert len(frozen) >= 1
            field = frozen[0]
            if run[0].seq > 0:  # frozen at the reading before the fault
                before = clean[run[0].device, run[0].seq - 1]
                assert run[0].values[field] == before.values[field]
    elif kind == "noise_burst":
        diffs = [r.values[SOUND] - clean[r.device, r.seq].values[SOUND] for r in labelled]
        assert all(changed_fields(r, clean[r.device, r.seq]) <= {SOUND} for r in labelled)
        assert np.std(diffs) > 3.0
    elif kind == "humidity_excursion":
        assert all(r.values[HUM] > 75 for r in labelled)
        assert all(changed_fields(r, clean[r.device, r.seq]) <= {HUM} for r in labelled)


def test_dropout_leaves_gaps_in_seq_and_ts():
    sim = Simulator(
        lines=1, devices_per_line=2, seed=4, fault_types=("dropout",), fault_rate_per_hour=20
    )
    run = sim.run(start_ts=1_700_000_000.0, max_steps=FAULTY_STEPS)
    readings = list(run)
    assert all(r.fault == "none" and r.is_anomaly == 0 for r in readings)
    missing = 0
    gaps = 0
    for rs in by_device(readings).values():
        for a, b in pairwise(rs):
            if b.seq - a.seq > 1:
                gaps += 1
                missing += b.seq - a.seq - 1
                assert b.ts - a.ts == pytest.approx((b.seq - a.seq) * sim.interval_s, abs=0.002)
                assert b.seq - a.seq - 1 >= 9  # at least ~10 s of silence
    assert gaps > 0
    # Dropouts at the very end of the run leave no gap behind them.
    assert missing <= run.dropped
    assert run.dropped == FAULTY_STEPS * 2 - len(readings)


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize("faults", [(), ("dropout",)])
def test_backdated_run_lies_in_the_past(faults):
    sim = Simulator(lines=2, devices_per_line=3, seed=8, fault_types=faults, fault_rate_per_hour=30)
    now = time.time()
    start = sim.backdated_start(count=3000, now=now)
    readings = list(islice(sim.run(start_ts=start), 3000))
    assert readings[-1].ts < now
    assert readings[-1].ts > now - 3 * sim.interval_s * 3000 / 6
    seen = {(r.device, r.ts) for r in readings}
    assert len(seen) == len(readings)
    steps = sim.steps_for_count(3000)
    assert len(list(sim.run(max_steps=steps))) >= 3000 > len(list(sim.run(max_steps=steps - 1)))
    by_duration = sim.backdated_start(duration_s=600, now=now)
    assert list(sim.run(start_ts=by_duration, max_steps=600))[-1].ts < now


# --- CSV dataset ------------------------------------------------------------------------------


def test_dataset_writer_layout(tmp_path):
    sim = Simulator(lines=1, devices_per_line=2, seed=12, fault_rate_per_hour=30)
    readings = take(sim, 1800)
    path = tmp_path / "data.csv"
    assert write_dataset(path, readings) == len(readings)
    text = path.read_text()
    assert text.splitlines()[0] == (
        "ts,line,device,seq,temperature_c,humidity_pct,sound_db,fault,is_anomaly"
    )
    rows = list(csv.DictReader(text.splitlines()))
    assert tuple(rows[0]) == HEADER
    assert len(rows) == len(readings)
    for row, r in zip(rows, readings, strict=True):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["ts"])
        assert datetime.fromisoformat(row["ts"]).timestamp() == pytest.approx(r.ts, abs=5e-4)
        assert (row["line"], row["device"], int(row["seq"])) == (r.line, r.device, r.seq)
        assert float(row["temperature_c"]) == r.values[TEMP]
        assert float(row["humidity_pct"]) == r.values[HUM]
        assert float(row["sound_db"]) == r.values[SOUND]
        assert (row["fault"], int(row["is_anomaly"])) == (r.fault, r.is_anomaly)
    assert {row["fault"] for row in rows} - {"none"}


def test_simulate_cli_csv_is_deterministic(tmp_path):
    args = ["--lines", "1", "--devices", "2", "--seed", "3", "--start", "2026-01-05T06:00:00Z"]
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert simulate_main([*args, "--csv", str(first), "--count", "500"]) == 0
    assert simulate_main([*args, "--csv", str(second), "--count", "500"]) == 0
    assert first.read_bytes() == second.read_bytes()
    rows = list(csv.DictReader(first.open()))
    assert len(rows) == 500
    assert rows[0]["ts"] == "2026-01-05T06:00:00.000Z"


def test_simulate_cli_module_writes_a_dataset_ending_before_now(tmp_path):
    out = tmp_path / "sim.csv"
    started = time.time()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sensors.simulate",
            "--csv",
            str(out),
            "--duration",
            "120",
            "--interval",
            "1",
            "--faults",
            "spike,drift",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 120 * 6
    last = datetime.fromisoformat(rows[-1]["ts"]).timestamp()
    assert started - 125 < last <= time.time()
    assert "wrote 720 readings" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--csv", "x.csv"],  # needs --count or --duration
        ["--speed", "0"],  # ditto
        ["--csv", "x.csv", "--count", "5", "--speed", "2"],
        ["--faults", "gremlins", "--count", "5", "--csv", "x.csv"],
        ["--speed", "-1"],
        ["--interval", "0.001", "--csv", "x.csv", "--count", "5"],
    ],
)
def test_simulate_cli_rejects_bad_usage(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        simulate_main(argv)
    assert exc.value.code == 2


# --- publishing to a real broker --------------------------------------------------------------


def test_run_publish_delivers_exactly_the_acknowledged_readings(broker_port, tmp_path):
    collector, marker = open_collector(broker_port)
    try:
        sim = Simulator(
            lines=2,
            devices_per_line=3,
            seed=13,
            fault_rate_per_hour=20,
            device_prefix=unique("sim"),
        )
        labels = tmp_path / "labels.csv"
        with labels.open("w", newline="") as out:
            stats = run_publish(settings_for(broker_port), sim, count=500, speed=0, labels_out=out)
        received = collect_until_marker(collector, broker_port, marker)
    finally:
        collector.close()
    done = time.time()
    assert stats.complete and stats.published == stats.queued == 500
    assert len(received) == 500
    per_topic = Counter(m.topic for m in received)
    assert per_topic == {reading_topic(*key): n for key, n in stats.per_device.items()}
    seen = set()
    for message in received:
        reading = decode_reading(message.topic, message.payload)
        body = orjson.loads(message.payload)
        assert set(body) == {TEMP, HUM, SOUND, "ts", "seq"}  # no labels on the wire
        assert reading.ts_ns / 1e9 <= done
        seen.add((reading.device, reading.ts_ns))
    assert len(seen) == 500
    label_rows = list(csv.DictReader(labels.open()))
    assert len(label_rows) == 500
    assert Counter(r["fault"] for r in label_rows) == stats.labels
    assert sum(stats.labels.values()) == 500


def test_run_publish_paced_uses_the_wall_clock(broker_port):
    collector, marker = open_collector(broker_port)
    try:
        sim = Simulator(
            lines=1,
            devices_per_line=2,
            interval_s=0.05,
            seed=14,
            fault_types=(),
            device_prefix=unique("paced"),
        )
        began = time.time()
        stats = run_publish(settings_for(broker_port), sim, count=20, speed=1)
        received = collect_until_marker(collector, broker_port, marker)
    finally:
        collector.close()
    assert stats.published == len(received) == 20
    assert stats.elapsed_s >= 9 * 0.05 * 0.9
    per_device: dict[str, list[float]] = defaultdict(list)
    for message in received:
        reading = decode_reading(message.topic, message.payload)
        per_device[reading.device].append(reading.ts_ns / 1e9)
    for stamps in per_device.values():
        assert began - 0.01 <= stamps[0] and stamps[-1] <= time.time()
        assert np.allclose(np.diff(stamps), 0.05, atol=0.03)


def test_refused_publishes_are_not_counted(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic write factory/line1/#\n")
    with run_mosquitto(tmp_path / "broker", f"acl_file {acl}") as port:
        sim = Simulator(lines=2, devices_per_line=1, seed=15, fault_types=())
        stats = run_publish(settings_for(port), sim, count=40, speed=0)
    assert stats.queued == 40
    assert stats.published == 20 and stats.refused == 20
    assert not stats.complete


def test_simulate_cli_stops_cleanly_on_sigterm(broker_port):
    prefix = unique("term")
    collector, marker = open_collector(broker_port)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sensors.simulate",
            "--lines",
            "1",
            "--devices",
            "2",
            "--interval",
            "0.1",
            "--speed",
            "1",
            "--device-prefix",
            prefix,
            "--faults",
            "none",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SENSORS_MQTT_HOST": "127.0.0.1", "SENSORS_MQTT_PORT": str(broker_port)},
    )
    try:
        collector.wait_for(lambda m: prefix in m.topic, timeout_s=15, count=4)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
        received = [
            m for m in collect_until_marker(collector, broker_port, marker) if prefix in m.topic
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        collector.close()
    assert proc.returncode == 0, stderr
    published = int(re.search(r"published (\d+) readings", stderr).group(1))
    assert published == len(received) >= 4
