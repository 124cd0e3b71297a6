"""model.dataset: CSV loading, column matching, labels and error messages."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.progress import Progress
from contract.timestamps import CsvTimeRules, parse_csv_ns, timezone_named
from model.dataset import (
    NORMAL_TOKENS,
    ONE_DEVICE,
    CsvChunks,
    DatasetError,
    file_sha256,
    labels_from_strings,
    load_csv,
)


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter=",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def readings(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    X = rng.normal([60, 45, 70], [2, 3, 2], size=(50, 3)).round(3)
    # Columns deliberately out of contract order and named like a vendor export.
    rows = [
        [f"2024-05-01T00:00:{i:02d}Z", s, t, h, "none" if i % 10 else "overheat"]
        for i, (t, h, s) in enumerate(X)
    ]
    header = ["Timestamp", "Sound_Volume_dB", "Temperature_C", "Humidity_%", "Fault"]
    return write_csv(tmp_path / "vendor.csv", header, rows)


def test_alias_columns_map_to_contract_fields(readings: Path) -> None:
    ds = load_csv(readings, features=None, timestamp_column="Timestamp")
    assert ds.feature_names == ("temperature_c", "humidity_pct", "sound_db")
    assert ds.columns == ("Temperature_C", "Humidity_%", "Sound_Volume_dB")
    assert ds.X.dtype == np.float64
    assert ds.X.shape == (50, 3)
    with open(readings, newline="") as fh:
        first = next(iter(csv.DictReader(fh)))
    assert ds.X[0].tolist() == [
        float(first["Temperature_C"]),
        float(first["Humidity_%"]),
        float(first["Sound_Volume_dB"]),
    ]
    assert ds.ts is not None
    assert ds.ts[0] == "2024-05-01T00:00:00Z"
    assert ds.y is None
    assert ds.faults is None
    assert ds.rows_dropped == 0
    assert ds.source == "vendor.csv"
    assert ds.sha256 == file_sha256(readings)


def test_features_given_as_aliases_or_other_case(readings: Path) -> None:
    ds = load_csv(readings, features=["temp", "HUMIDITY", "sound_db"])
    assert ds.feature_names == ("temperature_c", "humidity_pct", "sound_db")
    assert ds.columns == ("Temperature_C", "Humidity_%", "Sound_Volume_dB")


def test_exact_header_match_wins_over_alias(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "both.csv", ["temp", "temperature_c"], [[1, 2], [3, 4]])
    ds = load_csv(path, features=["temperature_c"])
    assert ds.X[:, 0].tolist() == [2.0, 4.0]


def test_two_aliases_of_one_field_are_ambiguous(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "amb.csv", ["temp", "Temperature"], [[1, 2]])
    with pytest.raises(DatasetError, match="ambiguous"):
        load_csv(path, features=["temperature_c"])


def test_extra_feature_column(tmp_path: Path) -> None:
    header = ["temperature_c", "humidity_pct", "sound_db", "Vibration_mm_s"]
    path = write_csv(tmp_path / "vib.csv", header, [[60, 45, 70, 1.5], [61, 44, 71, 2.5]])
    ds = load_csv(path, features=["temperature_c", "humidity_pct", "sound_db", "vibration_mm_s"])
    assert ds.feature_names[-1] == "vibration_mm_s"
    assert ds.columns[-1] == "Vibration_mm_s"
    assert ds.X.shape == (2, 4)
    assert ds.X[:, 3].tolist() == [1.5, 2.5]


def test_missing_column_is_named_with_available_ones(readings: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_csv(readings, features=["temperature_c", "vibration_mm_s"])
    message = str(err.value)
    assert "'vibration_mm_s' not found" in message
    assert "'Temperature_C'" in message
    assert "'Sound_Volume_dB'" in message
    with pytest.raises(DatasetError, match="label column 'is_anomaly' not found"):
        load_csv(readings, features=None, label_column="is_anomaly")


def test_wrong_delimiter_gets_a_hint(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "semi.csv", ["temperature_c", "x"], [[1, 2]], delimiter=";")
    with pytest.raises(DatasetError, match="is the delimiter ';'"):
        load_csv(path, features=["temperature_c"])
    ds = load_csv(path, features=["temperature_c"], delimiter=";")
    assert ds.X.tolist() == [[1.0]]


def test_non_numeric_value_names_line_and_column(tmp_path: Path) -> None:
    rows = [[60, 45, 70], [61, "n/a", 71], [62, 46, ""]]
    path = write_csv(tmp_path / "bad.csv", ["temperature_c", "humidity_pct", "sound_db"], rows)
    with pytest.raises(DatasetError) as err:
        load_csv(path, features=None)
    message = str(err.value)
    assert "bad.csv line 3" in message  # header is line 1
    assert "'humidity_pct'" in message
    assert "'n/a'" in message

    ds = load_csv(path, features=None, drop_invalid=True)
    assert ds.rows_dropped == 2
    assert ds.X.tolist() == [[60.0, 45.0, 70.0]]


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", ""])
def test_non_finite_values_are_invalid(tmp_path: Path, value: str) -> None:
    rows = [[60, 45, 70], [60, 45, value]]
    path = write_csv(tmp_path / "nf.csv", ["temperature_c", "humidity_pct", "sound_db"], rows)
    with pytest.raises(DatasetError, match="line 3: column 'sound_db'"):
        load_csv(path, features=None)


def test_short_row_is_reported_or_dropped(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("temperature_c,humidity_pct,sound_db\n60,45,70\n61,44\n\n62,46,72\n")
    with pytest.raises(DatasetError, match="line 3: expected 3 fields, found 2"):
        load_csv(path, features=None)
    ds = load_csv(path, features=None, drop_invalid=True)
    assert ds.rows_dropped == 1  # the blank line is not a row
    assert ds.X[:, 0].tolist() == [60.0, 62.0]


def test_labels_and_faults(tmp_path: Path) -> None:
    labels = ["0", "1", "true", "False", "none", "Normal", "", "overheat", " bearing_wear "]
    rows = [[60 + i, lab, lab] for i, lab in enumerate(labels)]
    path = write_csv(tmp_path / "lab.csv", ["temp", "label", "fault"], rows)
    ds = load_csv(path, features=["temperature_c"], label_column="label", fault_column="fault")
    assert ds.y is not None
    assert ds.y.tolist() == [0, 1, 1, 0, 0, 0, 0, 1, 1]
    assert ds.faults is not None
    assert ds.faults[-1] == "bearing_wear"
    assert ds.label_column == "label"
    assert ds.fault_column == "fault"


@given(st.text(max_size=12))
def test_any_label_string_maps_to_zero_or_one(value: str) -> None:
    (label,) = labels_from_strings([value])
    assert label == (0 if value.strip().lower() in NORMAL_TOKENS else 1)


def test_bom_header_and_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftemperature_c\n1.5\n".encode())
    assert load_csv(path, features=["temperature_c"]).X.tolist() == [[1.5]]

    with pytest.raises(DatasetError, match="not found"):
        load_csv(tmp_path / "nope.csv", features=None)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_csv(tmp_path / "empty.csv", features=None)
    (tmp_path / "header.csv").write_text("temperature_c\n")
    with pytest.raises(DatasetError, match="no usable data rows"):
        load_csv(tmp_path / "header.csv", features=["temperature_c"])
    (tmp_path / "latin1.csv").write_bytes(b"temperature_c,name\n1,caf\xe9\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_csv(tmp_path / "latin1.csv", features=["temperature_c"])


def test_chunks_keep_raw_rows_aligned(tmp_path: Path) -> None:
    rows = [[i, "x" if i == 3 else i * 2] for i in range(10)]
    path = write_csv(tmp_path / "c.csv", ["id", "temperature_c"], rows)
    with CsvChunks(path, features=["temperature_c"]) as source:
        chunks = list(source.chunks(4, drop_invalid=True))
    assert [len(c.rows) for c in chunks] == [4, 4, 2]
    assert chunks[0].kept.tolist() == [0, 1, 2]
    assert chunks[0].dropped == 1
    kept_ids = [int(c.rows[i][0]) for c in chunks for i in c.kept]
    values = np.concatenate([c.X[:, 0] for c in chunks])
    assert values.tolist() == [2.0 * i for i in kept_ids]


# --- timestamps, one-device files and the training part ------------------------------------


def test_timestamps_parse_from_the_usual_column_by_the_csv_rules(readings: Path) -> None:
    data = load_csv(readings, parse_timestamps=True)  # finds "Timestamp"
    assert data.ts_ns is not None
    assert data.ts_ns[1] - data.ts_ns[0] == 1_000_000_000
    assert data.ts_ns[0] == parse_csv_ns("2024-05-01T00:00:00Z")
    rows = [["2024-05-01 02:00:00", 1], ["2024-05-01 02:00:01", 2]]
    naive = write_csv(readings.parent / "naive.csv", ["time", "temp"], rows)
    berlin = CsvTimeRules(timezone=timezone_named("Europe/Berlin"))
    data = load_csv(naive, features=["temp"], parse_timestamps=True, time_rules=berlin)
    assert data.ts_ns[0] == parse_csv_ns("2024-05-01T00:00:00Z")  # CEST, +02:00


def test_bad_time_cells_say_why_and_name_the_flag(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ms.csv", ["ts", "temp"], [[1714521600000, 1], [1714521601000, 2]])
    with pytest.raises(DatasetError, match=r"ms.csv line 2: column 'ts' value .* --epoch-unit ms"):
        load_csv(path, features=["temp"], parse_timestamps=True)
    ms = CsvTimeRules(epoch_unit="ms")
    data = load_csv(path, features=["temp"], parse_timestamps=True, time_rules=ms)
    assert data.ts_ns.tolist() == [1714521600 * 10**9, 1714521601 * 10**9]
    none = write_csv(tmp_path / "none.csv", ["when_it_was", "temp"], [["x", 1]])
    with pytest.raises(DatasetError, match=r"no timestamp column .* --timestamp-column"):
        load_csv(none, features=["temp"], parse_timestamps=True)


def test_a_file_without_device_columns_is_one_device(tmp_path: Path) -> None:
    rows = [[f"2024-05-01 00:00:{i:02d}", float(i % 4)] for i in range(12)]
    path = write_csv(tmp_path / "one.csv", ["timestamp", "value"], rows)
    data = load_csv(path, features=["value", "value__mean_4"])  # no device column at all
    assert len(data) == 9 and data.rows_warmup == 3
    assert set(data.groups.tolist()) == {ONE_DEVICE}
    assert data.X[0].tolist() == [3.0, 1.5]
    # An empty device-column list says so explicitly, even when the file has a device column.
    rows = [[f"2024-05-01T00:00:{i:02d}Z", f"d{i % 2}", i] for i in range(12)]
    two = write_csv(tmp_path / "two.csv", ["ts", "device", "value"], rows)
    assert load_csv(two, features=["value__mean_4"]).rows_warmup == 6
    assert load_csv(two, features=["value__mean_4"], group_columns=[]).rows_warmup == 3


def test_split_at_rows_or_time(tmp_path: Path) -> None:
    rows = [[f"2024-05-01T00:00:{(i * 7) % 10:02d}Z", i, "1" if i == 8 else "0"] for i in range(10)]
    path = write_csv(tmp_path / "s.csv", ["ts", "v", "label"], rows)
    data = load_csv(path, features=["v"], label_column="label", parse_timestamps=True)
    head, rest = data.split_at(rows=4)
    assert head.X[:, 0].tolist() == [0, 1, 2, 3] and rest.X[:, 0].tolist() == [4, 5, 6, 7, 8, 9]
    assert rest.y.tolist() == [0, 0, 0, 0, 1, 0] and rest.ts.tolist()[0] == rows[4][0]
    # By time, rows out of file order go where their stamp puts them; file order is kept.
    head, rest = data.split_at(until_ns=parse_csv_ns("2024-05-01T00:00:05Z"))
    assert head.X[:, 0].tolist() == [0, 2, 3, 6, 9]
    assert sorted(head.ts_ns.tolist() + rest.ts_ns.tolist()) == sorted(data.ts_ns.tolist())
    head, rest = data.split_at(rows=50)
    assert len(head) == 10 and len(rest) == 0
    with pytest.raises(ValueError, match="exactly one"):
        data.split_at(rows=3, until_ns=0)
    with pytest.raises(DatasetError, match="parsed timestamps"):
        load_csv(path, features=["v"]).split_at(until_ns=0)


# common.progress is used by the CSV commands; its tests live with the CSV tests.
def test_progress_logs_at_most_every_interval(caplog) -> None:
    now = [100.0]
    logger = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        progress = Progress(10_000, "scoring", logger, every_s=2.0, clock=lambda: now[0])
        for _ in range(18):
            now[0] += 0.25  # exact in binary: the 2 s boundaries are hit exactly
            progress.advance(250)
        progress.done()
        progress.done()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "scoring: 20% (2000/10000), 1.0k rows/s",
        "scoring: 40% (4000/10000), 1.0k rows/s",
        "scoring: done, 4500 rows in 4.5 s (1.0k rows/s)",
    ]


def test_progress_without_total(caplog) -> None:
    now = [0.0]
    logger = logging.getLogger("test.progress")
    with (
        caplog.at_level(logging.INFO, logger="test.progress"),
        Progress(None, "replay", logger, every_s=1.0, clock=lambda: now[0]) as progress,
    ):
        now[0] = 1.5
        progress.advance(18_450)
    assert [r.getMessage() for r in caplog.records] == [
        "replay: 18450 rows, 12.3k rows/s",
        "replay: done, 18450 rows in 1.5 s (12.3k rows/s)",
    ]
