"""model.pca_monitor (PCA Hotelling T² + Q), its registration, config and `compare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from model import cli
from model.artifact import save_artifact
from model.calibration import Calibration
from model.dataset import Dataset
from model.detectors import build_detector, raw_scores
from model.envelope import Envelope
from model.pca_monitor import CompiledPca, PcaT2Q, q_limit_jackson_mudholkar, t2_limit
from model.scorer import load_scorer
from model.training import TrainingError, train

FEATURES = ("temperature_c", "humidity_pct", "sound_db")


def correlated(n: int, seed: int, noise: float = 0.1) -> np.ndarray:
    """Three features driven by two latent factors plus small independent noise."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    mix = np.array([[1.0, 0.8, 0.2], [0.0, 0.5, 1.0]])
    return z @ mix + rng.normal(0.0, noise, size=(n, 3))


def test_t2_and_q_match_a_direct_pca_computation() -> None:
    X = correlated(2000, seed=1)
    model = PcaT2Q(explained_variance=0.95).fit(X)
    assert model.n_components_ == 2
    pca = PCA(n_components=2).fit(X)
    fresh = correlated(300, seed=2) * 1.5
    scores = pca.transform(fresh)
    t2_expected = np.sum(scores**2 / pca.explained_variance_, axis=1)
    q_expected = np.sum((fresh - pca.inverse_transform(scores)) ** 2, axis=1)
    t2, q = model.t2_q(fresh)
    np.testing.assert_allclose(t2, t2_expected, rtol=1e-9)
    np.testing.assert_allclose(q, q_expected, rtol=1e-9, atol=1e-12)
    combined = t2 / model.t2_limit_ + q / model.q_limit_
    np.testing.assert_allclose(model.score_samples(fresh), -combined, rtol=1e-12)


def test_component_choice_keeps_a_residual() -> None:
    X = correlated(1000, seed=3)
    assert PcaT2Q(explained_variance=0.5).fit(X).n_components_ == 1
    # Even "all the variance" leaves one dimension for Q.
    full = PcaT2Q(explained_variance=1.0).fit(X)
    assert full.n_components_ == 2
    assert full.q_limit_ > 0
    assert PcaT2Q(max_components=1).fit(X).n_components_ == 1
    # A constant column has no variance to divide by; it must not break T².
    Xc = np.column_stack([X, np.full(len(X), 5.0)])
    model = PcaT2Q(explained_variance=1.0).fit(Xc)
    assert model.n_components_ <= 3
    assert np.all(np.isfinite(model.score_samples(Xc)))


def test_control_limits_hold_their_false_alarm_rate_on_gaussian_data() -> None:
    rng = np.random.default_rng(4)
    cov = np.diag([4.0, 2.0, 0.5, 0.3, 0.2])
    X = rng.multivariate_normal(np.zeros(5), cov, size=20_000)
    fresh = rng.multivariate_normal(np.zeros(5), cov, size=40_000)
    for q_limit in ("jackson_mudholkar", "empirical"):
        model = PcaT2Q(explained_variance=0.8, alpha=0.01, q_limit=q_limit).fit(X)
        assert model.n_components_ == 2
        t2, q = model.t2_q(fresh)
        assert np.mean(t2 > model.t2_limit_) == pytest.approx(0.01, abs=0.002)
        assert np.mean(q > model.q_limit_) == pytest.approx(0.01, abs=0.002)
        # The classic rule: predict -1 beyond either limit.
        beyond = (t2 > model.t2_limit_) | (q > model.q_limit_)
        np.testing.assert_array_equal(model.predict(fresh) == -1, beyond)


def test_q_limit_formulas_against_monte_carlo() -> None:
    rng = np.random.default_rng(5)
    n = 400_000
    even = np.array([0.5, 0.3, 0.2])
    q_even = (rng.standard_normal((n, 3)) ** 2) @ even
    assert q_limit_jackson_mudholkar(even, 0.01) == pytest.approx(
        np.quantile(q_even, 0.99), rel=0.03
    )
    # One dominant residual eigenvalue makes h0 negative: Liu-Tang-Zhang takes over.
    uneven = np.r_[1.0, np.full(100, 0.01)]
    theta = [float(np.sum(uneven**j)) for j in (1, 2, 3)]
    assert 1 - 2 * theta[0] * theta[2] / (3 * theta[1] ** 2) < 0
    q_uneven = rng.standard_normal(n) ** 2 + 0.01 * rng.chisquare(100, n)
    assert q_limit_jackson_mudholkar(uneven, 0.01) == pytest.approx(
        np.quantile(q_uneven, 0.99), rel=0.02
    )
    assert t2_limit(2, 1000, 0.01) > t2_limit(1, 1000, 0.01) > 0


def test_a_broken_correlation_is_caught_by_q() -> None:
    X = correlated(3000, seed=6, noise=0.05)
    model = PcaT2Q().fit(X)
    sd = X.std(axis=0)
    # Each value is ordinary on its own, but the first two normally move together.
    odd = np.array([[1.5 * sd[0], -1.5 * sd[1], 0.0]])
    t2, q = model.t2_q(odd)
    assert q[0] > 10 * model.q_limit_
    assert t2[0] < model.t2_limit_
    assert model.predict(odd)[0] == -1
    assert np.mean(model.predict(correlated(2000, seed=7, noise=0.05)) == 1) > 0.97


