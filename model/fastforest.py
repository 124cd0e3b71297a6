"""A fitted StandardScaler + IsolationForest compiled into flat numpy arrays.

sklearn scores an IsolationForest tree by tree (``tree.apply`` per estimator), which
costs ~5 ms per call however few rows are scored.  Here every tree is padded into
one ``(n_trees, max_nodes)`` table and a batch walks all trees at once, one level per
step, with numpy gathers: the Python overhead is per *level* (at most
``ceil(log2(max_samples))`` steps), never per tree or per row.

    forest = compile_forest(pipeline)          # None if not an IsolationForest model
    forest.score_samples(X)                    # == pipeline.score_samples(X)

The arithmetic repeats sklearn 1.9's ``IsolationForest._compute_score_samples``
operation for operation, so scores agree to the last bit in practice (the tests
demand 1e-12):

* the scaler works in the input's float dtype (float32 stays float32, anything
  else becomes float64): ``(X - mean_) / scale_``;
* the forest casts the scaled X to float32 and goes left iff ``x <= threshold``
  (compared in float64); a NaN goes where the tree's ``missing_go_to_left`` says;
* each tree reads only its ``estimators_features_`` columns when ``max_features``
  drew fewer than all of them;
* a leaf contributes ``(depth + c(n_node_samples)) - 1`` with the root at depth 1,
  added up tree after tree; ``score = -2 ** -(sum / (n_trees * c(max_samples_)))``.

Version seam: this reads sklearn's private tree internals (``tree_.__getstate__()``
node records, ``estimators_features_``, ``max_samples_``), which sklearn may change in
any minor release.  It was tested against the scikit-learn series in
:data:`TESTED_SKLEARN` (last on 1.9.1), and requirements.txt pins that series.  Whatever the
version, :func:`compile_forest` checks the compiled scores against the model's own
``score_samples`` on probe rows and returns None (the caller keeps sklearn's scoring)
with a logged warning if the internals cannot be read or the scores differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# Scoring needs only numpy; sklearn is imported where a fitted model is compiled, so a
# process that loads a saved compiled forest (the gateway, the API) never imports it
# (~95 MB of resident memory).
if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest
    from sklearn.preprocessing import StandardScaler

__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "TESTED_SKLEARN",
    "CompiledForest",
    "average_path_length",
    "compile_forest",
]

_LOG = logging.getLogger(__name__)

# scikit-learn minor series whose internals and arithmetic this module was tested
# against (tests/test_model_fastforest.py); keep requirements.txt's pin in step.
TESTED_SKLEARN = ("1.9",)
# The load-time check: probe rows scored both ways must agree this closely.
_PROBE_ROWS = 64
_PROBE_TOLERANCE = 1e-12

_LEAF = -1  # sklearn's TREE_LEAF child index
# Rows per walk: keeps the (n_trees, rows) temporaries in cache (256 measured fastest).
DEFAULT_CHUNK_ROWS = 256
# Batches of up to this many rows are walked row by row (_path_length_sum_one):
# cheaper below ~3 rows, dearer above (measured with the default model).
SMALL_BATCH_ROWS = 2


def average_path_length(n_samples: np.ndarray) -> np.ndarray:
    """c(n): average path length of an unsuccessful BST search among n points.

    Written with the same operations, in the same order, as sklearn's
    ``_average_path_length`` so that the floats come out identical.
    """
    n = np.asarray(n_samples, dtype=np.float64)
    out = np.zeros(n.shape)
    big = n > 2
    out[n == 2] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _breadth_first(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Node ids in breadth-first order with siblings adjacent, and each node's depth
    (root = 1, as ``Tree.compute_node_depths``)."""
    order = []
    depth = np.zeros(left.shape[0], dtype=np.int64)
    frontier = np.array([0], dtype=np.intp)
    level = 1
    while frontier.size:
        order.append(frontier)
        depth[frontier] = level
        inner = frontier[left[frontier] != _LEAF]
        frontier = np.column_stack([left[inner], right[inner]]).reshape(-1)
        level += 1
    return np.concatenate(order), depth


def _split_model(model: object) -> tuple[StandardScaler | None, IsolationForest] | None:
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(model, IsolationForest):
        return None, model
    if not isinstance(model, Pipeline):
        return None
    steps = [step for _, step in model.steps]
    if len(steps) == 1 and isinstance(steps[0], IsolationForest):
        return None, steps[0]
    # Exact type: a StandardScaler subclass might transform differently.
    if (
        len(steps) == 2
        and type(steps[0]) is StandardScaler
        and isinstance(steps[1], IsolationForest)
    ):
        return steps[0], steps[1]
    return None


