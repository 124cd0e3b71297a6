"""The range guard and the false-alarm cap on the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from model.calibration import choose_threshold
from model.dataset import Dataset
from model.envelope import Envelope
from model.training import train


def test_envelope_is_zero_inside_and_grows_outside():
    rng = np.random.default_rng(0)
    X = rng.normal([50, 45, 70], [10, 3, 5], size=(5000, 3))
    env = Envelope.fit(X, weight=0.1)
    assert env.penalty(X[:100]).max() == 0.0 or np.quantile(env.penalty(X), 0.99) == 0.0
    far = np.array([[50, 45 + 10 * 3, 70], [50, 45 + 20 * 3, 70]])
    p = env.penalty(far)
    assert 0 < p[0] < p[1]
    low = env.penalty(np.array([[50, 45 - 20 * 3, 70]]))
    assert low[0] == pytest.approx(p[1], rel=0.1)  # symmetric in std units


def test_envelope_round_trip_and_validation():
    env = Envelope.fit(np.arange(30, dtype=float).reshape(10, 3))
    again = Envelope.from_dict(env.to_dict(), 3)
    np.testing.assert_array_equal(again.high, env.high)
    with pytest.raises(ValueError, match="must have 4 entries"):
        Envelope.from_dict(env.to_dict(), 4)


def test_threshold_respects_the_false_alarm_cap():
    rng = np.random.default_rng(1)
    normal = rng.uniform(0, 0.6, 2_000)
    # Anomalies overlap normal scores: the unconstrained F1 optimum alarms a lot.
    anomalies = rng.uniform(0.3, 1.0, 2_000)
    scores = np.concatenate([normal, anomalies])
    y = np.concatenate([np.zeros(normal.size), np.ones(anomalies.size)])
    free = choose_threshold(scores, y)
    capped = choose_threshold(scores, y, max_false_alarm_rate=0.001)
    assert (normal >= free).mean() > 0.01
    assert (normal >= capped).mean() <= 0.001
    assert capped > free


def test_out_of_range_single_sensor_is_caught():
    """IsolationForest alone cannot rank beyond-range readings above the edge of the
    training data; with the envelope a one-sensor excursion alerts."""
    rng = np.random.default_rng(2)
    normal = rng.normal([60, 45, 75], [8, 3, 4], size=(6000, 3))
    excursion = normal[:300].copy()
    excursion[:, 1] = rng.uniform(80, 95, 300)  # humidity only
    X = np.vstack([normal, excursion])
    y = np.r_[np.zeros(6000, int), np.ones(300, int)]
    ds = Dataset(
        X=X, y=y, faults=None, ts=None, feature_names=("temperature_c", "humidity_pct", "sound_db")
    )
    _, with_env = train(ds, random_state=0)
    _, without = train(ds, random_state=0, envelope_weight=0.0)
    assert with_env["metrics"]["test"]["recall"] >= 0.99
    assert with_env["metrics"]["test"]["false_alarm_rate"] <= 0.01
    assert without["metrics"]["test"]["recall"] < with_env["metrics"]["test"]["recall"]
