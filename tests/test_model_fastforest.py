"""model.fastforest: the compiled IsolationForest must score exactly like sklearn."""

from __future__ import annotations

import copy
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sklearn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.covariance import EllipticEnvelope
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from model import detectors
from model.artifact import COMPILED_FILE, resolve, save_artifact
from model.dataset import Dataset
from model.detectors import build_detector, compiled_raw_scores, raw_scores
from model.fastforest import (
    SMALL_BATCH_ROWS,
    TESTED_SKLEARN,
    CompiledForest,
    average_path_length,
    compile_forest,
)
from model.scorer import load_scorer
from model.training import train
from sensors.dataset_writer import VALUE_COLUMNS
from sensors.simulator import Simulator
from tests.helpers import ROOT

TOL = 1e-12  # the brief: identical to sklearn within 1e-12 (in practice bit-identical)
# sklearn warns when it casts values beyond float32 range to inf; so do we expect it to.
float32_overflow = pytest.mark.filterwarnings("ignore:overflow encountered in cast")


def assert_same(fast: np.ndarray, slow: np.ndarray) -> None:
    assert fast.shape == slow.shape
    np.testing.assert_allclose(fast, slow, rtol=0, atol=TOL)


def assert_like_sklearn(model, X: np.ndarray) -> CompiledForest:
    forest = compile_forest(model)
    assert forest is not None
    expected = model.score_samples(X)
    assert_same(forest.score_samples(X), expected)
    assert_same(forest.decision_function(X), model.decision_function(X))
    # Up to SMALL_BATCH_ROWS rows take the row-by-row walk: the same scores.
    for i in range(min(len(X), 5)):
        assert_same(forest.score_samples(X[i : i + 1]), expected[i : i + 1])
    assert_same(forest.score_samples(X[:SMALL_BATCH_ROWS]), expected[:SMALL_BATCH_ROWS])
    if X.dtype == np.float64:  # raw_score_one takes Python floats: the float64 path
        for i in range(min(len(X), 5)):
            assert forest.raw_score_one(X[i].tolist()) == forest.raw_scores(X[i : i + 1])[0]
    return forest


@pytest.fixture(scope="module")
def sim_X() -> np.ndarray:
    """Simulator readings (3 machines, with faults): realistic scales and outliers."""
    run = Simulator(lines=1, devices_per_line=3, seed=11).run(start_ts=0.0, max_steps=2000)
    return np.array([[r.values[c] for c in VALUE_COLUMNS] for r in run])