def compile_forest(model: object) -> CompiledForest | None:
    """Compile a fitted ``IsolationForest`` or ``Pipeline([StandardScaler, IsolationForest])``.

    Returns None for any other model, and also (with a logged warning) when this
    scikit-learn's internals cannot be read or the compiled forest scores probe rows
    differently from ``model.score_samples``: the caller then keeps using sklearn.
    Raises ValueError if the model has the right shape but is not fitted.
    """
    parts = _split_model(model)
    if parts is None:
        return None
    scaler, forest = parts
    if not hasattr(forest, "estimators_"):
        raise ValueError("the IsolationForest is not fitted")
    if scaler is not None and not hasattr(scaler, "n_features_in_"):
        raise ValueError("the StandardScaler is not fitted")
    import sklearn

    version = sklearn.__version__
    if ".".join(version.split(".")[:2]) not in TESTED_SKLEARN:
        _LOG.warning(
            "scikit-learn %s is not a series model.fastforest was tested with (%s); "
            "checking the compiled forest against sklearn",
            version,
            ", ".join(TESTED_SKLEARN),
        )
    try:
        compiled = CompiledForest.from_fitted(scaler, forest)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        _LOG.warning(
            "cannot compile the forest with scikit-learn %s (%r); scoring through sklearn",
            version,
            exc,
        )
        return None
    try:
        probe = _probe_rows(compiled)
        gap = float(np.max(np.abs(compiled.score_samples(probe) - model.score_samples(probe))))
    except Exception as exc:  # sklearn itself cannot score: its own scoring will say why
        _LOG.warning("cannot check the compiled forest (%r); scoring through sklearn", exc)
        return None
    if not gap <= _PROBE_TOLERANCE:  # also catches NaN
        _LOG.warning(
            "compiled forest differs from scikit-learn %s by %g; scoring through sklearn",
            version,
            gap,
        )
        return None
    return compiled


def _probe_rows(forest: CompiledForest) -> np.ndarray:
    """Rows spread over and beyond each column's split thresholds, in input units.

    Drawn from the thresholds rather than a fixed range so that a bare forest on raw
    units is probed where its splits are; a fixed seed makes every load check alike.
    """
    rng = np.random.default_rng(0)
    inner = forest.left != np.arange(forest.left.shape[0])  # leaves point at themselves
    Z = np.empty((_PROBE_ROWS, forest.n_features))
    for col in range(forest.n_features):
        cuts = forest.threshold[inner & (forest.column == col)]
        low, high = (float(cuts.min()), float(cuts.max())) if cuts.size else (-1.0, 1.0)
        margin = max(high - low, 1.0)
        Z[:, col] = rng.uniform(low - margin, high + margin, _PROBE_ROWS)
    if forest.scale is not None:
        Z *= forest.scale
    if forest.mean is not None:
        Z += forest.mean
    return Z


