"""model.artifact, model.scorer and the ``python -m model`` CLI."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import cli
from model.artifact import (
    COMPILED_FILE,
    CURRENT,
    HISTORY_FILE,
    ModelError,
    activate,
    active_version,
    list_versions,
    resolve,
    save_artifact,
)
from model.calibration import Calibration
from model.dataset import Dataset
from model.detectors import raw_scores
from model.envelope import Envelope
from model.scorer import load_scorer
from model.training import train

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ("temperature_c", "humidity_pct", "sound_db")
MEAN = np.array([60.0, 45.0, 70.0, 2.0])  # last: vibration_mm_s
SD = np.array([2.0, 3.0, 2.0, 0.3])


def make_readings(n: int, anomaly_fraction: float, seed: int, k: int = 3):
    """Normal Gaussian cluster plus obvious outliers (far out on every axis)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(MEAN[:k], SD[:k], size=(n, k))
    y = np.zeros(n, dtype=np.int8)
    idx = rng.choice(n, int(n * anomaly_fraction), replace=False)
    signs = rng.choice([-1.0, 1.0], size=(idx.size, k))
    X[idx] = MEAN[:k] + SD[:k] * signs * rng.uniform(6, 10, size=(idx.size, k))
    y[idx] = 1
    return X, y


def make_dataset(n=1500, anomaly_fraction=0.03, seed=0, names=FEATURES) -> Dataset:
    X, y = make_readings(n, anomaly_fraction, seed, k=len(names))
    return Dataset(X=X, y=y, faults=None, ts=None, feature_names=tuple(names))


def write_readings_csv(path: Path, n: int, seed: int, anomaly_fraction: float = 0.03) -> Path:
    X, y = make_readings(n, anomaly_fraction, seed)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ts", "Temperature_C", "Humidity_%", "Sound_Volume_dB", "is_anomaly"])
        for i in range(n):
            fault = "erratic" if y[i] else "none"
            writer.writerow([f"t{i}", *np.round(X[i], 4), fault])
    return path


@pytest.fixture(scope="module")
def model_and_data():
    dataset = make_dataset()
    pipeline, metadata = train(dataset, random_state=5)
    return dataset, pipeline, metadata


@pytest.fixture
def models_dir(tmp_path: Path, model_and_data) -> Path:
    _, pipeline, metadata = model_and_data
    save_artifact(tmp_path / "models", pipeline, metadata)
    return tmp_path / "models"


# --- artifact --------------------------------------------------------------------------


def test_round_trip_gives_identical_scores(tmp_path: Path, model_and_data) -> None:
    dataset, pipeline, metadata = model_and_data
    version_dir = save_artifact(tmp_path / "models", pipeline, metadata)
    scorer = load_scorer(version_dir)
    envelope = Envelope.from_dict(metadata["envelope"], len(FEATURES))
    raw = raw_scores(pipeline, dataset.X) + envelope.penalty(dataset.X)
    expected = Calibration.from_dict(metadata["calibration"]).apply(raw)
    np.testing.assert_array_equal(scorer.score(dataset.X), expected)
    assert scorer.version == version_dir.name
    assert scorer.features == FEATURES
    assert scorer.threshold == metadata["threshold"]
    assert scorer.path == version_dir
    assert scorer.metadata["version"] == version_dir.name
    on_disk = json.loads((version_dir / "metadata.json").read_text())
    assert on_disk["calibration"] == metadata["calibration"]
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "compiled.npz",
        "metadata.json",
        "model.joblib",
    ]


def test_version_names_and_collisions(tmp_path: Path, model_and_data) -> None:
    _, pipeline, metadata = model_and_data
    meta = {**metadata, "created_at": "2024-05-01T12:00:00Z"}
    sha8 = metadata["training"]["data_sha256"][:8]
    models = tmp_path / "models"
    first = save_artifact(models, pipeline, meta)
    second = save_artifact(models, pipeline, meta, activate=False)
    third = save_artifact(models, pipeline, meta, activate=False)
    assert first.name == f"20240501T120000Z-{sha8}"
    assert second.name == f"{first.name}-2"
    assert third.name == f"{first.name}-3"
    assert list_versions(models) == [first.name, second.name, third.name]
    assert active_version(models) == first.name
    # Nothing temporary is left behind; the one activation is in the history.
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [CURRENT, HISTORY_FILE, first.name, second.name, third.name]
    )


