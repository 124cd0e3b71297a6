"""The one scoring object shared by the gateway and the API.

    scorer = load_scorer("var/models/current")
    scores = scorer.score(X)              # X: (n, k) float, columns in scorer.features
    alerts = scores >= scorer.threshold
    z = scorer.explain(X[alerts])         # why: signed deviation per feature
    scorer.top_contributors(z[0])         # [("temperature_c", 6.2), ...]

Models that use per-device rolling features (``temperature_c__std_10``, see
:mod:`model.stream_features`) list them in ``features`` like any other column; the
caller computes them, e.g. with one ``scorer.new_window()`` per device:

    window = scorer.new_window()
    x = window.update(reading.ts_ns, reading.values)   # None during warm-up

A Scorer is immutable after loading, so one instance may serve concurrent
``score()`` calls from several threads.  ``load_scorer`` resolves ``current`` once:
to pick up a newly activated model, load a new Scorer and swap the reference.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact import COMPILED_FILE, MODEL_FILE, ModelError, read_metadata, resolve
from model.calibration import Calibration
from model.dynamics.detector import NAME as TIME_AWARE
from model.dynamics.detector import DynamicsDetector
from model.envelope import Envelope
from model.inputs import Inputs, inputs_for
from model.stream_features import RollingWindow, StreamFeatureError, StreamSpec

_LOG = logging.getLogger(__name__)

_REQUIRED_METADATA = (
    "version",
    "detector",
    "features",
    "threshold",
    "calibration",
    "feature_stats",
)

__all__ = ["ModelError", "Scorer", "load_scorer"]


class Scorer:
    def __init__(
        self,
        pipeline: Any,
        metadata: dict[str, Any],
        path: str | Path,
        raw_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.path = Path(path)
        self.metadata = metadata
        self.version: str = str(metadata["version"])
        self.detector: str = str(metadata["detector"])
        self.features: tuple[str, ...] = tuple(str(f["name"]) for f in metadata["features"])
        self.threshold = float(metadata["threshold"])
        self.calibration = Calibration.from_dict(metadata["calibration"])
        # The time-aware detector: statistics of each device's history (model.dynamics).
        self.dynamics = (
            DynamicsDetector.from_dict(metadata["dynamics"])
            if self.detector == TIME_AWARE
            else None
        )
        if self.dynamics is not None:
            if self.features != self.dynamics.columns:
                raise ValueError(f"features {self.features} != {self.dynamics.columns}")
            raw_fn = self.dynamics.raw_scores
        # Models saved before the envelope existed have none: no range term.
        env = metadata.get("envelope")
        self.envelope = (
            Envelope.from_dict(env, len(metadata["features"])) if env is not None else None
        )
        stats = metadata["feature_stats"]
        self._mean = np.array([float(stats[f]["mean"]) for f in self.features])
        std = np.array([float(stats[f]["std"]) for f in self.features])
        # A feature that never varied in training: measure deviation in its own units.
        self._std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        self._pipeline = pipeline
        # IsolationForest pipelines are compiled to flat arrays (same scores, ~50x less
        # per-call overhead); other detectors score through sklearn.
        if raw_fn is None and self.detector != TIME_AWARE:
            from model.detectors import compiled_raw_scores

            raw_fn = compiled_raw_scores(pipeline)
        self._raw_scores = raw_fn
        # A compiled forest also scores a single row without numpy's 2-D overhead.
        self._raw_one: Callable[[Sequence[float]], float] | None = getattr(
            getattr(raw_fn, "__self__", None), "raw_score_one", None
        )
        self._mean_list = [float(v) for v in self._mean]
        self._std_list = [float(v) for v in self._std]
        if not self.features:
            raise ValueError("model has no features")
        self.stream = StreamSpec.from_features(self.features)
        declared = metadata.get("stream_features")
        declared_windows = None if declared is None else dict(declared.get("window", {}))
        if self.stream.has_derived and declared_windows not in (None, self.stream.windows):
            raise ValueError(
                f"stream_features.window {declared_windows} does not match the "
                f"features, which need {self.stream.windows}"
            )

    @property
    def raw_fields(self) -> tuple[str, ...]:
        """Reading fields the model needs (its plain features and the windowed fields)."""
        if self.dynamics is not None:
            return self.dynamics.fields
        return self.stream.raw_fields

    @property
    def stateful(self) -> bool:
        """True if a reading's score depends on its device's earlier readings."""
        return self.dynamics is not None or self.stream.has_derived

    @property
    def history_readings(self) -> int:
        """Earlier readings of a device this model needs before its scores are complete
        (0: each reading stands alone).  The time-aware detector scores after
        ``warmup`` readings and adds its cross-sensor check after ``fit_after``."""
        if self.dynamics is not None:
            p = self.dynamics.params
            return p.fit_after + 2 * p.hampel_half
        return self.stream.warmup

    @property
    def drift_columns(self) -> tuple[str, ...]:
        """Input columns whose distribution the drift watch compares with training: the
        raw fields for the time-aware model (its statistics adapt to each device by
        design, so a recalibrated sensor shows in its values, not in them)."""
        return self.dynamics.fields if self.dynamics is not None else self.features

    @property
    def signals(self) -> tuple[str, ...]:
        """What each column of :meth:`explain` measures (alert drivers name these)."""
        return self.dynamics.signals if self.dynamics is not None else self.features

    def new_window(self) -> RollingWindow:
        """Empty per-device window computing this model's features from readings."""
        return RollingWindow(self.stream)

    def new_inputs(self) -> Inputs:
        """Fresh per-device state turning readings (``raw_fields`` order) into rows."""
        bank = self.dynamics.new_bank() if self.dynamics is not None else None
        return inputs_for(self.stream, bank)

    def __repr__(self) -> str:
        return f"Scorer(version={self.version!r}, features={self.features!r})"

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        k = len(self.features)
        if X.ndim != 2 or X.shape[1] != k:
            raise ValueError(
                f"expected a 2-D array of shape (n, {k}) with columns {list(self.features)}, "
                f"got shape {X.shape}"
            )
        finite = np.isfinite(X)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise ValueError(f"row {row}: {self.features[col]} is {X[row, col]} (not finite)")
        return X

    def raw_score(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated detector scores (higher = more anomalous), shape (n,)."""
        X = self._check(X)
        if X.shape[0] == 0:
            return np.empty(0)
        raw = self._raw_scores(X)
        if self.envelope is not None:
            raw = raw + self.envelope.penalty(X)
        return raw

    def score(self, X: np.ndarray) -> np.ndarray:
        """Calibrated anomaly scores in [0, 1], shape (n,); alert iff >= ``threshold``."""
        return self.calibration.apply(self.raw_score(X))

    def score_row(self, row: Sequence[float]) -> tuple[float, list[float]]:
        """One row (k numbers in ``features`` order): its calibrated score and its
        z-deviations, equal to ``score`` and ``explain`` of the one-row matrix.

        The API's single-record requests take this path: the same arithmetic on
        Python floats where that is exact (IEEE +, -, *, / and comparisons), numpy
        where it is not, and no 2-D array checks.  About half the time of
        ``score`` + ``explain`` for one row.
        """
        k = len(self.features)
        if len(row) != k:
            raise ValueError(f"expected {k} values in the order {list(self.features)}")
        for name, value in zip(self.features, row, strict=True):
            if not math.isfinite(value):
                raise ValueError(f"row 0: {name} is {value} (not finite)")
        if self.dynamics is not None:
            ratios = self.dynamics.ratios(np.array([row], dtype=np.float64))[0]
            return self.calibration.apply_one(float(ratios.max())), ratios.tolist()
        if self._raw_one is not None:
            raw = self._raw_one(row)
        else:
            raw = float(self._raw_scores(np.array([row], dtype=np.float64))[0])
        if self.envelope is not None:
            raw = raw + self.envelope.penalty_one(row)
        z = [
            (value - mean) / std
            for value, mean, std in zip(row, self._mean_list, self._std_list, strict=True)
        ]
        return self.calibration.apply_one(raw), z

    def is_anomaly(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) >= self.threshold

    def explain(self, X: np.ndarray) -> np.ndarray:
        """Per-feature signed z-deviation from the training mean, shape (n, k).

        Cheap and model-agnostic: it says which readings are unusual, not how the
        detector weighed them.  For the time-aware detector: each statistic over its
        control limit (the score is their maximum), named by :attr:`signals`.
        """
        X = self._check(X)
        if self.dynamics is not None:
            return self.dynamics.ratios(X)
        return (X - self._mean) / self._std

    def top_contributors(self, row_z: np.ndarray, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` features with the largest |z| in one row of :meth:`explain`."""
        row_z = np.asarray(row_z, dtype=np.float64).ravel()
        if row_z.shape[0] != len(self.features):
            raise ValueError(f"expected {len(self.features)} z-values, got {row_z.shape[0]}")
        return [(self.signals[i], zi) for i, zi in self.top_contributors_row(row_z.tolist(), n)]

    def top_contributors_row(self, z: Sequence[float], n: int = 3) -> list[tuple[int, float]]:
        """The ``n`` largest |z| of one row as (feature index, z) pairs; ties keep the
        feature order (a stable sort)."""
        order = sorted(range(len(z)), key=lambda i: -abs(z[i]))[: max(n, 0)]
        return [(i, z[i]) for i in order]


def _load_joblib(path: Path) -> dict[str, Any]:
    import joblib

    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = joblib.load(path)
        except Exception as exc:  # unpickling fails in many ways (EOF, bad opcode, imports)
            raise ModelError(f"cannot load {path}: {type(exc).__name__}: {exc}") from None
    for warning in caught:
        _LOG.warning("%s: %s", path.name, warning.message)
    if not isinstance(obj, dict) or "pipeline" not in obj:
        raise ModelError(f"{path} is not a model artifact (expected a dict with 'pipeline')")
    if not hasattr(obj["pipeline"], "score_samples"):
        raise ModelError(f"{path}: pipeline has no score_samples()")
    return obj


def load_scorer(path: str | Path) -> Scorer:
    """Load the model at ``path``: a version dir, the ``current`` symlink or a models dir."""
    version_dir = resolve(path)
    metadata = read_metadata(version_dir)
    missing = [key for key in _REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelError(f"{version_dir}/metadata.json lacks {missing}")
    if metadata["detector"] == TIME_AWARE:
        # Everything is in the metadata: no pickle, no scikit-learn at serving time.
        return _finish(version_dir, metadata, None, None)
    compiled = version_dir / COMPILED_FILE
    if metadata["detector"] == "isolation_forest" and compiled.is_file():
        forest = _load_compiled(compiled)
        _check_width(version_dir, metadata, forest.n_features)
        return _finish(version_dir, metadata, None, forest.raw_scores)
    return _load_pickled(version_dir, metadata)


def _load_compiled(path: Path):
    from model.fastforest import CompiledForest

    try:
        return CompiledForest.load(path)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from None


def _load_pickled(version_dir: Path, metadata: dict[str, Any]) -> Scorer:
    """The joblib pipeline (imports scikit-learn): other detectors, older artifacts."""
    import sklearn

    artifact = _load_joblib(version_dir / MODEL_FILE)
    pipeline = artifact["pipeline"]
    if artifact.get("detector") not in (None, metadata["detector"]):
        raise ModelError(
            f"{version_dir}: model.joblib holds detector {artifact.get('detector')!r} "
            f"but metadata says {metadata['detector']!r}"
        )
    trained_with = metadata.get("versions", {}).get("sklearn")
    if trained_with and trained_with != sklearn.__version__:
        _LOG.warning(
            "model %s was trained with scikit-learn %s, running %s; check its scores",
            metadata["version"],
            trained_with,
            sklearn.__version__,
        )
    width = getattr(pipeline, "n_features_in_", None)
    if width is not None:
        _check_width(version_dir, metadata, width)
    return _finish(version_dir, metadata, pipeline, None)


def _check_width(version_dir: Path, metadata: dict[str, Any], width: int) -> None:
    listed = [f.get("name") for f in metadata["features"]]
    if width != len(listed):
        raise ModelError(
            f"{version_dir}: model expects {width} features but metadata lists "
            f"{len(listed)} {listed}"
        )


def _finish(
    version_dir: Path,
    metadata: dict[str, Any],
    pipeline: Any,
    raw_fn: Callable[[np.ndarray], np.ndarray] | None,
) -> Scorer:
    try:
        scorer = Scorer(pipeline, metadata, version_dir, raw_fn)
    except StreamFeatureError as exc:
        raise ModelError(f"{version_dir}/metadata.json: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{version_dir}/metadata.json is inconsistent: {exc!r}") from None
    try:
        # Smoke test: a broken pipeline should fail at load time, not on the first reading.
        scorer.score(scorer._mean[None, :])
    except Exception as exc:
        raise ModelError(f"{version_dir}: model cannot score: {exc}") from None
    _LOG.info("loaded model %s (%s, features %s)", scorer.version, scorer.detector, scorer.features)
    return scorer