@dataclass(frozen=True, eq=False)
class CompiledForest:
    """Read-only arrays, so one instance may score from many threads at once.

    Node arrays are flat over ``n_trees * max_nodes`` slots; tree t owns slots
    ``t * max_nodes ...`` in breadth-first order, root first.  Siblings are adjacent,
    so a node's right child is ``left + 1``.  A leaf (and an unused padding slot) is
    its own left child with threshold +inf: every row stays put once it arrives, so
    walking ``n_levels`` steps lands each row on its leaf in every tree.
    """

    n_features: int
    mean: np.ndarray | None  # scaler's mean_, float64 (None: no centring)
    scale: np.ndarray | None  # scaler's scale_, float64 (None: no scaling)
    column: np.ndarray  # (slots,) intp: input column compared at this node
    threshold: np.ndarray  # (slots,) float64: left iff x <= threshold
    left: np.ndarray  # (slots,) intp: left child slot; right child = left + 1
    nan_right: np.ndarray  # (slots,) bool: a NaN goes right (not missing_go_to_left)
    leaf_value: np.ndarray  # (slots,) float64: (depth + c(n_node_samples)) - 1
    roots: np.ndarray  # (n_trees,) intp
    n_levels: int  # deepest leaf, in edges from the root
    denominator: float  # n_trees * c(max_samples_)
    offset: float  # IsolationForest.offset_: decision_function = score_samples - offset

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    @classmethod
    def from_fitted(cls, scaler: StandardScaler | None, forest: IsolationForest) -> CompiledForest:
        n_features = int(forest.n_features_in_)
        if scaler is not None and int(scaler.n_features_in_) != n_features:
            raise ValueError(f"scaler has {scaler.n_features_in_} features, forest {n_features}")
        trees = [est.tree_ for est in forest.estimators_]
        subsets = [np.asarray(f, dtype=np.intp) for f in forest.estimators_features_]
        # sklearn narrows X to a tree's columns only when max_features drew fewer than all.
        narrowed = subsets[0].shape[0] != n_features
        width = max(int(tree.node_count) for tree in trees)
        slots = len(trees) * width
        column = np.zeros(slots, dtype=np.intp)
        threshold = np.full(slots, np.inf)
        left = np.arange(slots, dtype=np.intp)
        nan_right = np.zeros(slots, dtype=bool)
        leaf_value = np.zeros(slots)
        n_levels = 0
        for t, (tree, subset) in enumerate(zip(trees, subsets, strict=True)):
            kids_l = np.asarray(tree.children_left, dtype=np.intp)
            kids_r = np.asarray(tree.children_right, dtype=np.intp)
            order, depth = _breadth_first(kids_l, kids_r)
            if order.shape[0] != tree.node_count:
                raise ValueError(f"tree {t} is not a single connected binary tree")
            slot = np.empty(order.shape[0], dtype=np.intp)  # sklearn node id -> our slot
            slot[order] = t * width + np.arange(order.shape[0])
            inner = order[kids_l[order] != _LEAF]
            feature = np.asarray(tree.feature, dtype=np.intp)[inner]
            column[slot[inner]] = subset[feature] if narrowed else feature
            threshold[slot[inner]] = tree.threshold[inner]
            left[slot[inner]] = slot[kids_l[inner]]
            if not np.array_equal(slot[kids_r[inner]], slot[kids_l[inner]] + 1):
                raise ValueError(f"tree {t}: siblings are not adjacent after reordering")
            go_left = tree.__getstate__()["nodes"]["missing_go_to_left"].astype(bool)
            nan_right[slot[inner]] = ~go_left[inner]
            # Same order of operations as sklearn: (depth + c(n)) - 1.0.
            leaf_value[slot] = depth + average_path_length(tree.n_node_samples) - 1.0
            n_levels = max(n_levels, int(depth.max()) - 1)
        mean = scale = None
        if scaler is not None:
            mean = np.array(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
            scale = np.array(scaler.scale_, dtype=np.float64) if scaler.with_std else None
        arrays = {
            "column": column,
            "threshold": threshold,
            "left": left,
            "nan_right": nan_right,
            "leaf_value": leaf_value,
            "roots": np.arange(len(trees), dtype=np.intp) * width,
            "mean": mean,
            "scale": scale,
        }
        for arr in arrays.values():
            if arr is not None:
                arr.flags.writeable = False
        c_max = float(average_path_length(np.array([forest.max_samples_]))[0])
        return cls(
            n_features=n_features,
            n_levels=n_levels,
            denominator=len(trees) * c_max,
            offset=float(forest.offset_),
            **arrays,
        )

    # -- saved form ----------------------------------------------------------------------

    _ARRAYS = ("column", "threshold", "left", "nan_right", "leaf_value", "roots")

    def save(self, path: str | Path) -> None:
        """Write the arrays as ``.npz`` (no pickle: safe to load, no sklearn needed)."""
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        for name in ("mean", "scale"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        scalars = np.array([self.n_features, self.n_levels, self.denominator, self.offset])
        with open(path, "wb") as fh:
            np.savez(fh, scalars=scalars, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> CompiledForest:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        n_features, n_levels, denominator, offset = arrays.pop("scalars").tolist()
        for arr in arrays.values():
            arr.flags.writeable = False
        return cls(
            n_features=int(n_features),
            n_levels=int(n_levels),
            denominator=float(denominator),
            offset=float(offset),
            mean=arrays.pop("mean", None),
            scale=arrays.pop("scale", None),
            **{name: arrays[name] for name in cls._ARRAYS},
        )

    # -- scoring -----------------------------------------------------------------------

    def score_samples(self, X: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
        """As ``pipeline.score_samples(X)``: lower = more abnormal, shape (n,).

        Unlike sklearn, zero rows give an empty result instead of an error.
        """
        Z = self._forest_input(X)
        n = Z.shape[0]
        depths = np.empty(n)
        if n <= SMALL_BATCH_ROWS:
            for i in range(n):
                depths[i] = self._path_length_sum_one(Z[i])
        else:
            step = max(int(chunk_rows), 1)
            for start in range(0, n, step):
                depths[start : start + step] = self._path_length_sums(Z[start : start + step])
        return self._scores_from_depths(depths)

    def _scores_from_depths(self, depths: np.ndarray) -> np.ndarray:
        # One-sample trees have c(1) = 0: sklearn then defines the ratio as 1.
        ratio = depths / self.denominator if self.denominator != 0 else np.ones_like(depths)
        return -(2.0 ** (-ratio))

    def raw_score_one(self, row: Sequence[float]) -> float:
        """``raw_scores`` of one row given as k numbers, equal to the batch result.

        For one row the cost is numpy's per-call overhead, so this skips the 2-D
        checks, the dtype choice and the chunking: the same scaling, float32 cast,
        walk and final power, on 1-D arrays (24 µs less per row here; the tests
        check equality with ``raw_scores`` on a one-row matrix).
        """
        x = np.array(row, dtype=np.float64)
        if x.shape != (self.n_features,):
            raise ValueError(f"expected {self.n_features} values, got shape {x.shape}")
        if self.mean is not None or self.scale is not None:
            if np.isinf(x).any():  # as _forest_input: StandardScaler refuses infinity
                raise ValueError("input contains infinity")
            if self.mean is not None:
                x -= self.mean
            if self.scale is not None:
                x /= self.scale
        with np.errstate(over="ignore"):  # beyond float32 range becomes ±inf, as in sklearn
            z = x.astype(np.float32).astype(np.float64)
        depths = np.array([self._path_length_sum_one(z)])
        return -float(self._scores_from_depths(depths)[0])

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """As sklearn's: ``score_samples - offset_`` (negative = outlier)."""
        return self.score_samples(X) - self.offset

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        """The ``model.detectors.raw_scores`` convention: higher = more anomalous."""
        return -self.score_samples(X)

    def _forest_input(self, X: np.ndarray) -> np.ndarray:
        """Scaled rows as the trees see them: float32 values, held in float64."""
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise ValueError(f"expected a numeric array, got dtype {X.dtype}")
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"expected a 2-D array with {self.n_features} columns, got shape {X.shape}"
            )
        # StandardScaler keeps float32 and turns anything else into float64.
        work = np.float32 if X.dtype == np.float32 else np.float64
        X = X.astype(work)  # a copy: never scale the caller's array in place
        if self.mean is not None or self.scale is not None:
            if np.isinf(X).any():  # StandardScaler allows NaN but not infinity
                raise ValueError("input contains infinity")
            if self.mean is not None:
                X -= self.mean.astype(work)
            if self.scale is not None:
                X /= self.scale.astype(work)
        with np.errstate(over="ignore"):  # beyond float32 range becomes ±inf, as in sklearn
            return X.astype(np.float32).astype(np.float64)

    def _path_length_sum_one(self, z: np.ndarray) -> float:
        """``_path_length_sums`` for one row: the same walk on 1-D arrays (one slot per
        tree), with array methods instead of ``np.take``.  For a single row the numpy
        call overhead is the cost, and this makes fewer, cheaper calls: 46 µs instead
        of 150 µs for the default model.  Same comparisons and sums: identical results."""
        node = self.roots
        has_nan = bool(np.isnan(z).any())
        for _ in range(self.n_levels):
            x = z.take(self.column.take(node))
            right = x > self.threshold.take(node)  # not (x <= cut), except NaN -> False
            if has_nan:
                right |= np.isnan(x) & self.nan_right.take(node)
            node = self.left.take(node) + right
        values = self.leaf_value.take(node)
        # accumulate adds tree after tree, the order sklearn sums in (reduce may pair up).
        return float(np.add.accumulate(values)[-1])

    def _path_length_sums(self, Z: np.ndarray) -> np.ndarray:
        """Sum over trees of each row's leaf contribution, shape (rows,)."""
        n, k = Z.shape
        flat = np.ascontiguousarray(Z).reshape(-1)
        row_offset = np.arange(n, dtype=np.intp) * k
        node = np.repeat(self.roots[:, None], n, axis=1)  # (n_trees, rows)
        spare = np.empty_like(node)
        index = np.empty_like(node)
        x = np.empty(node.shape)
        cut = np.empty(node.shape)
        right = np.empty(node.shape, dtype=bool)
        has_nan = bool(np.isnan(flat).any())
        # Slots are valid by construction; mode="clip" skips numpy's bounds checks.
        for _ in range(self.n_levels):
            self.column.take(node, out=index, mode="clip")
            index += row_offset
            flat.take(index, out=x, mode="clip")
            self.threshold.take(node, out=cut, mode="clip")
            np.greater(x, cut, out=right)  # not (x <= cut), except NaN -> False
            if has_nan:
                right |= np.isnan(x) & self.nan_right.take(node, mode="clip")
            self.left.take(node, out=spare, mode="clip")
            spare += right
            node, spare = spare, node
        values = self.leaf_value.take(node, mode="clip")
        # accumulate adds tree after tree, the order sklearn sums in (reduce may pair up).
        np.add.accumulate(values, axis=0, out=values)
        return values[-1]