def test_models_dir_and_current_resolve_to_active_version(tmp_path: Path, model_and_data) -> None:
    _, pipeline, metadata = model_and_data
    models = tmp_path / "models"
    old = save_artifact(models, pipeline, {**metadata, "created_at": "2024-01-01T00:00:00Z"})
    new = save_artifact(
        models, pipeline, {**metadata, "created_at": "2024-02-01T00:00:00Z"}, activate=False
    )
    assert load_scorer(models).version == old.name
    assert load_scorer(models / CURRENT).version == old.name

    before = load_scorer(models / CURRENT)
    activate(models, new.name)
    assert os.readlink(models / CURRENT) == new.name  # relative link
    assert load_scorer(models).version == new.name
    # A loaded scorer keeps its version: the symlink was resolved once at load time.
    assert before.version == old.name
    assert before.path == old
    assert resolve(models) == new

    with pytest.raises(ModelError, match="not found"):
        activate(models, "20990101T000000Z-deadbeef")


def test_current_switch_is_atomic_for_readers(tmp_path: Path, model_and_data) -> None:
    _, pipeline, metadata = model_and_data
    models = tmp_path / "models"
    a = save_artifact(models, pipeline, {**metadata, "created_at": "2024-01-01T00:00:00Z"})
    b = save_artifact(models, pipeline, {**metadata, "created_at": "2024-01-02T00:00:00Z"})
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[Exception] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(resolve(models).name)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(300):
            activate(models, (a if i % 2 else b).name)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert seen <= {a.name, b.name}
    assert not [p for p in models.iterdir() if p.name.startswith(".")]


def test_missing_and_corrupt_artifacts_raise_model_error(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_scorer(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="neither"):
        load_scorer(empty)

    version_dir = resolve(models_dir)
    (version_dir / COMPILED_FILE).write_bytes(b"not an npz")
    with pytest.raises(ModelError, match=r"cannot load .*compiled\.npz"):
        load_scorer(models_dir)
    (version_dir / COMPILED_FILE).unlink()  # without it: the pickled pipeline
    (version_dir / "model.joblib").write_bytes(b"not a pickle at all")
    with pytest.raises(ModelError, match=r"cannot load .*model\.joblib"):
        load_scorer(models_dir)

    (version_dir / "metadata.json").write_text("{broken")
    with pytest.raises(ModelError, match="metadata unreadable"):
        load_scorer(models_dir)

    (version_dir / "metadata.json").unlink()
    (version_dir / "model.joblib").unlink()
    with pytest.raises(ModelError, match="neither a model version"):
        load_scorer(models_dir)  # current now points at a directory without a model
    version_dir.rmdir()
    with pytest.raises(ModelError, match="does not exist"):
        load_scorer(models_dir / CURRENT)


def test_metadata_inconsistent_with_model(models_dir: Path) -> None:
    meta_path = resolve(models_dir) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["features"].append({"name": "vibration_mm_s", "unit": ""})
    meta["feature_stats"]["vibration_mm_s"] = meta["feature_stats"]["sound_db"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="expects 3 features but metadata lists 4"):
        load_scorer(models_dir)
    del meta["threshold"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="lacks \\['threshold'\\]"):
        load_scorer(models_dir)


def test_sklearn_version_mismatch_is_logged(models_dir: Path, caplog) -> None:
    # Only the pickled pipeline depends on the sklearn version (the compiled arrays don't).
    (resolve(models_dir) / COMPILED_FILE).unlink()
    meta_path = resolve(models_dir) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["versions"]["sklearn"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="model.scorer"):
        load_scorer(models_dir)
    assert "scikit-learn 0.0.1" in caplog.text


# --- scorer ----------------------------------------------------------------------------


def test_score_validates_input(models_dir: Path) -> None:
    scorer = load_scorer(models_dir)
    assert scorer.score(np.empty((0, 3))).shape == (0,)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        scorer.score(np.array([60.0, 45.0, 70.0]))
    with pytest.raises(ValueError, match=r"got shape \(2, 4\)"):
        scorer.score(np.ones((2, 4)))
    with pytest.raises(ValueError, match="row 1: humidity_pct is nan"):
        scorer.score(np.array([[60.0, 45.0, 70.0], [60.0, np.nan, 70.0]]))


def test_scores_separate_outliers(models_dir: Path) -> None:
    scorer = load_scorer(models_dir)
    X, y = make_readings(3000, 0.05, seed=42)
    scores = scorer.score(X)
    assert scores.shape == (3000,)
    assert np.all((scores >= 0) & (scores <= 1))
    flagged = scorer.is_anomaly(scores)
    assert flagged[y == 1].mean() >= 0.9  # recall on obvious outliers
    assert flagged[y == 0].mean() <= 0.05  # false-alarm rate
    assert np.median(scores[y == 0]) < 0.1


def test_explain_names_the_deviating_feature(models_dir: Path) -> None:
    scorer = load_scorer(models_dir)
    stats = scorer.metadata["feature_stats"]
    row = np.array([[stats[f]["mean"] for f in FEATURES]])
    row[0, 0] += 8 * stats["temperature_c"]["std"]
    row[0, 2] -= 3 * stats["sound_db"]["std"]
    z = scorer.explain(row)
    assert z.shape == (1, 3)
    np.testing.assert_allclose(z[0], [8.0, 0.0, -3.0], atol=1e-9)
    top = scorer.top_contributors(z[0], n=2)
    assert [name for name, _ in top] == ["temperature_c", "sound_db"]
    assert top[1][1] == pytest.approx(-3.0)
    assert scorer.score(row)[0] > scorer.threshold


def test_concurrent_scoring_matches_sequential(models_dir: Path) -> None:
    scorer = load_scorer(models_dir)
    rng = np.random.default_rng(3)
    batches = [rng.normal(MEAN[:3], SD[:3], size=(int(n), 3)) for n in rng.integers(1, 400, 24)]
    expected = [scorer.score(b) for b in batches]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(scorer.score, batches))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def _row_values(k: int):
    """Rows around the training cluster, far outside the envelope, and beyond float32."""
    near = [st.floats(m - 12 * sd, m + 12 * sd) for m, sd in zip(MEAN[:k], SD[:k], strict=True)]
    wild = st.floats(-1e40, 1e40, allow_nan=False, allow_infinity=False)
    return st.tuples(*[st.one_of(n, n, n, wild) for n in near]).map(list)


