"""model.calibration, model.metrics and model.training on synthetic readings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.calibration import Calibration, choose_threshold
from model.dataset import Dataset
from model.detectors import build_detector, raw_scores
from model.envelope import Envelope
from model.metrics import evaluate
from model.training import TrainingError, split_indices, train

FEATURES = ("temperature_c", "humidity_pct", "sound_db")
MEAN = np.array([60.0, 45.0, 70.0])
SD = np.array([2.0, 3.0, 2.0])


def make_dataset(n: int = 2000, anomaly_fraction: float = 0.03, seed: int = 0) -> Dataset:
    """Gaussian normal cluster plus two obvious fault types, labelled."""
    rng = np.random.default_rng(seed)
    X = rng.normal(MEAN, SD, size=(n, 3))
    y = np.zeros(n, dtype=np.int8)
    faults = np.full(n, "none", dtype="<U10")
    idx = rng.choice(n, int(n * anomaly_fraction), replace=False)
    half = idx.size // 2
    # Overheat: temperature +10 sd with a louder machine.
    X[idx[:half]] = MEAN + SD * np.array([10.0, 0.0, 6.0]) + rng.normal(0, 1, (half, 3)) * SD
    faults[idx[:half]] = "overheat"
    # Erratic sensors: far out on every axis.
    signs = rng.choice([-1.0, 1.0], size=(idx.size - half, 3))
    X[idx[half:]] = MEAN + SD * signs * rng.uniform(6, 10, size=(idx.size - half, 3))
    faults[idx[half:]] = "erratic"
    y[idx] = 1
    return Dataset(X=X, y=y, faults=faults, ts=None, feature_names=FEATURES)


@pytest.fixture(scope="module")
def trained():
    dataset = make_dataset()
    pipeline, metadata = train(dataset, random_state=7)
    return dataset, pipeline, metadata


# --- calibration -----------------------------------------------------------------------


def test_calibration_anchors() -> None:
    raw = np.random.default_rng(0).gamma(2.0, 1.0, size=10_000)
    cal = Calibration.fit(raw)
    q50, q99 = np.percentile(raw, [50, 99])
    assert cal.center == pytest.approx(q99)
    assert cal.scale == pytest.approx((q99 - q50) / 4)
    assert cal.apply(np.array([q99]))[0] == pytest.approx(0.5)
    assert cal.apply(np.array([q50]))[0] == pytest.approx(0.018, abs=0.001)


@given(st.lists(st.floats(-1e300, 1e300), min_size=2, max_size=50))
def test_calibration_is_monotone_and_bounded(values: list[float]) -> None:
    cal = Calibration(center=0.55, scale=0.02)
    raw = np.sort(np.array(values))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings at extreme inputs
        out = cal.apply(raw)
    assert out.shape == raw.shape
    assert np.all((out >= 0) & (out <= 1))
    assert np.all(np.diff(out) >= 0)


def test_calibration_guards_zero_spread() -> None:
    cal = Calibration.fit(np.full(100, 0.4))
    assert cal.scale > 0
    out = cal.apply(np.array([0.3, 0.4, 0.5]))
    assert out.tolist() == sorted(out.tolist())
    assert out[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="invalid calibration"):
        Calibration.from_dict({"center": 0.5, "scale": 0.0})


# --- thresholds and metrics ------------------------------------------------------------


def test_threshold_maximises_f1_between_scores() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9, 0.95])
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    # Flagging the top three is perfect; the cut sits midway between 0.6 and 0.7.
    assert choose_threshold(scores, y) == pytest.approx(0.65)


def test_threshold_ties_prefer_higher() -> None:
    # Cutting at 0.8 (TP1 FP0 FN1) and at 0.4 (TP2 FP2 FN0) both give F1 = 2/3.
    scores = np.array([0.8, 0.6, 0.5, 0.4, 0.1])
    y = np.array([1, 0, 0, 1, 0])
    assert choose_threshold(scores, y) == pytest.approx(0.7)


def test_threshold_without_labels_is_a_quantile() -> None:
    scores = np.linspace(0, 1, 1001)
    assert choose_threshold(scores, contamination=0.05) == pytest.approx(0.95)
    # One-class labels cannot define F1: same rule.
    assert choose_threshold(scores, np.zeros(1001), contamination=0.05) == pytest.approx(0.95)


def test_evaluate_counts_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.6])
    y = np.array([1, 1, 0, 1, 0, 0])
    faults = np.array(["overheat", "bearing", "none", "bearing", "", "normal"])
    m = evaluate(scores, y, threshold=0.65, faults=faults)
    assert m["support"] == {
        "rows": 6,
        "anomalies": 3,
        "normal": 3,
        "flagged": 3,
        "tp": 2,
        "fp": 1,
        "fn": 1,
        "tn": 2,
    }
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["false_alarm_rate"] == pytest.approx(1 / 3)
    assert m["roc_auc"] == pytest.approx(7 / 9)
    assert m["per_fault"] == {
        "bearing": {"n": 2, "recall": 0.5},
        "overheat": {"n": 1, "recall": 1.0},
    }
    one_class = evaluate(scores, np.zeros(6), threshold=0.65)
    assert one_class["roc_auc"] is None
    assert one_class["recall"] is None
    assert one_class["false_alarm_rate"] == pytest.approx(0.5)


# --- training --------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    y = np.zeros(1000, dtype=np.int8)
    y[::20] = 1
    a = split_indices(1000, y, validation_fraction=0.2, test_fraction=0.2, random_state=3)
    b = split_indices(1000, y, validation_fraction=0.2, test_fraction=0.2, random_state=3)
    for left, right in zip(a, b, strict=True):
        assert np.array_equal(left, right)
    train_idx, val_idx, test_idx = a
    assert (train_idx.size, val_idx.size, test_idx.size) == (600, 200, 200)
    assert np.unique(np.concatenate(a)).size == 1000
    assert [int(y[i].sum()) for i in a] == [30, 10, 10]


def test_threshold_is_chosen_on_validation_split(trained) -> None:
    dataset, pipeline, metadata = trained
    _, val_idx, _ = split_indices(
        len(dataset), dataset.y, validation_fraction=0.2, test_fraction=0.2, random_state=7
    )
    cal = Calibration.from_dict(metadata["calibration"])
    X_val = dataset.X[val_idx]
    envelope = Envelope.from_dict(metadata["envelope"], X_val.shape[1])
    val_scores = cal.apply(raw_scores(pipeline, X_val) + envelope.penalty(X_val))
    cap = metadata["training"]["max_false_alarm_rate"]
    assert metadata["threshold"] == choose_threshold(
        val_scores, dataset.y[val_idx], max_false_alarm_rate=cap
    )
    assert metadata["metrics"]["validation"]["support"]["rows"] == val_idx.size


def test_fit_on_normal_rows_and_metadata(trained) -> None:
    dataset, _, metadata = trained
    split = metadata["training"]["split"]
    assert split["train"] + split["validation"] + split["test"] == len(dataset)
    assert split["fit"] == split["train"] - round(0.6 * dataset.y.sum())
    assert metadata["training"]["fit_on"] == "normal"
    assert metadata["features"] == [
        {"name": "temperature_c", "unit": "°C"},
        {"name": "humidity_pct", "unit": "%"},
        {"name": "sound_db", "unit": "dB"},
    ]
    stats = metadata["feature_stats"]["temperature_c"]
    assert stats["mean"] == pytest.approx(60, abs=0.3)
    assert stats["std"] == pytest.approx(2, abs=0.2)
    assert stats["p01"] < stats["mean"] < stats["p99"] <= stats["max"]
    assert metadata["params"]["n_estimators"] == 100
    assert metadata["params"]["random_state"] == 7
    assert set(metadata["versions"]) == {"python", "sklearn", "numpy", "joblib"}
    assert metadata["created_at"].endswith("Z")
    assert len(metadata["training"]["data_sha256"]) == 64
    json.dumps(metadata, allow_nan=False)  # must be storable as-is


def test_obvious_outliers_are_caught_on_fresh_data(trained) -> None:
    _, pipeline, metadata = trained
    fresh = make_dataset(n=4000, anomaly_fraction=0.05, seed=99)
    cal = Calibration.from_dict(metadata["calibration"])
    scores = cal.apply(raw_scores(pipeline, fresh.X))
    m = evaluate(scores, fresh.y, metadata["threshold"], faults=fresh.faults)
    assert m["recall"] >= 0.9
    assert m["false_alarm_rate"] <= 0.05
    assert m["roc_auc"] >= 0.99
    assert all(row["recall"] >= 0.9 for row in m["per_fault"].values())
    # Normal readings sit low on the calibrated scale.
    assert np.median(scores[fresh.y == 0]) < 0.1
    test = metadata["metrics"]["test"]
    assert test["recall"] >= 0.9
    assert test["false_alarm_rate"] <= 0.05


def test_training_is_reproducible() -> None:
    dataset = make_dataset(n=600)
    _, first = train(dataset, random_state=1)
    _, second = train(dataset, random_state=1)
    assert first["threshold"] == second["threshold"]
    assert first["calibration"] == second["calibration"]


def test_unlabelled_training_uses_contamination_quantile() -> None:
    labelled = make_dataset(n=3000, anomaly_fraction=0.0)
    dataset = Dataset(X=labelled.X, y=None, faults=None, ts=None, feature_names=FEATURES)
    _, metadata = train(dataset, contamination=0.02)
    assert metadata["training"]["fit_on"] == "all"
    assert metadata["training"]["label_column"] is None
    assert metadata["metrics"]["validation"]["alarm_rate"] == pytest.approx(0.02, abs=0.005)
    assert metadata["metrics"]["test"]["alarm_rate"] == pytest.approx(0.02, abs=0.015)


def test_training_errors() -> None:
    with pytest.raises(TrainingError, match="rows to fit on"):
        train(make_dataset(n=30))
    with pytest.raises(TrainingError, match="fit_on"):
        train(make_dataset(n=300), fit_on="some")
    with pytest.raises(TrainingError, match="n_estimators"):
        train(make_dataset(n=300), params={"n_estimators": -1})
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("lof", 0)
