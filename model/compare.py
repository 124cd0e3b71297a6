"""Compare detectors (and feature sets) on exactly the same rows and split.

Every run trains through :func:`model.training.train` with the same seed on the same
:class:`Dataset`, so the train / validation / test rows are identical and only the
detector or the feature columns differ.  With several feature sets the dataset holds
the union of their columns, so stream-feature warm-up rows are dropped for all runs
alike.  Figures are from the untouched test split, with each run's own threshold
(chosen on validation).  Per fault type there are two figures: the recall at that
threshold, and a threshold-free ROC-AUC of that fault's rows against the normal rows
(how well the scores rank the fault above normal readings at all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from model.dataset import Dataset, labels_from_strings
from model.scorer import Scorer
from model.training import split_indices, train

_LOG = logging.getLogger(__name__)


@dataclass
class CompareRun:
    name: str
    detector: str
    features: tuple[str, ...]
    threshold: float
    test: dict[str, Any]
    validation: dict[str, Any]
    fit_seconds: float
    fault_auc: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__ | {"features": list(self.features)}


def select_features(dataset: Dataset, names: Sequence[str]) -> Dataset:
    """The same rows with only ``names`` as columns (in that order)."""
    index = [dataset.feature_names.index(n) for n in names]
    return replace(
        dataset,
        X=dataset.X[:, index],
        feature_names=tuple(names),
        columns=tuple(dataset.columns[i] for i in index) if dataset.columns else (),
    )


def compare(
    dataset: Dataset,
    detectors: Sequence[str],
    feature_sets: Sequence[Sequence[str]],
    params: dict[str, dict[str, Any]] | None = None,
    **train_options: Any,
) -> list[CompareRun]:
    """Train every (detector, feature set) on ``dataset`` (which must be labelled)."""
    if dataset.y is None:
        raise ValueError("comparing detectors needs labels")
    _, _, test_idx = split_indices(
        len(dataset),
        dataset.y,
        validation_fraction=train_options.get("validation_fraction", 0.2),
        test_fraction=train_options.get("test_fraction", 0.2),
        random_state=train_options.get("random_state", 42),
    )
    runs = []
    for i, features in enumerate(feature_sets):
        data = select_features(dataset, features)
        for detector in detectors:
            name = detector if len(feature_sets) == 1 else f"{detector} [{i + 1}]"
            start = time.perf_counter()
            pipeline, meta = train(
                data, detector=detector, params=(params or {}).get(detector), **train_options
            )
            fit_seconds = time.perf_counter() - start
            scorer = Scorer(pipeline, {**meta, "version": name}, "")
            test_scores = scorer.score(data.X[test_idx])
            runs.append(
                CompareRun(
                    name=name,
                    detector=detector,
                    features=tuple(features),
                    threshold=meta["threshold"],
                    test=meta["metrics"]["test"],
                    validation=meta["metrics"]["validation"],
                    fit_seconds=fit_seconds,
                    fault_auc=_fault_auc(test_scores, dataset, test_idx),
                )
            )
    return runs


def _fault_auc(scores: np.ndarray, dataset: Dataset, idx: np.ndarray) -> dict[str, float] | None:
    """ROC-AUC of each fault type's rows against the normal rows."""
    if dataset.faults is None or idx.size == 0:
        return None
    faults = dataset.faults[idx]
    normal = labels_from_strings(list(faults)) == 0
    out = {}
    for kind in sorted(set(faults[~normal].tolist())):
        rows = faults == kind
        if normal.any() and rows.any():
            y = np.r_[np.zeros(int(normal.sum())), np.ones(int(rows.sum()))]
            out[kind] = float(roc_auc_score(y, np.r_[scores[normal], scores[rows]]))
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(runs: Sequence[CompareRun]) -> list[str]:
    """One table of test-split metrics, then per-fault recall with one column per run."""
    width = max(16, *(len(r.name) for r in runs))
    lines = [
        f"{'run':<{width}}  {'precision':>9}  {'recall':>6}  {'F1':>5}  {'ROC-AUC':>7}  "
        f"{'false-alarm':>11}  {'threshold':>9}  {'train s':>7}"
    ]
    for r in runs:
        t = r.test
        lines.append(
            f"{r.name:<{width}}  {_fmt(t['precision']):>9}  {_fmt(t['recall']):>6}  "
            f"{_fmt(t['f1']):>5}  {_fmt(t['roc_auc']):>7}  "
            f"{_fmt(t['false_alarm_rate'], 4):>11}  {r.threshold:>9.4f}  {r.fit_seconds:>7.1f}"
        )
    kinds = sorted({k for r in runs for k in (r.test.get("per_fault") or {})})
    if kinds:
        fw = max(12, *(len(k) for k in kinds))
        cw = max(8, *(len(r.name) for r in runs))
        lines.append("")
        lines.append("recall per fault type (test split):")
        lines.append(f"{'fault':<{fw}}  {'rows':>6}  " + "  ".join(f"{r.name:>{cw}}" for r in runs))
        for kind in kinds:
            rows = next(r.test["per_fault"][kind]["n"] for r in runs if kind in r.test["per_fault"])
            cells = [
                _fmt((r.test.get("per_fault") or {}).get(kind, {}).get("recall")) for r in runs
            ]
            lines.append(f"{kind:<{fw}}  {rows:>6}  " + "  ".join(f"{c:>{cw}}" for c in cells))
        if all(r.fault_auc is not None for r in runs):
            lines.append("")
            lines.append("ROC-AUC per fault type vs normal rows (test split, threshold-free):")
            lines.append(f"{'fault':<{fw}}  {'':>6}  " + "  ".join(f"{r.name:>{cw}}" for r in runs))
            for kind in kinds:
                cells = [_fmt((r.fault_auc or {}).get(kind)) for r in runs]
                lines.append(f"{kind:<{fw}}  {'':>6}  " + "  ".join(f"{c:>{cw}}" for c in cells))
    support = runs[0].test["support"] if runs else None
    if support:
        lines.append("")
        lines.append(
            f"test split: {support['rows']} rows, {support['anomalies']} anomalies, "
            f"{support['normal']} normal"
        )
    return lines