@pytest.mark.parametrize("detector", ["isolation_forest", "pca_t2q"])
def test_score_row_equals_the_matrix_path(tmp_path: Path, detector: str) -> None:
    """The API's one-row path gives the very floats of score() and explain(), for the
    compiled forest (its own one-row walk) and any other detector (the batch call)."""
    pipeline, metadata = train(make_dataset(n=600), detector=detector, random_state=2)
    save_artifact(tmp_path / "models", pipeline, metadata)
    scorer = load_scorer(tmp_path / "models")
    assert (scorer._raw_one is not None) == (detector == "isolation_forest")

    @settings(max_examples=300, deadline=None)
    @given(_row_values(3))
    def check(row: list[float]) -> None:
        value, z = scorer.score_row(row)
        matrix = np.array([row])
        assert value == scorer.score(matrix)[0]
        assert z == scorer.explain(matrix)[0].tolist()
        top = scorer.top_contributors_row(z, 3)
        assert [abs(zi) for _, zi in top] == sorted(map(abs, z), reverse=True)
        assert all(z[i] == zi for i, zi in top)

    check()
    with pytest.raises(ValueError, match="humidity_pct is nan"):
        scorer.score_row([60.0, float("nan"), 70.0])
    with pytest.raises(ValueError, match="expected 3 values"):
        scorer.score_row([60.0, 45.0])


def test_extra_feature_trains_and_scores_with_four_columns(tmp_path: Path) -> None:
    names = (*FEATURES, "vibration_mm_s")
    pipeline, metadata = train(make_dataset(names=names), random_state=1)
    assert metadata["features"][-1] == {"name": "vibration_mm_s", "unit": ""}
    scorer = load_scorer(save_artifact(tmp_path / "models", pipeline, metadata))
    assert scorer.features == names
    X, y = make_readings(500, 0.05, seed=8, k=4)
    flagged = scorer.is_anomaly(scorer.score(X))
    assert flagged[y == 1].mean() >= 0.9
    with pytest.raises(ValueError, match="shape"):
        scorer.score(X[:, :3])


