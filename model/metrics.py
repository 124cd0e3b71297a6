"""Detection quality on labelled data, in the terms operators care about.

A reading is flagged iff ``score >= threshold``.  Metrics that are undefined for the
given data (precision with nothing flagged, recall with no anomalies, ROC-AUC with
one class) are ``None`` rather than a misleading 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from model.dataset import fault_labels


def _ratio(num: int, den: int) -> float | None:
    return float(num) / den if den else None


def evaluate(
    scores: np.ndarray,
    y: np.ndarray,
    threshold: float,
    faults: np.ndarray | None = None,
) -> dict[str, Any]:
    """Precision, recall, F1, ROC-AUC, false-alarm rate and counts; JSON-serialisable.

    ``false_alarm_rate`` = FP / normal readings.  With ``faults`` (fault type per row,
    "none"/"normal"/"" for no fault) ``per_fault`` gives, for each fault type, its row
    count and the fraction flagged.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(y).ravel().astype(bool)
    if scores.shape != y.shape:
        raise ValueError(f"scores shape {scores.shape} != labels shape {y.shape}")
    flagged = scores >= threshold
    tp = int(np.count_nonzero(flagged & y))
    fp = int(np.count_nonzero(flagged & ~y))
    fn = int(np.count_nonzero(~flagged & y))
    tn = int(np.count_nonzero(~flagged & ~y))
    positives, negatives = tp + fn, fp + tn
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, positives)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    roc_auc = float(roc_auc_score(y, scores)) if positives and negatives else None
    result: dict[str, Any] = {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc,
        "false_alarm_rate": _ratio(fp, negatives),
        "support": {
            "rows": int(y.size),
            "anomalies": positives,
            "normal": negatives,
            "flagged": tp + fp,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": tn,
        },
    }
    if faults is not None:
        result["per_fault"] = per_fault_recall(flagged, faults)
    return result


def per_fault_recall(flagged: np.ndarray, faults: np.ndarray) -> dict[str, dict[str, Any]]:
    faults = np.asarray(faults, dtype=str).ravel()
    if faults.shape != flagged.shape:
        raise ValueError(f"faults shape {faults.shape} != scores shape {flagged.shape}")
    is_fault = fault_labels(faults).astype(bool)
    out: dict[str, dict[str, Any]] = {}
    kinds, inverse = np.unique(faults[is_fault], return_inverse=True)
    hits = flagged[is_fault]
    for i, kind in enumerate(kinds):
        mask = inverse == i
        n = int(mask.sum())
        out[str(kind)] = {"n": n, "recall": float(hits[mask].mean())}
    return out


def alarm_summary(scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """For unlabelled data: how often the threshold would alert."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    flagged = int(np.count_nonzero(scores >= threshold))
    return {
        "threshold": float(threshold),
        "rows": int(scores.size),
        "flagged": flagged,
        "alarm_rate": _ratio(flagged, int(scores.size)),
    }