def query_rows(X: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows around the training data, a few far outside it, some copied exactly."""
    rng = np.random.default_rng(seed)
    Q = X[rng.integers(0, len(X), n)] + rng.normal(0, 1, (n, X.shape[1])) * X.std(axis=0)
    exact = rng.random(n) < 0.2
    Q[exact] = X[rng.integers(0, len(X), int(exact.sum()))]
    far = rng.random(n) < 0.1
    Q[far] *= 10.0 ** rng.integers(1, 8, (int(far.sum()), 1))
    return Q


# -- hypothesis: any data, any parameters -------------------------------------------

train_values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
# Query values span the whole float64 range: beyond float32 they become ±inf in the trees.
query_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-310, 3.4028235e38, 3.5e38, -1e300]),
)


@st.composite
def fitted_pipelines(draw) -> tuple[Pipeline, np.ndarray]:
    k = draw(st.integers(1, 4))
    n = draw(st.integers(1, 120))
    X = draw(arrays(np.float64, (n, k), elements=train_values))
    max_samples = draw(
        st.one_of(st.just("auto"), st.integers(1, n), st.floats(min(1.0, 2.0 / n), 1.0))
    )
    max_features = draw(st.one_of(st.integers(1, k), st.floats(1.0 / k, 1.0)))
    contamination = draw(st.one_of(st.just("auto"), st.floats(0.001, 0.5)))
    forest = IsolationForest(
        n_estimators=draw(st.integers(1, 12)),
        max_samples=max_samples,
        max_features=max_features,
        contamination=contamination,
        random_state=draw(st.integers(0, 2**16)),
    )
    return Pipeline([("scale", StandardScaler()), ("detector", forest)]).fit(X), X


@float32_overflow
@pytest.mark.filterwarnings("ignore:overflow encountered in (subtract|divide)")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=fitted_pipelines(), data=st.data())
def test_pipeline_matches_sklearn_on_any_data(case, data):
    pipeline, X = case
    k = X.shape[1]
    Q = data.draw(arrays(np.float64, (data.draw(st.integers(1, 40)), k), elements=query_values))
    # Training rows too: they sit exactly on the values the splits were drawn between.
    assert_like_sklearn(pipeline, np.vstack([Q, X]))


@float32_overflow
@settings(max_examples=40, deadline=None)
@given(
    X=arrays(np.float64, st.tuples(st.integers(2, 80), st.integers(1, 3)), elements=train_values),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_bare_forest_matches_sklearn_with_nan_and_inf(X, seed, data):
    """Without a scaler sklearn accepts NaN and ±inf; NaN follows missing_go_to_left."""
    forest = IsolationForest(n_estimators=8, max_features=0.7, random_state=seed).fit(X)
    values = st.one_of(query_values, st.just(np.nan), st.just(np.inf), st.just(-np.inf))
    Q = data.draw(arrays(np.float64, (data.draw(st.integers(1, 30)), X.shape[1]), elements=values))
    assert_like_sklearn(forest, Q)


# -- real models trained on simulator data ------------------------------------------

MODEL_PARAMS = {  # id: (random_state, detector params)
    "defaults": (0, {}),
    "mf0.67": (1, {"n_estimators": 50, "max_samples": 512, "max_features": 0.67}),
    "half": (2, {"n_estimators": 150, "max_samples": 0.5, "contamination": 0.01}),
    "one-feature": (3, {"n_estimators": 10, "max_samples": 64, "max_features": 1}),
    "deep": (4, {"n_estimators": 20, "max_samples": 1.0, "contamination": 0.1}),
}


@pytest.fixture(scope="module", params=list(MODEL_PARAMS.values()), ids=list(MODEL_PARAMS))
def sim_pipeline(request, sim_X) -> Pipeline:
    seed, params = request.param
    return build_detector("isolation_forest", seed, **params).fit(sim_X)


@float32_overflow
@pytest.mark.parametrize("n", [1, 2, 255, 256, 257, 1000, 5000])
def test_trained_model_matches_sklearn(sim_pipeline, sim_X, n):
    assert_like_sklearn(sim_pipeline, query_rows(sim_X, n, seed=n))


@float32_overflow
def test_extreme_rows_match_sklearn(sim_pipeline, sim_X):
    k = sim_X.shape[1]
    magnitudes = np.array([1e3, 1e6, 1e12, 1e30, 1e39, 1e200, 1e300])
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(magnitudes.size * 4, k))
    Q = np.repeat(magnitudes, 4)[:, None] * signs
    Q[::3, 0] = sim_X[0, 0]  # mix one normal column in
    assert_like_sklearn(sim_pipeline, np.vstack([Q, -Q, np.zeros((1, k))]))


def split_points(forest: IsolationForest, seed: int, per_tree: int = 5):
    """(input column, threshold) of a few random splits in every tree."""
    rng = np.random.default_rng(seed)
    for est, cols in zip(forest.estimators_, forest.estimators_features_, strict=True):
        tree = est.tree_
        inner = np.flatnonzero(tree.children_left != -1)
        for node in rng.choice(inner, size=min(per_tree, inner.size), replace=False):
            yield int(cols[tree.feature[node]]), float(tree.threshold[node])


def threshold_rows(forest: IsolationForest, seed: int) -> np.ndarray:
    """Per split, six rows whose split column is: the threshold rounded to float32 and
    its float32 neighbours below and above, then the same in float64 (which the
    float32 cast may round to either side)."""
    rng = np.random.default_rng(seed)
    rows = []
    for col, cut in split_points(forest, seed):
        c32, c64 = np.float32(cut), np.float64(cut)
        for value in (
            np.nextafter(c32, np.float32(-np.inf)),
            c32,
            np.nextafter(c32, np.float32(np.inf)),
            np.nextafter(c64, -np.inf),
            c64,
            np.nextafter(c64, np.inf),
        ):
            row = rng.normal(0.0, 1.0, forest.n_features_in_)
            row[col] = value
            rows.append(row)
    return np.array(rows)


def input_rows_near_splits(pipeline: Pipeline, dtype: type, seed: int) -> np.ndarray:
    """Input rows that, once scaled and cast to float32, land on or right next to a
    split: only exact float32 casting and scaling arithmetic score them like sklearn."""
    scaler, forest = pipeline.named_steps["scale"], pipeline.named_steps["detector"]
    rng = np.random.default_rng(seed)
    rows = []
    for col, cut in split_points(forest, seed, per_tree=2):
        x0 = cut * scaler.scale_[col] + scaler.mean_[col]
        if dtype is np.float32:  # consecutive float32 inputs around the split
            step = np.spacing(np.float32(x0))
            values = np.float32(x0) + step * np.arange(-6, 7, dtype=np.float32)
        else:  # quarter float32-ulp steps of the scaled value
            step = np.spacing(np.float32(cut)) * scaler.scale_[col] / 4
            values = x0 + step * np.arange(-8, 9)
        for value in values:
            row = scaler.mean_ + scaler.scale_ * rng.normal(0.0, 1.0, forest.n_features_in_)
            row[col] = value
            rows.append(row)
    return np.array(rows, dtype=dtype)


def test_rows_on_split_thresholds_match_sklearn(sim_pipeline):
    forest = sim_pipeline.named_steps["detector"]
    assert_like_sklearn(forest, threshold_rows(forest, seed=1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inputs_scaled_onto_thresholds_match_sklearn(sim_pipeline, dtype):
    assert_like_sklearn(sim_pipeline, input_rows_near_splits(sim_pipeline, dtype, seed=2))


def test_rows_exactly_equal_to_thresholds_go_left_like_sklearn(sim_pipeline):
    """sklearn's thresholds rarely are float32 values; round them so x == threshold happens."""
    forest = copy.deepcopy(sim_pipeline.named_steps["detector"])
    for est in forest.estimators_:
        cut = est.tree_.threshold
        cut[:] = cut.astype(np.float32)
    rows = threshold_rows(forest, seed=2)
    fast = assert_like_sklearn(forest, rows)
    # The rows really sit on thresholds: one float32 step up changes the scores.
    assert not np.array_equal(fast.score_samples(rows[1::6]), fast.score_samples(rows[2::6]))


# -- details of the compiled form ---------------------------------------------------


def test_nan_goes_where_sklearn_sends_it(sim_pipeline, sim_X):
    """sklearn accepts NaN (the Scorer does not); each split sends it one fixed way."""
    Q = query_rows(sim_X, 300, seed=8)
    Q[np.random.default_rng(8).random(Q.shape) < 0.3] = np.nan
    assert_like_sklearn(sim_pipeline, Q)


def test_average_path_length_formula():
    n = np.array([0, 1, 2, 3, 256])
    expected = [0.0, 0.0, 1.0, 2.0 * (np.log(2.0) + np.euler_gamma) - 4.0 / 3.0]
    np.testing.assert_array_equal(average_path_length(n)[:4], expected)
    assert average_path_length(n)[4] == pytest.approx(10.2448, abs=1e-4)


def test_chunking_and_dtypes_do_not_change_scores(sim_pipeline, sim_X):
    forest = compile_forest(sim_pipeline)
    Q = query_rows(sim_X, 700, seed=3)
    whole = forest.score_samples(Q)
    for chunk in (1, 7, 256, 10_000):
        np.testing.assert_array_equal(forest.score_samples(Q, chunk_rows=chunk), whole)
    # float32 input is scaled in float32 by sklearn, integers become float64.
    for typed in (Q.astype(np.float32), np.round(Q).astype(np.int64), Q.tolist()):
        assert_same(forest.score_samples(typed), sim_pipeline.score_samples(typed))
    assert forest.score_samples(np.empty((0, Q.shape[1]))).shape == (0,)


def test_single_sample_trees_score_like_sklearn():
    """max_samples=1: c(1) = 0, so sklearn defines the score instead of dividing by 0."""
    X = np.arange(12.0).reshape(4, 3)
    forest = IsolationForest(n_estimators=3, max_samples=1, random_state=0).fit(X)
    assert compile_forest(forest).denominator == 0
    assert_like_sklearn(forest, X + 0.5)


def test_constant_training_data_scores_like_sklearn():
    X = np.full((50, 3), 7.0)
    pipeline = build_detector("isolation_forest", 0, n_estimators=5).fit(X)
    assert_like_sklearn(pipeline, np.array([[7.0, 7.0, 7.0], [0.0, 100.0, -3.0]]))


def test_compiled_arrays_are_read_only_and_threads_agree(sim_pipeline, sim_X):
    forest = compile_forest(sim_pipeline)
    with pytest.raises(ValueError, match="read-only"):
        forest.threshold[0] = 0.0
    batches = [query_rows(sim_X, 50, seed=s) for s in range(16)]
    expected = [forest.score_samples(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(forest.score_samples, batches))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_bad_input_is_rejected_clearly(sim_pipeline):
    forest = compile_forest(sim_pipeline)
    with pytest.raises(ValueError, match="3 columns"):
        forest.score_samples(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="3 columns"):
        forest.score_samples(np.zeros(3))
    with pytest.raises(ValueError, match="numeric"):
        forest.score_samples(np.array([["a", "b", "c"]]))
    with pytest.raises(ValueError, match="infinity"):
        forest.score_samples(np.array([[1.0, np.inf, 2.0]]))
    with pytest.raises(ValueError):  # sklearn rejects infinity too
        sim_pipeline.score_samples(np.array([[1.0, np.inf, 2.0]]))


def test_only_isolation_forest_models_compile():
    X = np.random.default_rng(0).normal(size=(100, 2))
    assert compile_forest(Pipeline([("s", StandardScaler()), ("d", EllipticEnvelope())])) is None
    minmax = Pipeline([("s", MinMaxScaler()), ("d", IsolationForest(n_estimators=3))]).fit(X)
    assert compile_forest(minmax) is None
    assert compile_forest("not a model") is None
    with pytest.raises(ValueError, match="not fitted"):
        compile_forest(build_detector("isolation_forest", 0))


# -- integration: detectors.compiled_raw_scores and the Scorer ----------------------


def test_compiled_raw_scores_uses_the_forest_and_keeps_the_sign(sim_pipeline, sim_X):
    score = compiled_raw_scores(sim_pipeline)
    assert isinstance(score.__self__, CompiledForest)
    Q = query_rows(sim_X, 300, seed=4)
    assert_same(score(Q), raw_scores(sim_pipeline, Q))


def test_other_detectors_score_through_sklearn():
    X = np.random.default_rng(0).normal(size=(200, 2))
    pipeline = Pipeline([("s", StandardScaler()), ("d", EllipticEnvelope(random_state=0))]).fit(X)
    score = compiled_raw_scores(pipeline)
    assert not isinstance(getattr(score, "__self__", None), CompiledForest)
    np.testing.assert_array_equal(score(X[:5]), raw_scores(pipeline, X[:5]))


def test_a_compiled_forest_that_disagrees_is_not_used(sim_X, monkeypatch, caplog):
    """The load-time probe catches a compiled forest that does not match its model."""
    pipeline = build_detector("isolation_forest", 0, n_estimators=20).fit(sim_X)
    other = build_detector("isolation_forest", 1, n_estimators=20).fit(sim_X)
    monkeypatch.setattr(detectors, "compile_forest", lambda _: compile_forest(other))
    with caplog.at_level(logging.WARNING, logger="model.detectors"):
        score = compiled_raw_scores(pipeline)
    assert "differs from sklearn" in caplog.text
    Q = query_rows(sim_X, 20, seed=5)
    np.testing.assert_array_equal(score(Q), raw_scores(pipeline, Q))


def test_loaded_scorer_scores_through_the_compiled_forest(tmp_path, sim_X):
    rng = np.random.default_rng(6)
    X = sim_X[rng.permutation(len(sim_X))[:1500]]
    dataset = Dataset(X=X, y=None, faults=None, ts=None, feature_names=VALUE_COLUMNS)
    pipeline, metadata = train(dataset, random_state=3)
    save_artifact(tmp_path / "models", pipeline, metadata)
    scorer = load_scorer(tmp_path / "models")
    assert isinstance(scorer._raw_scores.__self__, CompiledForest)
    Q = query_rows(sim_X, 64, seed=7)
    expected = raw_scores(pipeline, Q)  # sklearn
    envelope = getattr(scorer, "envelope", None)
    if envelope is not None:
        expected = expected + envelope.penalty(Q)
    assert_same(scorer.raw_score(Q), expected)


# -- the scikit-learn version seam: compile_forest checks itself against sklearn -----


def test_installed_sklearn_and_the_pin_are_the_tested_series():
    """Upgrading sklearn is a decision: re-run this file on the new series, then add it."""
    assert ".".join(sklearn.__version__.split(".")[:2]) in TESTED_SKLEARN
    pin = next(
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("scikit-learn")
    )
    major, minor = TESTED_SKLEARN[-1].split(".")
    assert pin == f"scikit-learn>={TESTED_SKLEARN[0]},<{major}.{int(minor) + 1}"


@pytest.fixture
def untested_sklearn(monkeypatch, caplog):
    monkeypatch.setattr(sklearn, "__version__", "1.10.0")
    caplog.set_level(logging.WARNING, logger="model.fastforest")
    return caplog


@pytest.fixture(scope="module")
def small_pipeline(sim_X) -> Pipeline:
    return build_detector("isolation_forest", 0, n_estimators=20).fit(sim_X)


def test_an_untested_sklearn_that_agrees_is_compiled_with_a_warning(
    small_pipeline, sim_X, untested_sklearn
):
    forest = compile_forest(small_pipeline)
    assert "scikit-learn 1.10.0 is not a series" in untested_sklearn.text
    assert "scoring through sklearn" not in untested_sklearn.text
    assert_same(
        forest.score_samples(query_rows(sim_X, 50, seed=9)),
        small_pipeline.score_samples(query_rows(sim_X, 50, seed=9)),
    )


def scored_differently(pipeline: Pipeline) -> Pipeline:
    """A copy whose sklearn scoring no longer matches its tree internals, as if a
    release changed how leaves are valued (sklearn caches them per tree at fit)."""
    broken = copy.deepcopy(pipeline)
    forest = broken.named_steps["detector"]
    first, *rest = forest._average_path_length_per_tree
    forest._average_path_length_per_tree = (first + 0.5, *rest)
    return broken


class _TreeWithoutMissingGoToLeft:
    """A tree whose node records lack ``missing_go_to_left`` (as before sklearn 1.3)."""

    def __init__(self, tree):
        self._tree = tree

    def __getattr__(self, name):
        return getattr(self._tree, name)

    def __getstate__(self):
        state = self._tree.__getstate__()
        nodes = state["nodes"]
        kept = [name for name in nodes.dtype.names if name != "missing_go_to_left"]
        return {**state, "nodes": nodes[kept]}


def without_missing_go_to_left(pipeline: Pipeline) -> Pipeline:
    broken = copy.deepcopy(pipeline)
    for est in broken.named_steps["detector"].estimators_:
        est.tree_ = _TreeWithoutMissingGoToLeft(est.tree_)
    return broken


@pytest.mark.parametrize(
    ("breaking", "message"),
    [
        (scored_differently, "compiled forest differs from scikit-learn 1.10.0"),
        (without_missing_go_to_left, "cannot compile the forest with scikit-learn 1.10.0"),
    ],
    ids=["scores-differ", "internals-missing"],
)
def test_an_untested_sklearn_that_disagrees_scores_through_sklearn(
    small_pipeline, sim_X, untested_sklearn, breaking, message
):
    broken = breaking(small_pipeline)
    Q = query_rows(sim_X, 50, seed=10)
    assert compile_forest(broken) is None
    assert message in untested_sklearn.text
    assert "scoring through sklearn" in untested_sklearn.text
    # The sklearn model still scores, and the caller scores with it.
    score = compiled_raw_scores(broken)
    assert not isinstance(getattr(score, "__self__", None), CompiledForest)
    np.testing.assert_array_equal(score(Q), raw_scores(broken, Q))


def test_a_disagreeing_forest_is_not_saved_for_serving(tmp_path, sim_X, untested_sklearn):
    """Serving loads the saved arrays without sklearn: they must never be written
    unchecked, so such a model is served from its pickle."""
    rng = np.random.default_rng(11)
    X = sim_X[rng.permutation(len(sim_X))[:1500]]
    dataset = Dataset(X=X, y=None, faults=None, ts=None, feature_names=VALUE_COLUMNS)
    pipeline, metadata = train(dataset, random_state=3)
    broken = scored_differently(pipeline)
    save_artifact(tmp_path / "models", broken, metadata)
    assert not (resolve(tmp_path / "models") / COMPILED_FILE).exists()
    assert "differs from scikit-learn" in untested_sklearn.text
    scorer = load_scorer(tmp_path / "models")
    Q = query_rows(sim_X, 64, seed=12)
    expected = raw_scores(broken, Q)
    envelope = getattr(scorer, "envelope", None)
    if envelope is not None:
        expected = expected + envelope.penalty(Q)
    np.testing.assert_array_equal(scorer.raw_score(Q), expected)
