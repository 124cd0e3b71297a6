"""model.drift: PSI, the training reference in the metadata, the sliding-window monitor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.dataset import Dataset
from model.drift import (
    PSI_ALERT,
    PSI_EPSILON,
    PSI_WARN,
    BinReference,
    DriftMonitor,
    level,
    psi,
    reference_for_feature,
    reference_from_data,
)
from model.training import train
from sensors.simulator import Simulator

FEATURES = ("temperature_c", "humidity_pct", "sound_db")


def test_psi_by_hand() -> None:
    assert psi([0.5, 0.5], [50, 50]) == 0.0
    expected = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert psi([0.5, 0.5], [90, 10]) == pytest.approx(expected)
    # An empty bin counts as PSI_EPSILON instead of making PSI infinite.
    empty = (1 - 0.5) * math.log(1 / 0.5) + (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5)
    assert psi([0.5, 0.5], [7, 0]) == pytest.approx(empty)
    assert [level(0.05), level(PSI_WARN), level(PSI_ALERT)] == ["ok", "warn", "alert"]
    with pytest.raises(ValueError, match="bins"):
        psi([0.5, 0.5], [1, 2, 3])


def test_reference_bins() -> None:
    values = np.random.default_rng(0).uniform(0, 1, 100_000)
    ref = reference_for_feature(values)
    assert ref.edges.size == 9
    np.testing.assert_allclose(ref.proportions, 0.1, atol=0.001)
    # A value on an edge belongs to the bin above it; outer bins are open.
    assert ref.bins(np.array([ref.edges[0], -5.0, 5.0])).tolist() == [1, 0, 9]
    # Heavily tied data (a mostly-constant feature) merges bins; shares still add up.
    tied = reference_for_feature(np.r_[np.zeros(900), np.ones(100)])
    assert tied.edges.size == 1 and 0.0 < tied.edges[0] <= 1.0
    assert tied.proportions.tolist() == [0.9, 0.1]
    round_trip = BinReference.from_dict(ref.to_dict())
    np.testing.assert_array_equal(round_trip.edges, ref.edges)
    with pytest.raises(ValueError, match="proportions"):
        BinReference.from_dict({"edges": [1.0], "proportions": [0.5]})


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 50),
    st.lists(st.integers(0, 70), min_size=1, max_size=12),
    st.integers(0, 2**31),
)
def test_monitor_counts_equal_a_recount_of_the_last_window(window, batches, seed) -> None:
    rng = np.random.default_rng(seed)
    reference = reference_from_data(rng.normal(size=(500, 2)), ("a", "b"))
    monitor = DriftMonitor(reference, window=window, min_count=1)
    seen = np.empty((0, 2))
    for size in batches:
        batch = rng.normal(0.3, 1.2, size=(size, 2))
        monitor.update(batch)
        seen = np.vstack([seen, batch])
        last = seen[-window:]
        assert monitor.count == min(len(seen), window)
        if len(seen) == 0:
            continue
        for j, name in enumerate(("a", "b")):
            ref = BinReference.from_dict(reference[name])
            counts = np.bincount(ref.bins(last[:, j]), minlength=ref.proportions.size)
            assert monitor.psi()[name] == psi(ref.proportions, counts)


def test_monitor_reports_nothing_before_min_count() -> None:
    reference = reference_from_data(np.arange(100.0)[:, None], ("x",))
    monitor = DriftMonitor(reference, window=50)
    monitor.update(np.arange(49.0)[:, None])
    assert monitor.psi() == {}
    assert not monitor.report().full
    monitor.update(np.array([1.0]))
    assert set(monitor.psi()) == {"x"}
    with pytest.raises(ValueError, match="no drift reference"):
        DriftMonitor(reference, features=("x", "y"))


def plant_readings(steps: int) -> np.ndarray:
    sim = Simulator(lines=2, devices_per_line=3, interval_s=1.0, seed=1, fault_types=())
    run = sim.run(start_ts=1_800_000_000.0, max_steps=steps)
    return np.array([[r.values[f] for f in FEATURES] for r in run])


def test_sensor_recalibration_is_detected_on_temperature_only() -> None:
    """3 h of a 6-device plant train the model; the stream continues for 1.5 h as is
    (filling a 1.5 h window), then every temperature sensor reads 8 °C high."""
    devices, hour = 6, 3600
    readings = plant_readings(6 * hour)
    train_rows = 3 * hour * devices
    _, meta = train(Dataset(readings[:train_rows], None, None, None, FEATURES), detector="pca_t2q")
    window = int(1.5 * hour * devices)
    monitor = DriftMonitor(meta["drift_reference"], window=window, features=FEATURES)
    normal = readings[train_rows : train_rows + window]
    shifted = readings[train_rows + window :] + np.array([8.0, 0.0, 0.0])
    batch = 60 * devices  # the gateway feeds micro-batches

    monitor.update(normal)
    before = monitor.report()
    assert before.full
    assert max(before.psi.values()) < PSI_WARN, before.psi

    fed, detected_after, others = 0, None, []
    for start in range(0, len(shifted), batch):
        monitor.update(shifted[start : start + batch])
        fed += len(shifted[start : start + batch])
        report = monitor.report()
        others.append(max(report.psi["humidity_pct"], report.psi["sound_db"]))
        if detected_after is None and report.psi["temperature_c"] > PSI_ALERT:
            detected_after = fed
    assert detected_after is not None and detected_after <= window
    assert max(others) < PSI_WARN
    final = monitor.report()
    assert final.levels == {"temperature_c": "alert", "humidity_pct": "ok", "sound_db": "ok"}
    assert final.worst == "alert"