# --- CLI -------------------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "INFO"}
    return subprocess.run(
        [sys.executable, "-m", "model", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """Train once through the CLI; later CLI tests reuse the model."""
    tmp = tmp_path_factory.mktemp("cli")
    train_csv = write_readings_csv(tmp / "train.csv", 1500, seed=11)
    models = tmp / "models"
    result = run_cli(
        "train",
        "--csv",
        train_csv,
        "--label-column",
        "is_anomaly",
        "--fault-column",
        "is_anomaly",
        "--timestamp-column",
        "ts",
        "--models-dir",
        models,
        "--seed",
        "3",
        "--detector",  # these tests are about the per-reading detectors' CLI
        "isolation_forest",
    )
    return tmp, models, result


def test_cli_train(cli_model) -> None:
    _, models, result = cli_model
    assert result.returncode == 0, result.stderr
    (version,) = list_versions(models)
    assert active_version(models) == version
    assert f"saved {models / version} (active)" in result.stdout
    assert "recall" in result.stdout
    for stage in ("fitting isolation_forest", "calibrating", "evaluating"):
        assert stage in result.stderr
    meta = json.loads((models / version / "metadata.json").read_text())
    assert meta["training"]["source"] == "train.csv"
    assert meta["training"]["label_column"] == "is_anomaly"
    assert meta["metrics"]["test"]["recall"] >= 0.9


def test_cli_evaluate(cli_model) -> None:
    tmp, models, _ = cli_model
    data = write_readings_csv(tmp / "eval.csv", 2000, seed=12, anomaly_fraction=0.05)
    out = tmp / "metrics.json"
    # No --label-column: the model remembers which column it was trained with.
    result = run_cli("evaluate", "--csv", data, "--model", models / CURRENT, "--out", out)
    assert result.returncode == 0, result.stderr
    for label in ("precision", "recall", "F1", "ROC-AUC", "false-alarm rate", "erratic"):
        assert label in result.stdout
    metrics = json.loads(out.read_text())
    assert metrics["support"]["rows"] == 2000
    assert metrics["support"]["anomalies"] == 100
    assert metrics["recall"] >= 0.9
    assert metrics["false_alarm_rate"] <= 0.05
    assert metrics["per_fault"]["erratic"]["n"] == 100


def test_cli_score(cli_model) -> None:
    tmp, models, _ = cli_model
    data = write_readings_csv(tmp / "score_in.csv", 700, seed=13)
    out = tmp / "scored.csv"
    result = run_cli("score", "--csv", data, "--out", out, "--model", models, "--chunk-rows", "128")
    assert result.returncode == 0, result.stderr
    assert "scored 700 rows" in result.stdout
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 700
    # The input already has an is_anomaly column (labels): it is kept as is.
    assert list(rows[0])[-3:] == ["is_anomaly", "score", "is_anomaly_pred"]
    scores = np.array([float(r["score"]) for r in rows])
    assert np.all((scores >= 0) & (scores <= 1))
    truth = np.array([r["is_anomaly"] == "erratic" for r in rows])
    pred = np.array([r["is_anomaly_pred"] == "1" for r in rows])
    assert pred[truth].mean() >= 0.9
    assert pred[~truth].mean() <= 0.05
    assert rows[5]["ts"] == "t5"


def test_cli_bad_csv_exits_2_with_one_line(cli_model) -> None:
    tmp, models, _ = cli_model
    bad = tmp / "bad.csv"
    bad.write_text("temperature_c,humidity_pct,sound_db\n60,45,70\n61,oops,70\n")
    result = run_cli("score", "--csv", bad, "--out", tmp / "x.csv", "--model", models)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: bad.csv line 3: column 'humidity_pct' value 'oops' is not a finite number "
        "(use --drop-invalid to skip such rows)"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp / "x.csv").exists()

    result = run_cli(
        "train",
        "--csv",
        bad,
        "--features",
        "temperature_c,vibration",
        "--detector",
        "isolation_forest",
    )
    assert result.returncode == 2
    assert "error: bad.csv: feature column 'vibration' not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_model_exits_2(tmp_path: Path) -> None:
    data = write_readings_csv(tmp_path / "d.csv", 50, seed=1)
    result = run_cli("evaluate", "--csv", data, "--model", tmp_path / "models" / CURRENT)
    assert result.returncode == 2
    assert "error: model path not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_list_activate_info(tmp_path: Path, model_and_data, monkeypatch, capsys) -> None:
    # In-process: these commands are cheap; keep test logging handlers intact.
    monkeypatch.setattr(cli, "setup_logging", lambda level=None: None)
    _, pipeline, metadata = model_and_data
    models = tmp_path / "models"
    old = save_artifact(models, pipeline, {**metadata, "created_at": "2024-01-01T00:00:00Z"})
    new = save_artifact(
        models, pipeline, {**metadata, "created_at": "2024-03-01T00:00:00Z"}, activate=False
    )
    assert cli.main(["list", "--models-dir", str(models)]) == 0
    listing = capsys.readouterr().out
    assert f"* {old.name}" in listing
    assert f"  {new.name}" in listing

    assert cli.main(["activate", new.name, "--models-dir", str(models)]) == 0
    assert active_version(models) == new.name
    assert cli.main(["info", "--models-dir", str(models)]) == 0
    info = capsys.readouterr().out
    assert f"version    {new.name} (active)" in info
    assert "temperature_c [°C]" in info

    assert cli.main(["activate", "nope", "--models-dir", str(models)]) == 2
    assert "error:" in capsys.readouterr().err
    assert active_version(models) == new.name
