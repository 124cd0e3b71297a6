"""The time-aware detector: per-device statistics, control limits, training, loading."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from model.artifact import save_artifact
from model.dataset import Dataset
from model.dynamics.bank import LATE, READY, WARMING, BankParams, DeviceBank
from model.dynamics.limits import LimitError, fit_limit, fit_limits
from model.dynamics.train import train_dynamics
from model.scorer import load_scorer
from sensors.simulator import Simulator

FIELDS = ("temperature_c", "humidity_pct", "sound_db")
SMALL = {"warmup": 20, "fit_after": 200, "refit_every": 100}


def one_device(values: np.ndarray, params: BankParams, key: str = "d") -> np.ndarray:
    bank = DeviceBank(params)
    ts = np.arange(1, len(values) + 1, dtype=np.int64) * 1_000_000_000
    stats, state = bank.update([key] * len(values), ts, values)
    assert (state == READY).sum() == len(values) - params.warmup - 2 * params.hampel_half + 1
    return stats


def stat(params: BankParams, name: str) -> int:
    return params.stat_names.index(name)


def test_a_machine_starting_is_not_a_spike_but_a_glitch_is() -> None:
    rng = np.random.default_rng(1)
    params = BankParams(("temperature_c",), warmup=20, fit_after=10_000)
    n = 200
    flat = 25.0 + rng.normal(0, 0.1, n)
    ramp = flat.copy()
    # The machine starts at reading 100: a first-order rise of 40 degrees, 25 s lag.
    t = np.arange(n - 100)
    ramp[100:] += 40.0 * (1 - np.exp(-t / 25.0))
    glitch = flat.copy()
    glitch[150] += 30.0
    h = params.hampel_half
    col = stat(params, "temperature_c__spike")
    rise = one_device(ramp[:, None], params)[:, col]
    spike = one_device(glitch[:, None], params)[:, col]
    # The statistic describes the reading h back, known h readings late.
    assert rise[95:130].max() < 5.0
    assert spike[150 + h] > 50.0
    assert spike[150 + h] == spike.max()


def test_a_burst_of_noise_raises_the_noise_statistic() -> None:
    rng = np.random.default_rng(2)
    params = BankParams(("sound_db",), warmup=20, fit_after=10_000)
    # Past the first ~15 min (whose scale is a plain running mean) the scale adapts slowly.
    sound = 75.0 + rng.normal(0, 1.5, 2000)
    sound[1500:1560] += rng.normal(0, 9.0, 60)
    noise = one_device(sound[:, None], params)[:, stat(params, "sound_db__noise")]
    assert noise[1000:1490].max() < 2.0
    assert np.median(noise[1520:1560]) > 3.0


def test_a_drifting_sensor_breaks_its_relation_to_the_others() -> None:
    """Temperature follows the machine (seen in sound) with a lag; a drift does not."""
    rng = np.random.default_rng(3)
    params = BankParams(FIELDS, fit_after=600, refit_every=300, warmup=20)
    n = 3000
    running = (np.arange(n) // 150) % 2 == 1
    sound = np.where(running, 78.0, 52.0) + rng.normal(0, 1.0, n)
    temp = np.empty(n)
    temp[0] = 30.0
    for i in range(1, n):
        target = 65.0 if running[i] else 30.0
        temp[i] = target + (temp[i - 1] - target) * math.exp(-1 / 25)
    temp += rng.normal(0, 0.15, n)
    humid = 45.0 + rng.normal(0, 0.3, n)
    drifted = temp.copy()
    drifted[2400:] += np.arange(n - 2400) * (2.0 / 60)  # 2 degrees per minute
    col = stat(params, "temperature_c__resid")
    clean = one_device(np.c_[temp, humid, sound], params)[:, col]
    drift = one_device(np.c_[drifted, humid, sound], params)[:, col]
    assert clean[700:].max() < 4.0
    # The smoothed residual is clipped at resid_clip (6) spreads: the drift reaches it.
    assert drift[2700:3000].max() > 2.5 * clean[700:].max()
    assert drift[2700:3000].max() == pytest.approx(params.resid_clip, rel=0.05)


def test_batches_do_not_change_any_statistic() -> None:
    """The gateway sees a few readings per batch, the backtest a second of them, training
    thousands: every split of the same stream must give the very same floats."""
    sim = Simulator(lines=1, devices_per_line=3, seed=5, start_ts=0.0)
    rows = list(sim.run(max_steps=900))
    keys = [r.device for r in rows]
    ts = np.array([int(r.ts * 1e9) for r in rows], dtype=np.int64)
    values = np.array([[r.values[f] for f in FIELDS] for r in rows])
    params = BankParams(FIELDS, **SMALL)
    whole, _ = DeviceBank(params).update(keys, ts, values)
    bank = DeviceBank(params)
    pieces = [
        bank.update(keys[i : i + 7], ts[i : i + 7], values[i : i + 7])[0]
        for i in range(0, len(rows), 7)
    ]
    one_by_one = DeviceBank(params)
    singles = [
        one_by_one.update(keys[i : i + 1], ts[i : i + 1], values[i : i + 1])[0]
        for i in range(len(rows))
    ]
    assert np.array_equal(whole, np.vstack(pieces))
    assert np.array_equal(whole, np.vstack(singles))


def test_warm_up_late_readings_and_the_device_bound() -> None:
    params = BankParams(("x",), warmup=5, fit_after=50, max_devices=2)
    bank = DeviceBank(params)
    ts = np.arange(1, 21, dtype=np.int64)
    _, state = bank.update(["a"] * 20, ts, np.ones((20, 1)))
    assert (state == WARMING).sum() == 5 + 2 * params.hampel_half - 1
    assert (state == READY).sum() == 20 - (5 + 2 * params.hampel_half - 1)
    _, state = bank.update(["a", "a"], np.array([20, 21]), np.ones((2, 1)))
    assert state.tolist() == [LATE, READY]
    assert bank.late == 1
    bank.update(["b", "c"], np.array([1, 1]), np.ones((2, 1)))
    assert bank.devices == 2  # "a", least recently seen, was forgotten
    _, state = bank.update(["a"], np.array([100]), np.ones((1, 1)))
    assert state.tolist() == [WARMING]  # it starts learning again


def test_limits_extrapolate_the_tail_and_count_events_not_readings() -> None:
    rng = np.random.default_rng(4)
    x = rng.exponential(1.0, 200_000)
    groups = np.zeros(x.size)
    lim = fit_limit(x, groups, 1e-6)
    # Exponential(1): P(X > t) = exp(-t); the 1e-6 quantile is ln(1e6) = 13.8.
    assert lim.value == pytest.approx(math.log(1e6), rel=0.05)
    assert lim.run_length == pytest.approx(1.0, rel=0.05)
    # The same values held for 10 readings each: exceedances come in runs of ten, so
    # the per-reading rate is 10x and the limit lower by ln(10).
    held = np.repeat(x[:20_000], 10)
    lim10 = fit_limit(held, np.zeros(held.size), 1e-6)
    assert lim10.run_length == pytest.approx(10.0, rel=0.03)  # neighbours can merge runs
    assert lim10.value == pytest.approx(lim.value - math.log(10), abs=0.5)
    with pytest.raises(LimitError, match="need >= 1000"):
        fit_limits(np.ones((10, 1)), np.zeros(10), ["s"], 1e-6)
    assert fit_limit(np.zeros(5000), np.zeros(5000), 1e-6).value is None


def _dataset(seed: int, devices: int, steps: int) -> Dataset:
    sim = Simulator(
        lines=1, devices_per_line=devices, seed=seed, start_ts=1.7e9, fault_rate_per_hour=6.0
    )
    rows = list(sim.run(max_steps=steps))
    return Dataset(
        X=np.array([[r.values[f] for f in FIELDS] for r in rows]),
        y=np.array([r.is_anomaly for r in rows], dtype=np.int8),
        faults=np.array([r.fault for r in rows]),
        ts=None,
        feature_names=FIELDS,
        groups=np.array([f"{r.line}/{r.device}" for r in rows], dtype=object),
        ts_ns=np.array([round(r.ts * 1e9) for r in rows], dtype=np.int64),
    )


def test_trained_model_loads_without_scikit_learn_and_scores_rank(tmp_path: Path) -> None:
    detector, meta = train_dynamics(_dataset(8, 3, 1500), params=SMALL)
    assert meta["threshold"] == 0.5 and meta["calibration"] == {"kind": "ratio"}
    assert all(lim.value is not None for lim in detector.limits)
    version = save_artifact(tmp_path, detector, meta)
    sklearn_loaded = "sklearn" in sys.modules
    scorer = load_scorer(version)
    assert scorer.raw_fields == FIELDS and scorer.stateful
    assert scorer.history_readings == SMALL["fit_after"] + 6
    if not sklearn_loaded:
        assert "sklearn" not in sys.modules
    inputs = scorer.new_inputs()
    data = _dataset(9, 2, 1200)
    batch = inputs.build(list(data.groups), data.ts_ns, data.X)
    scores = scorer.score(batch.X)
    assert batch.index.size == len(data) and batch.partial > 0
    # Ratio calibration: 0.5 at the limit, no saturation far beyond it.
    assert scores.min() >= 0.0 and scores.max() < 1.0
    assert np.unique(scores[scores > 0.9]).size == (scores > 0.9).sum()
    top = int(np.argmax(scores))
    drivers = scorer.top_contributors(scorer.explain(batch.X[top : top + 1])[0], 2)
    assert drivers[0][0] in scorer.signals and drivers[0][1] == pytest.approx(
        scores[top] / (1 - scores[top])
    )


def test_drift_watch_compares_the_raw_fields_of_the_time_aware_model(tmp_path: Path) -> None:
    """The machines the model was trained on: unshifted they do not drift, with a temperature
    sensor recalibrated +8 °C they do.  The per-device statistics adapt by design and are
    not watched."""
    from gateway.config import DriftConfig
    from gateway.drift_watch import DriftWatch
    from gateway.metrics import GatewayMetrics

    detector, meta = train_dynamics(_dataset(8, 3, 1500), params=SMALL)
    scorer = load_scorer(save_artifact(tmp_path, detector, meta))
    assert scorer.drift_columns == FIELDS

    def psi_after(shift: float) -> dict[str, float]:
        metrics = GatewayMetrics("gw")
        watch = DriftWatch(DriftConfig(window=4000, check_interval_s=0.0), "gw", metrics)
        data = _dataset(8, 3, 1500)
        values = data.X + np.array([shift, 0.0, 0.0])
        batch = scorer.new_inputs().build(list(data.groups), data.ts_ns, values)
        watch.observe(scorer, batch.X, scorer.score(batch.X) >= scorer.threshold)
        watch.check(1.0, scorer.version)
        return {
            name: metrics.registry.get_sample_value("gateway_drift_psi", {"feature": name})
            for name in scorer.features
        }

    calm, recalibrated = psi_after(0.0), psi_after(8.0)
    assert {name for name, psi in calm.items() if psi is not None} == set(FIELDS)
    assert max(calm[f] for f in FIELDS) < 0.25
    assert recalibrated["temperature_c"] >= 0.25 > recalibrated["sound_db"]