def dataset(n: int = 3000, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = correlated(n, seed) * [2.0, 3.0, 2.0] + [60.0, 45.0, 70.0]
    y = np.zeros(n, dtype=np.int8)
    idx = rng.choice(n, n // 30, replace=False)
    X[idx] += rng.choice([-1.0, 1.0], size=(idx.size, 3)) * rng.uniform(8, 12, (idx.size, 3))
    y[idx] = 1
    faults = np.where(y == 1, "erratic", "none")
    return Dataset(X=X, y=y, faults=faults, ts=None, feature_names=FEATURES)


def test_pca_detector_trains_saves_and_scores_like_any_detector(tmp_path: Path) -> None:
    data = dataset()
    pipeline, meta = train(data, detector="pca_t2q", random_state=3)
    assert meta["detector"] == "pca_t2q"
    assert meta["params"] == {
        "random_state": 3,
        "explained_variance": 0.95,
        "alpha": 0.01,
        "q_limit": "jackson_mudholkar",
        "combine": "sum",
    }
    assert set(meta["drift_reference"]) == set(FEATURES)
    test = meta["metrics"]["test"]
    assert test["recall"] >= 0.9
    assert test["false_alarm_rate"] <= 0.01
    scorer = load_scorer(save_artifact(tmp_path / "models", pipeline, meta))
    assert scorer.detector == "pca_t2q"
    # Scored through the compiled numpy path, with sklearn's results to the last bit.
    assert isinstance(scorer._raw_scores.__self__, CompiledPca)
    fresh = dataset(2000, seed=9)
    envelope = Envelope.from_dict(meta["envelope"], 3)
    expected = Calibration.from_dict(meta["calibration"]).apply(
        raw_scores(pipeline, fresh.X) + envelope.penalty(fresh.X)
    )
    np.testing.assert_array_equal(scorer.score(fresh.X), expected)
    flagged = scorer.is_anomaly(scorer.score(fresh.X))
    assert flagged[fresh.y == 1].mean() >= 0.9
    assert flagged[fresh.y == 0].mean() <= 0.02


def test_bad_pca_parameters_are_training_errors() -> None:
    with pytest.raises(TrainingError, match="explained_variance"):
        train(dataset(300), detector="pca_t2q", params={"explained_variance": 2})
    with pytest.raises(TrainingError, match="q_limit"):
        train(dataset(300), detector="pca_t2q", params={"q_limit": "guess"})
    with pytest.raises(ValueError, match="need at least 5 rows"):
        build_detector("pca_t2q", 0).fit(np.ones((4, 3)))


# --- selection by config and the compare command ---------------------------------------


@pytest.fixture
def quiet_cli(monkeypatch):
    # In-process CLI: keep pytest's logging handlers.
    monkeypatch.setattr(cli, "setup_logging", lambda level=None: None)


def test_detector_is_selected_by_config_env_and_flag(
    tmp_path: Path, sim_csv: Path, monkeypatch, quiet_cli
) -> None:
    small = tmp_path / "small.csv"
    with open(sim_csv) as src, open(small, "w") as dst:
        dst.writelines(line for _, line in zip(range(3001), src, strict=False))
    config = tmp_path / "model.toml"
    config.write_text('[train]\ndetector = "pca_t2q"\n[train.pca_t2q]\nexplained_variance = 0.6\n')
    models = tmp_path / "models"

    def trained(*options: str, flags: tuple[str, ...] = ()) -> dict:
        args = ["train", "--csv", str(small), "--models-dir", str(models), "--fault-column"]
        assert cli.main([*options, *args, "fault", *flags]) == 0
        return json.loads((models / "current" / "metadata.json").read_text())

    meta = trained("--config", str(config))
    assert meta["detector"] == "pca_t2q"
    assert meta["params"]["explained_variance"] == 0.6
    # A flag beats the file.
    meta = trained("--config", str(config), flags=("--detector", "isolation_forest"))
    assert meta["detector"] == "isolation_forest"
    # The environment beats the defaults (and the file).
    monkeypatch.setenv("MODEL_TRAIN_DETECTOR", "pca_t2q")
    assert trained()["detector"] == "pca_t2q"
    monkeypatch.setenv("MODEL_TRAIN_DETECTOR", "lof")
    assert cli.main(["train", "--csv", str(small), "--models-dir", str(models)]) == 2


def test_compare_trains_each_detector_on_the_same_split(
    tmp_path: Path, sim_csv: Path, capsys, quiet_cli
) -> None:
    out = tmp_path / "compare.json"
    args = ["compare", "--csv", str(sim_csv), "--detectors", "isolation_forest,pca_t2q"]
    assert cli.main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("precision", "ROC-AUC", "false-alarm", "humidity_excursion", "noise_burst"):
        assert label in text
    result = json.loads(out.read_text())
    # The simulator CSV's label columns are found without being named.
    assert (result["label_column"], result["fault_column"]) == ("is_anomaly", "fault")
    runs = {r["detector"]: r for r in result["runs"]}
    assert set(runs) == {"isolation_forest", "pca_t2q"}
    supports = [r["test"]["support"] for r in runs.values()]
    assert supports[0]["rows"] == supports[1]["rows"]
    assert supports[0]["anomalies"] == supports[1]["anomalies"]
    for run in runs.values():
        assert f"{run['detector']:<16}" in text
        assert run["test"]["per_fault"]["humidity_excursion"]["recall"] >= 0.9
        assert run["test"]["false_alarm_rate"] <= 0.01
        assert run["fault_auc"]["humidity_excursion"] >= 0.95
