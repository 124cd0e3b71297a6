"""model.stream_features: naming, offline vs incremental agreement, training with them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import cli
from model.dataset import DatasetError, canonical_feature, load_csv
from model.scorer import load_scorer
from model.stream_features import (
    DeviceRows,
    OutOfOrderReading,
    RollingWindow,
    StreamFeatureError,
    StreamSpec,
    compute_offline,
    parse_feature,
)

NS = 1_000_000_000
BRIEF_FEATURES = "temperature_c,humidity_pct,sound_db,temperature_c__std_10,sound_db__mean_10"


def incremental(rows: DeviceRows, names: list[str]) -> np.ndarray:
    """Feed rows in the given order through one RollingWindow per device."""
    windows: dict[str, RollingWindow] = {}
    out = np.full((len(rows), len(names)), np.nan)
    for i in range(len(rows)):
        window = windows.setdefault(str(rows.keys[i]), RollingWindow(names))
        row = window.update(int(rows.ts_ns[i]), {f: v[i] for f, v in rows.values.items()})
        if row is not None:
            out[i] = row
    return out


def test_names_parse_and_canonicalise() -> None:
    parsed = parse_feature("temperature_c__std_10")
    assert (parsed.field, parsed.stat, parsed.window) == ("temperature_c", "std", 10)
    assert parse_feature("temperature_c") is None
    assert parse_feature("vibration_mm_s__roc_2").field == "vibration_mm_s"
    with pytest.raises(StreamFeatureError, match="window"):
        parse_feature("sound_db__mean_1")
    assert canonical_feature("Temperature_C__mean_5") == "temperature_c__mean_5"
    spec = StreamSpec.from_features(BRIEF_FEATURES.split(","))
    assert spec.raw_fields == ("temperature_c", "humidity_pct", "sound_db")
    assert spec.windows == {"temperature_c": 10, "sound_db": 10}
    assert spec.warmup == 9
    meta = spec.to_metadata()
    assert meta["window"] == {"temperature_c": 10, "sound_db": 10}
    assert meta["features"]["sound_db__mean_10"] == {
        "field": "sound_db",
        "stat": "mean",
        "window": 10,
    }


def test_values_by_hand() -> None:
    names = ["x", "x__mean_3", "x__std_3", "x__roc_3", "x__roc_2"]
    ts = np.array([0, 1, 2, 4], dtype=np.int64) * NS
    x = np.array([1.0, 2.0, 4.0, 8.0])
    rows = DeviceRows(keys=np.array(["d"] * 4), ts_ns=ts, values={"x": x})
    X, ready = compute_offline(rows, names)
    assert ready.tolist() == [False, False, True, True]
    assert np.isnan(X[:2]).all()
    expected = [
        [4.0, 7 / 3, np.std([1.0, 2.0, 4.0]), (4 - 1) / 2, (4 - 2) / 1],
        [8.0, 14 / 3, np.std([2.0, 4.0, 8.0]), (8 - 2) / 3, (8 - 4) / 2],
    ]
    np.testing.assert_allclose(X[2:], expected, rtol=1e-12)
    np.testing.assert_allclose(incremental(rows, names)[2:], expected, rtol=1e-12)


def random_rows(rng: np.random.Generator, n: int, devices: int) -> DeviceRows:
    keys = rng.choice([f"line1/d{i}" for i in range(devices)], n)
    # Irregular gaps (ms resolution, like the wire contract) and a large time origin.
    ts = 1_800_000_000 * NS + np.cumsum(rng.integers(1, 5000, n)) * 1_000_000
    temp = 1e4 + np.cumsum(rng.normal(0, 0.3, n))  # large offset, small variation
    sound = rng.normal(70.0, 5.0, n).round(2)
    sound[n // 3 : n // 3 + 200] = 71.25  # a stuck stretch: std exactly 0 offline
    return DeviceRows(keys=keys, ts_ns=ts, values={"temperature_c": temp, "sound_db": sound})


def test_incremental_equals_offline_on_a_long_multi_device_stream() -> None:
    names = [
        "temperature_c",
        "sound_db",
        "temperature_c__mean_10",
        "temperature_c__std_10",
        "temperature_c__std_60",
        "temperature_c__roc_10",
        "sound_db__mean_2",
        "sound_db__std_30",
        "sound_db__roc_60",
    ]
    rows = random_rows(np.random.default_rng(0), 8_000, devices=4)
    X, ready = compute_offline(rows, names)
    Y = incremental(rows, names)
    np.testing.assert_array_equal(~np.isnan(Y).any(axis=1), ready)
    assert np.abs(X[ready] - Y[ready]).max() <= 1e-9
    # Rate of change uses the same integer-ns differences: bit-identical.
    roc = [names.index("temperature_c__roc_10"), names.index("sound_db__roc_60")]
    np.testing.assert_array_equal(X[ready][:, roc], Y[ready][:, roc])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=80),
    st.integers(2, 12),
    st.sampled_from(["mean", "std", "roc"]),
)
def test_incremental_equals_offline_for_any_values(values, window, stat) -> None:
    n = len(values)
    rows = DeviceRows(
        keys=np.array(["d"] * n),
        ts_ns=(np.arange(n, dtype=np.int64) * 7 + 3) * 1_000_000,
        values={"v": np.array(values)},
    )
    names = ["v", f"v__{stat}_{window}"]
    X, ready = compute_offline(rows, names)
    Y = incremental(rows, names)
    assert ready.sum() == max(n - window + 1, 0)
    scale = max(1.0, float(np.max(np.abs(values))))
    if stat == "roc":
        scale /= 0.007  # values per second over 7 ms steps
    assert np.all(np.abs(X[ready] - Y[ready]) <= 1e-9 * scale)


def test_stuck_sensor_after_a_spike_has_zero_std() -> None:
    """A large value leaving the window must not leave rounding residue in the sums."""
    rng = np.random.default_rng(2)
    values = np.r_[70 + rng.normal(0, 0.2, 30), 131.7, 70 + rng.normal(0, 0.2, 5), [70.25] * 20]
    rows = DeviceRows(
        keys=np.array(["d"] * values.size),
        ts_ns=np.arange(values.size, dtype=np.int64) * NS,
        values={"t": values},
    )
    X, _ = compute_offline(rows, ["t__std_10"])
    Y = incremental(rows, ["t__std_10"])
    assert X[-1, 0] == 0.0
    assert Y[-1, 0] == 0.0
    assert np.nanmax(np.abs(X - Y)) <= 1e-12


def test_window_rejects_out_of_order_and_missing_fields_without_changing() -> None:
    names = ["t", "t__mean_3", "t__roc_3"]
    clean, disturbed = RollingWindow(names), RollingWindow(names)
    feed = [(1, 10.0), (2, 11.0), (3, 13.0), (4, 12.0), (5, 15.0)]
    for i, (sec, value) in enumerate(feed):
        expected = clean.update(sec * NS, {"t": value})
        got = disturbed.update(sec * NS, {"t": value})
        if i == 2:
            with pytest.raises(OutOfOrderReading):
                disturbed.update(sec * NS, {"t": 99.0})  # duplicate timestamp
            with pytest.raises(OutOfOrderReading):
                disturbed.update((sec - 1) * NS, {"t": 99.0})
            with pytest.raises(KeyError):
                disturbed.update((sec + 100) * NS, {"x": 1.0})
        if expected is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, expected)
    assert disturbed.count == clean.count == 5


def test_memory_is_bounded_by_the_windows() -> None:
    window = RollingWindow(["a__mean_5", "a__std_20", "b__roc_7"])
    for i in range(10_000):
        window.update(i * NS, {"a": float(i % 13), "b": float(i)})
    assert window.stored_values == 20 + 7 + 20  # rings: a (20), b (7), timestamps (20)
    assert window.ready


def test_offline_rejects_duplicate_timestamps_of_a_device() -> None:
    rows = DeviceRows(
        keys=np.array(["a", "b", "a"]),
        ts_ns=np.array([1, 1, 1], dtype=np.int64) * NS,
        values={"x": np.array([1.0, 2.0, 3.0])},
    )
    with pytest.raises(StreamFeatureError, match="device a: two readings"):
        compute_offline(rows, ["x__mean_2"])


# --- CSV, training and scoring with stream features -------------------------------------


def write_rows(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ts", "line", "device", "temperature_c", "humidity_pct", "sound_db"])
        writer.writerows(rows)
    return path


def test_load_csv_computes_per_device_and_counts_what_it_drops(tmp_path: Path) -> None:
    rows = []
    for i in range(6):
        for device, base in (("p1", 50.0), ("p2", 70.0)):
            stamp = f"2026-11-22T10:00:{i:02d}.{500 if device == 'p2' else 0:03d}Z"
            rows.append([stamp, "l1", device, base + i, 40.0, 60.0 + i * i])
    rows.append(rows[-1])  # a repeated reading (redelivery)
    path = write_rows(tmp_path / "two.csv", rows)
    data = load_csv(path, features=["temperature_c", "sound_db__roc_3", "Temperature_C__mean_3"])
    assert data.feature_names == ("temperature_c", "sound_db__roc_3", "temperature_c__mean_3")
    assert (data.rows_warmup, data.rows_duplicate, len(data)) == (4, 1, 8)
    assert data.groups.tolist() == ["l1/p1", "l1/p2"] * 4
    first = data.X[0]  # p1 at second 2: temperature 52, sound 60, 61, 64
    np.testing.assert_allclose(first, [52.0, (64 - 60) / 2, 51.0], rtol=1e-12)

    no_device = tmp_path / "nodevice.csv"
    no_device.write_text("ts,temperature_c\n2026-11-22T10:00:00Z,50\n2026-11-22T10:00:01Z,52\n")
    one = load_csv(no_device, features=["temperature_c__mean_2"])  # the file is one device
    assert one.X[:, 0].tolist() == [51.0]
    bad_ts = write_rows(tmp_path / "badts.csv", [["yesterday", "l1", "p1", 1, 2, 3]])
    with pytest.raises(DatasetError, match=r"badts.csv line 2: column 'ts' value 'yesterday'"):
        load_csv(bad_ts, features=["temperature_c__mean_2"])


def test_train_with_stream_features_and_score_like_the_gateway(
    tmp_path: Path, sim_csv: Path, monkeypatch
) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level=None: None)
    models = tmp_path / "models"
    args = ["train", "--csv", str(sim_csv), "--features", BRIEF_FEATURES,
            "--detector", "isolation_forest"]  # fmt: skip
    assert cli.main([*args, "--models-dir", str(models), "--fault-column", "fault"]) == 0
    meta = json.loads((models / "current" / "metadata.json").read_text())
    devices = 6  # the sim_csv fixture: 2 lines x 3 devices
    assert meta["training"]["rows_warmup"] == 9 * devices
    assert meta["stream_features"]["window"] == {"temperature_c": 10, "sound_db": 10}
    assert meta["stream_features"]["warmup_readings"] == 9
    assert [f["name"] for f in meta["features"]] == BRIEF_FEATURES.split(",")
    assert meta["features"][3]["unit"] == "°C"
    assert set(meta["drift_reference"]) == set(BRIEF_FEATURES.split(","))

    # `score` feeds each device's readings through RollingWindow in file order (as the
    # gateway does); training computed the same features offline.
    scored = tmp_path / "scored.csv"
    assert cli.main(["score", "--csv", str(sim_csv), "--out", str(scored), "--models-dir",
                     str(models)]) == 0  # fmt: skip
    with open(scored, newline="") as fh:
        out = list(csv.DictReader(fh))
    scorer = load_scorer(models)
    offline = load_csv(sim_csv, features=list(scorer.features))
    live = np.array([float(r["score"]) for r in out if r["score"]])
    assert sum(1 for r in out if not r["score"]) == 9 * devices
    assert live.size == len(offline)
    # The CSV keeps 6 decimals of the score.
    assert np.abs(live - scorer.score(offline.X)).max() <= 5e-7
    window = scorer.new_window()
    assert window.spec.windows == {"temperature_c": 10, "sound_db": 10}
