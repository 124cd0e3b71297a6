"""CSV replay: column mapping, bad rows, pacing and re-stamping, publishing to a real broker."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from common.mqtt import MqttSettings
from contract import decode_reading
from contract.timestamps import CSV_DEFAULT, CsvTimeRules, parse_csv_ns, timezone_named
from sensors.csv_source import (
    BadRows,
    CsvSource,
    SourceError,
    parse_field_map,
    plan_columns,
)
from sensors.pacing import Pacer, ms_after
from sensors.replay import main as replay_main
from sensors.replay import run_replay
from tests.helpers import ROOT, unique
from tests.test_sensors_simulator import collect_until_marker, open_collector, run_mosquitto

ALIAS_HEADER = "Timestamp,Temperature_C,Humidity_%,Sound_Volume_dB"


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory) -> Iterator[int]:
    with run_mosquitto(tmp_path_factory.mktemp("mosquitto")) as port:
        yield port


def write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


# --- parsing and column plans -------------------------------------------------------------


def parse_timestamp(text: str, rules: CsvTimeRules = CSV_DEFAULT) -> float:
    return parse_csv_ns(text, rules) / 1_000_000_000


def test_timestamps_use_the_one_parser():
    assert parse_timestamp("2024-03-01T10:00:00Z") == 1709287200.0
    assert parse_timestamp("2024-03-01T11:00:00+01:00") == 1709287200.0
    assert parse_timestamp("2024-03-01 10:00:00.250") == 1709287200.25  # naive = UTC
    assert parse_timestamp("1709287200.5") == 1709287200.5
    ms = CsvTimeRules(epoch_unit="ms")
    assert parse_timestamp("1709287200500", ms) == 1709287200.5
    for bad in ("yesterday", "", "nan", "1709287200500"):  # ms is never guessed
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_source_reads_naive_times_in_a_zone_and_refuses_unflagged_ms(tmp_path):
    naive = write(tmp_path / "naive.csv", "time,temp", "2024-07-01 12:00:00,20")
    berlin = CsvTimeRules(timezone=timezone_named("Europe/Berlin"))
    (row,) = CsvSource(naive, line="l", device="d", time_rules=berlin).rows()
    assert row.ts == datetime(2024, 7, 1, 10, 0, tzinfo=UTC).timestamp()
    ms = write(tmp_path / "ms.csv", "time,temp", "", "1709287200500,20", "1709287201500,21")
    with pytest.raises(SourceError, match=r"ms.csv: column 'time': .* pass --epoch-unit ms"):
        CsvSource(ms, line="l", device="d")
    source = CsvSource(ms, line="l", device="d", time_rules=CsvTimeRules(epoch_unit="ms"))
    assert [r.ts for r in source.rows()] == [1709287200.5, 1709287201.5]


def test_parse_field_map():
    assert parse_field_map("Temperature_C=temperature_c, Humidity_%=humidity_pct") == {
        "Temperature_C": "temperature_c",
        "Humidity_%": "humidity_pct",
    }
    assert parse_field_map("T=temp,S=loudness") == {"T": "temperature_c", "S": "sound_db"}
    for bad in ("T=vibration", "no_equals", "=temperature_c", ""):
        with pytest.raises(SourceError):
            parse_field_map(bad)


def test_plan_uses_contract_aliases_by_default():
    plan = plan_columns(
        ["Timestamp", "Temperature_C", "Humidity_%", "Sound_Volume_dB", "Operator"],
        line="line1",
        device="press-01",
    )
    assert plan.fields == {
        "Temperature_C": "temperature_c",
        "Humidity_%": "humidity_pct",
        "Sound_Volume_dB": "sound_db",
    }
    assert plan.ts_column == "Timestamp"
    assert plan.missing_fields == []
    with_columns = plan_columns(["ts", "line", "Device", "temp", "rh", "noise"])
    assert (with_columns.line_column, with_columns.device_column) == ("line", "Device")


def test_plan_with_explicit_map_is_exclusive():
    header = ["when", "T", "Humidity_%", "station"]
    plan = plan_columns(
        header,
        field_map={"t": "temperature_c"},
        ts_column="WHEN",
        device_column="station",
        line="hall",
    )
    assert plan.fields == {"T": "temperature_c"}
    assert plan.ts_column == "when"
    assert plan.missing_fields == ["humidity_pct", "sound_db"]


@pytest.mark.parametrize(
    ("header", "kwargs", "message"),
    [
        (["ts", "temp"], {"line": "l1"}, "no 'device' column"),
        (["ts", "temp"], {"device": "d1"}, "no 'line' column"),
        (["ts", "temp", "Temperature_C"], {"line": "l", "device": "d"}, "both map"),
        (["ts", "colour"], {"line": "l", "device": "d"}, "no reading fields"),
        (["ts", "temp"], {"line": "l", "device": "d", "ts_column": "time"}, "not in the header"),
        (["ts", "temp"], {"line": "bad/line", "device": "d"}, "--line"),
        (["ts", "temp"], {"line": "l", "device": "d", "field_map": {"x": "sound_db"}}, "'x'"),
    ],
)
def test_plan_errors_name_the_problem(header, kwargs, message):
    with pytest.raises(SourceError, match=message):
        plan_columns(header, **kwargs)


def test_bad_rows_are_counted_and_skipped(tmp_path):
    path = write(
        tmp_path / "mixed.csv",
        "ts,line,device,temp,humidity,sound",
        "2024-03-01T10:00:00Z,l1,d1,25.0,40,60",
        "2024-03-01T10:00:01Z,l1,d1,warm,40,60",
        "2024-03-01T10:00:02Z,l1,d1,,40,60",
        "2024-03-01T10:00:03Z,l1,d1,25.0,140,60",
        "not a time,l1,d1,25.0,40,60",
        "2024-03-01T10:00:05Z,l1,bad device,25.0,40,60",
        "2024-03-01T10:00:06Z,l1,d1,inf,40,60",
        "2024-03-01T10:00:07Z,l1,d1,25.0",
        "",
        "2024-03-01T10:00:09Z,l1,d2,26.5,41,61",
    )
    bad = BadRows()
    rows = list(CsvSource(path).rows(bad))
    assert [(r.device, r.values["temperature_c"]) for r in rows] == [("d1", 25.0), ("d2", 26.5)]
    assert rows[1].row == 11 and rows[1].ts == parse_timestamp("2024-03-01T10:00:09Z")
    assert bad.counts == {"bad_value": 4, "out_of_range": 1, "bad_timestamp": 1, "bad_name": 1}
    assert CsvSource(path).scan().rows == 2


def test_semicolons_bom_and_padded_headers(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(
        "\ufeffTime ; Temperature_C ; Humidity_% ; Sound_Volume_dB\n"
        "1709287200;21.5;50.1;70\n".encode()
    )
    source = CsvSource(path, delimiter=";", line="line1", device="press-01")
    (row,) = source.rows()
    assert row.ts == 1709287200.0
    assert row.values == {"temperature_c": 21.5, "humidity_pct": 50.1, "sound_db": 70.0}


# --- pacing (fake clocks: no waiting in the test) -----------------------------------------


class FakeClock:
    """Monotonic and wall clocks that advance only when the pacer waits."""

    def __init__(self) -> None:
        self.mono = 100.0
        self.wall = 1_800_000_000.0
        self.waits: list[float] = []
        self.stopped = False

    def wait(self, seconds: float) -> bool:
        if self.stopped:
            return True
        self.waits.append(seconds)
        self.advance(seconds)
        return False

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def test_pacer_divides_gaps_by_speed_and_never_stamps_the_future():
    clock = FakeClock()
    pacer = Pacer(10, clock, monotonic=lambda: clock.mono, wall=lambda: clock.wall)
    assert pacer.wait(50.0) == 1_800_000_000.0  # the first event is due at once
    assert pacer.wait(55.0) == pytest.approx(1_800_000_000.5)
    assert clock.waits == [pytest.approx(0.5)]
    # Late by 3 s (> max lag): the schedule shifts instead of bursting.
    clock.advance(3.0)
    assert pacer.wait(56.0) == pytest.approx(clock.wall)
    assert pacer.wait(57.0) == pytest.approx(clock.wall)
    assert clock.waits[-1] == pytest.approx(0.1)
    # A wall clock stepped back must not produce a future timestamp.
    clock.wall -= 60
    assert pacer.wait(58.0) <= clock.wall
    clock.stopped = True
    assert pacer.wait(100.0) is None


# --- publishing to a real broker ----------------------------------------------------------


def settings_for(port: int) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port)


def decoded(messages) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for m in messages:
        reading = decode_reading(m.topic, m.payload)
        out[reading.device].append(reading)
    return out


def test_replay_alias_csv_as_fast_as_possible(broker_port, tmp_path):
    dev_a, dev_b = unique("rpa"), unique("rpb")
    lines = ["Timestamp,line,device,Temperature_C,Humidity_%,Sound_Volume_dB"]
    for i in range(30):
        device = dev_a if i % 2 == 0 else dev_b
        lines.append(
            f"2024-03-01T10:{i // 2:02d}:{(i % 2) * 30:02d}Z,lineR,{device},{20 + i},45,60"
        )
    lines.insert(7, f"2024-03-01T10:03:00Z,lineR,{dev_a},n/a,45,60")
    path = write(tmp_path / "alias.csv", *lines)
    collector, marker = open_collector(broker_port)
    try:
        stats = run_replay(settings_for(broker_port), CsvSource(path), speed=0)
        received = collect_until_marker(collector, broker_port, marker)
    finally:
        collector.close()
    now = time.time()
    assert stats.complete and stats.published == stats.rows == 30
    assert stats.bad == {"bad_value": 1}
    per_device = decoded(received)
    assert {d: len(rs) for d, rs in per_device.items()} == {dev_a: 15, dev_b: 15}
    assert stats.per_device == {("lineR", dev_a): 15, ("lineR", dev_b): 15}
    for readings in per_device.values():
        assert [r.seq for r in readings] == list(range(15))
        stamps = np.array([r.ts_ns / 1e9 for r in readings])
        # Re-stamped: recorded gaps of 60 s kept, the last row just before now.
        assert np.allclose(np.diff(stamps), 60.0, atol=0.002)
        assert stamps[-1] <= now
    last = per_device[dev_b][-1]
    assert now - 2 < last.ts_ns / 1e9 <= now
    assert last.values == {"temperature_c": 49.0, "humidity_pct": 45.0, "sound_db": 60.0}


def test_replay_keep_timestamps(broker_port, tmp_path):
    device = unique("keep")
    base = round(time.time()) - 3600
    lines = [ALIAS_HEADER] + [f"{iso(base + 10 * i)},{21 + i},40,65" for i in range(5)]
    path = write(tmp_path / "keep.csv", *lines)
    collector, marker = open_collector(broker_port)
    try:
        source = CsvSource(path, line="lineK", device=device)
        stats = run_replay(settings_for(broker_port), source, speed=0, keep_timestamps=True)
        received = collect_until_marker(collector, broker_port, marker)
    finally:
        collector.close()
    assert stats.published == 5
    readings = decoded(received)[device]
    assert [r.ts_ns / 1e9 for r in readings] == [base + 10 * i for i in range(5)]


def test_replay_paced_preserves_gaps_divided_by_speed(broker_port, tmp_path):
    device = unique("paced")
    lines = [ALIAS_HEADER] + [f"2023-05-01T00:00:{i * 0.2:06.3f}Z,{30 + i},40,70" for i in range(5)]
    path = write(tmp_path / "paced.csv", *lines)
    collector, marker = open_collector(broker_port)
    began = time.time()
    try:
        source = CsvSource(path, line="lineP", device=device)
        stats = run_replay(settings_for(broker_port), source, speed=2)
        received = collect_until_marker(collector, broker_port, marker)
    finally:
        collector.close()
    assert stats.published == 5
    assert stats.elapsed_s >= 0.4 * 0.9
    stamps = [r.ts_ns / 1e9 for r in decoded(received)[device]]
    assert began - 0.01 <= stamps[0] and stamps[-1] <= time.time()
    assert np.allclose(np.diff(stamps), 0.1, atol=0.03)


def test_replay_cli_without_timestamps_uses_the_interval(broker_port, tmp_path):
    device = unique("cli")
    path = write(tmp_path / "plain.csv", "T;H;S", "20.5;40;55", "21;41;56", "21.5;42;57")
    collector, marker = open_collector(broker_port)
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "sensors.replay", "--csv", str(path), "--delimiter", ";",
                "--map", "T=temperature_c,H=humidity_pct,S=sound_db", "--line", "lineC",
                "--device", device, "--speed", "0", "--interval", "5",
                "--broker-host", "127.0.0.1", "--broker-port", str(broker_port),
            ],
            check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        received = collect_until_marker(collector, broker_port, marker)
    finally:
        collector.close()
    assert result.returncode == 0, result.stderr
    assert "3 published" in result.stderr
    readings = decoded(received)[device]
    assert [r.values["temperature_c"] for r in readings] == [20.5, 21.0, 21.5]
    assert np.allclose(np.diff([r.ts_ns / 1e9 for r in readings]), 5.0, atol=0.002)


def test_replay_passes_the_files_own_seq_through(broker_port, tmp_path):
    dev_a, dev_b = unique("seqa"), unique("seqb")
    path = write(
        tmp_path / "seq.csv",
        "ts,device,seq,temp,rh,noise",
        f"2024-03-01T10:00:00Z,{dev_a},1000,20,40,60",
        f"2024-03-01T10:00:01Z,{dev_b},7,21,40,60",
        f"2024-03-01T10:00:02Z,{dev_a},1001,22,40,60",
        f"2024-03-01T10:00:03Z,{dev_a},1001.5,23,40,60",
        f"2024-03-01T10:00:04Z,{dev_a},-3,24,40,60",
        f"2024-03-01T10:00:05Z,{dev_a},,25,40,60",
        f"2024-03-01T10:00:06Z,{dev_a},1005,26,40,60",  # a gap the gateway should see
        f"2024-03-01T10:00:07Z,{dev_b},0,27,40,60",  # a device restart
    )
    collector, marker = open_collector(broker_port)
    try:
        source = CsvSource(path, line="lineS")
        stats = run_replay(settings_for(broker_port), source, speed=0)
        received = collect_until_marker(collector, broker_port, marker)
    finally:
        collector.close()
    assert stats.published == stats.rows == 5
    assert stats.bad == {"bad_seq": 3}
    per_device = decoded(received)
    assert [r.seq for r in per_device[dev_a]] == [1000, 1001, 1005]
    assert [r.seq for r in per_device[dev_b]] == [7, 0]
    assert [r.values["temperature_c"] for r in per_device[dev_a]] == [20.0, 22.0, 26.0]


def test_replay_cli_usage_errors(tmp_path):
    path = write(tmp_path / "x.csv", ALIAS_HEADER, "2024-03-01T10:00:00Z,20,40,60")
    assert replay_main(["--csv", str(path), "--line", "l1"]) == 2  # no device
    assert (
        replay_main(["--csv", str(tmp_path / "missing.csv"), "--line", "l", "--device", "d"]) == 2
    )
    plain = write(tmp_path / "plain.csv", "temp,rh,noise", "20,40,60")
    args = ["--csv", str(plain), "--line", "l", "--device", "d", "--keep-timestamps"]
    assert replay_main(args) == 2  # nothing to keep
    ms = write(tmp_path / "ms.csv", "time,temp,rh,noise", "1709287200500,20,40,60")
    assert replay_main(["--csv", str(ms), "--line", "l", "--device", "d"]) == 2  # --epoch-unit
    with pytest.raises(SystemExit):
        replay_main(["--csv", str(plain), "--line", "l", "--device", "d", "--timezone", "Mars/X"])


def test_ms_after_floors_and_keeps_device_timestamps_distinct():
    assert ms_after(1_800_000_000.0006, None) == 1_800_000_000.0
    assert ms_after(1_800_000_000.0, 1_800_000_000.0) == 1_800_000_000.001
    assert ms_after(1_799_999_999.0, 1_800_000_000.0) == 1_800_000_000.001
