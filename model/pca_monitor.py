"""PCA process monitoring: Hotelling T² and Q (squared prediction error), combined.

The classic multivariate statistical process control method (Jackson 1991; Qin 2003):
fit PCA on normal data, keep the components that explain ``explained_variance`` of
the variance, then for each reading

* T² = sum_i t_i² / λ_i over the retained scores t_i: how far the reading lies
  *inside* the model plane from the centre, in units of each component's variance;
* Q  = ||x - P Pᵀ x||²: how far it lies *off* the plane, i.e. how much of it the
  normal correlation structure cannot explain (a broken correlation, a sensor that
  moved on its own).

Each statistic is divided by its control limit at significance ``alpha`` and the two
are added (``combine="sum"``, the unweighted form of Yue & Qin's combined index), so
1.0 on either statistic means "at its limit" and the two can be thresholded together;
``combine="max"`` flags whichever is further beyond its limit instead.

Control limits:

* T²: the F-distribution limit for a *new* observation,
  ``k (n-1)(n+1) / (n (n-k)) · F_{1-alpha}(k, n-k)``;
* Q: Jackson-Mudholkar (1979) from the residual eigenvalues θ_j = Σ λ_i^j,
  ``h0 = 1 - 2 θ1 θ3 / (3 θ2²)``; when h0 <= 0 (one residual eigenvalue dominates)
  that formula breaks down and the Liu-Tang-Zhang (2009) approximation of the weighted
  χ² sum by a (non-central) χ² matching its first four cumulants is used instead
  (within 1 % of Monte Carlo where Box's two-moment g·χ²_h is 13 % low - see the
  tests).  ``q_limit="empirical"`` takes the training Q's ``1 - alpha`` quantile
  instead (no normality assumption).

The limits only *normalise* the two statistics; the alert threshold is chosen later on
calibrated scores like for any detector (see :mod:`model.training`).  At least one
component is always left out of the model (``k <= p - 1``) so that Q exists: with
three features that usually means two components.

``score_samples`` follows the sklearn outlier convention (higher = more normal): it
returns minus the combined statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_array, check_is_fitted

Q_LIMITS = ("jackson_mudholkar", "empirical")
COMBINES = ("sum", "max")
# Eigenvalues below this fraction of the largest are treated as zero variance.
_RELATIVE_EIGEN_FLOOR = 1e-12


def t2_limit(k: int, n: int, alpha: float) -> float:
    """Hotelling T² upper control limit for a new observation (F distribution)."""
    from scipy import stats  # fit-time only: keeps `import model.scorer` light

    if not 0 < k < n:
        raise ValueError(f"need 0 < k < n, got k={k}, n={n}")
    f = stats.f.ppf(1.0 - alpha, k, n - k)
    return float(k * (n - 1) * (n + 1) / (n * (n - k)) * f)


def q_limit_jackson_mudholkar(residual_eigenvalues: np.ndarray, alpha: float) -> float:
    """Q (SPE) upper control limit from the eigenvalues of the discarded components."""
    from scipy import stats

    lam = np.asarray(residual_eigenvalues, dtype=np.float64)
    theta1, theta2, theta3 = (float(np.sum(lam**j)) for j in (1, 2, 3))
    if theta1 <= 0.0:
        return 0.0
    h0 = 1.0 - 2.0 * theta1 * theta3 / (3.0 * theta2 * theta2)
    c = float(stats.norm.ppf(1.0 - alpha))
    if h0 > 0.0:
        base = (
            c * math.sqrt(2.0 * theta2 * h0 * h0) / theta1
            + 1.0
            + theta2 * h0 * (h0 - 1.0) / (theta1 * theta1)
        )
        if base > 0.0:
            return theta1 * base ** (1.0 / h0)
    return q_limit_liu(lam, alpha)


def q_limit_liu(eigenvalues: np.ndarray, alpha: float) -> float:
    """1 - alpha quantile of sum λ_i z_i² (Liu, Tang & Zhang 2009, central case)."""
    from scipy import stats

    lam = np.asarray(eigenvalues, dtype=np.float64)
    c1, c2, c3, c4 = (float(np.sum(lam**j)) for j in (1, 2, 3, 4))
    s1, s2 = c3 / c2**1.5, c4 / c2**2
    if s1 * s1 > s2:
        a = 1.0 / (s1 - math.sqrt(s1 * s1 - s2))
        delta = s1 * a**3 - a * a
        dof = a * a - 2.0 * delta
    else:
        a, delta, dof = 1.0 / math.sqrt(s2), 0.0, 1.0 / s2
    if delta > 0:
        x = float(stats.ncx2.ppf(1.0 - alpha, dof, delta))
    else:
        x = float(stats.chi2.ppf(1.0 - alpha, dof))
    # Standardise the χ² quantile, then rescale to Q's mean and standard deviation.
    return (x - (dof + delta)) / (math.sqrt(2.0) * a) * math.sqrt(2.0 * c2) + c1


class PcaT2Q(BaseEstimator):
    """PCA Hotelling T² + Q detector with the sklearn outlier interface.

    Put a ``StandardScaler`` in front of it (as :mod:`model.detectors` does): PCA on
    standardised features is PCA on the correlation matrix, so no sensor dominates
    just because of its unit.
    """

    def __init__(
        self,
        explained_variance: float = 0.95,
        alpha: float = 0.01,
        q_limit: str = "jackson_mudholkar",
        combine: str = "sum",
        max_components: int | None = None,
    ):
        self.explained_variance = explained_variance
        self.alpha = alpha
        self.q_limit = q_limit
        self.combine = combine
        self.max_components = max_components

    def _validate_params(self) -> None:
        if not 0.0 < self.explained_variance <= 1.0:
            raise ValueError(f"explained_variance must be in (0, 1], got {self.explained_variance}")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if self.q_limit not in Q_LIMITS:
            raise ValueError(f"q_limit must be one of {Q_LIMITS}, got {self.q_limit!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.max_components is not None and self.max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {self.max_components}")

    def fit(self, X: np.ndarray, y: object = None) -> PcaT2Q:
        self._validate_params()
        X = check_array(X, dtype=np.float64)
        n, p = X.shape
        if n < p + 2:
            raise ValueError(f"need at least {p + 2} rows to fit {p} features, got {n}")
        self.n_features_in_ = p
        self.mean_ = X.mean(axis=0)
        _, s, vt = np.linalg.svd(X - self.mean_, full_matrices=False)
        eigen = s**2 / (n - 1)
        # Components with (numerically) no variance cannot be divided by in T².
        usable = int(np.count_nonzero(eigen > _RELATIVE_EIGEN_FLOOR * max(eigen[0], 1e-300)))
        total = float(eigen.sum())
        ratio = np.cumsum(eigen) / total if total > 0 else np.ones_like(eigen)
        k = int(np.searchsorted(ratio, self.explained_variance - 1e-12) + 1)
        # Keep >= 1 residual dimension so that Q is defined (p >= 2).
        k = min(k, usable, p - 1 if p > 1 else 1, self.max_components or p)
        k = max(k, 1)
        self.n_components_ = k
        self.components_ = vt[:k]
        self.explained_variance_ = eigen[:k]
        self.explained_variance_ratio_ = eigen[:k] / total if total > 0 else np.zeros(k)
        self.residual_variance_ = eigen[k:]
        self.t2_limit_ = t2_limit(k, n, self.alpha)
        t2, q = self.t2_q(X)
        has_residual = p > k and float(self.residual_variance_.sum()) > 0.0
        if not has_residual:
            limit = 0.0
        elif self.q_limit == "empirical":
            limit = float(np.quantile(q, 1.0 - self.alpha))
        else:
            limit = q_limit_jackson_mudholkar(self.residual_variance_, self.alpha)
        # A zero limit would divide by zero; Q is then ~0 for normal data anyway.
        floor = 1e-12 * max(total, 1e-300)
        self.q_limit_ = float(max(limit, floor))
        self.train_t2_ = _summary(t2)
        self.train_q_ = _summary(q)
        return self

    def t2_q(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T², Q) per row, before normalisation by the control limits."""
        check_is_fitted(self, "components_")
        X = check_array(X, dtype=np.float64)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features, got {X.shape[1]}")
        centred = X - self.mean_
        scores = centred @ self.components_.T
        t2 = np.sum(scores * scores / self.explained_variance_, axis=1)
        residual = centred - scores @ self.components_
        q = np.sum(residual * residual, axis=1)
        return t2, q

    def combined(self, X: np.ndarray) -> np.ndarray:
        """T²/limit (+ or max) Q/limit per row: 1.0 = at a control limit."""
        t2, q = self.t2_q(X)
        t2n, qn = t2 / self.t2_limit_, q / self.q_limit_
        return t2n + qn if self.combine == "sum" else np.maximum(t2n, qn)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Minus the combined statistic: higher = more normal (sklearn convention)."""
        return -self.combined(X)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Positive iff both T² and Q are within their control limits (the classic rule)."""
        t2, q = self.t2_q(X)
        return 1.0 - np.maximum(t2 / self.t2_limit_, q / self.q_limit_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """+1 within both control limits, -1 beyond either."""
        return np.where(self.decision_function(X) >= 0, 1, -1)


@dataclass(frozen=True)
class CompiledPca:
    """A fitted StandardScaler + PcaT2Q as plain numpy: the same operations in the same
    order (so the same floats), without sklearn's per-call validation (~1 ms)."""

    scale_mean: np.ndarray
    scale: np.ndarray
    model: PcaT2Q

    @property
    def n_features(self) -> int:
        return int(self.scale_mean.shape[0])

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        """Combined statistic per row (higher = more anomalous) = -score_samples."""
        m = self.model
        Z = np.asarray(X, dtype=np.float64) - self.scale_mean
        Z /= self.scale
        centred = Z - m.mean_
        scores = centred @ m.components_.T
        t2 = np.sum(scores * scores / m.explained_variance_, axis=1)
        residual = centred - scores @ m.components_
        q = np.sum(residual * residual, axis=1)
        t2n, qn = t2 / m.t2_limit_, q / m.q_limit_
        return t2n + qn if m.combine == "sum" else np.maximum(t2n, qn)


def compile_pca(pipeline: object) -> CompiledPca | None:
    """CompiledPca for exactly ``StandardScaler() -> PcaT2Q``, else None."""
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        return None
    scaler, model = (step for _, step in pipeline.steps)
    if type(scaler) is not StandardScaler or type(model) is not PcaT2Q:
        return None
    if not (scaler.with_mean and scaler.with_std) or not hasattr(model, "components_"):
        return None
    return CompiledPca(scaler.mean_, scaler.scale_, model)


def _summary(values: np.ndarray) -> dict[str, float]:
    q50, q99 = np.quantile(values, [0.5, 0.99])
    return {"median": float(q50), "p99": float(q99), "max": float(np.max(values))}
