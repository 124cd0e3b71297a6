"""Map raw detector scores onto a stable [0, 1] scale and choose alert thresholds.

Raw scores differ between detectors, data sets and even seeds, so dashboards and
alert rules use calibrated scores instead: a logistic curve anchored on the raw
scores of normal training data.  A reading as unusual as the training 99th
percentile scores 0.5; the training median scores sigmoid(-4) ≈ 0.018.

Detectors whose raw score is already a ratio to a control limit (the time-aware
``dynamics`` detector) use ``kind="ratio"``: score = r / (1 + r), so the limit scores
0.5 and the score keeps ranking far past it instead of saturating.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

_LOG = logging.getLogger(__name__)

# Smallest usable scale relative to the score magnitude; below that every deviation
# would saturate to 0 or 1.
_MIN_RELATIVE_SCALE = 1e-6


@dataclass(frozen=True, slots=True)
class Calibration:
    center: float
    scale: float
    kind: str = "logistic"  # or "ratio"

    @classmethod
    def ratio(cls) -> Calibration:
        return cls(center=0.0, scale=1.0, kind="ratio")

    @classmethod
    def fit(cls, raw: np.ndarray) -> Calibration:
        """Fit on raw scores of (normal) training data.

        center = 99th percentile, scale = (q99 - q50) / 4.  If the scores are (nearly)
        constant the spread falls back to their standard deviation, then to a tiny
        fraction of their magnitude, so ``scale`` is always positive.
        """
        raw = np.asarray(raw, dtype=np.float64)
        raw = raw[np.isfinite(raw)]
        if raw.size == 0:
            raise ValueError("cannot calibrate on an empty set of finite scores")
        q50, q99 = np.percentile(raw, [50.0, 99.0])
        floor = _MIN_RELATIVE_SCALE * max(1.0, abs(float(q99)))
        scale = (q99 - q50) / 4.0
        if scale < floor:
            scale = float(np.std(raw)) / 4.0
            _LOG.warning("raw training scores have no spread above the median; using std")
        return cls(center=float(q99), scale=float(max(scale, floor)))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated scores in [0, 1], same shape as ``raw``; monotone in ``raw``."""
        if self.kind == "ratio":
            r = np.maximum(np.asarray(raw, dtype=np.float64), 0.0)
            return r / (1.0 + r)
        z = (np.asarray(raw, dtype=np.float64) - self.center) / self.scale
        # tanh form of the logistic: no overflow warnings for large |z|.
        return np.clip(0.5 + 0.5 * np.tanh(0.5 * z), 0.0, 1.0)

    def apply_one(self, raw: float) -> float:
        """``apply`` for one score: the same operations, with the one ufunc call that
        has no exact Python equivalent (tanh) made on a 1-element array."""
        if self.kind == "ratio":
            r = max(raw, 0.0)
            return r / (1.0 + r)
        z = (raw - self.center) / self.scale
        t = float(np.tanh(np.array([0.5 * z]))[0])
        return min(max(0.5 + 0.5 * t, 0.0), 1.0)

    def to_dict(self) -> dict[str, float | str]:
        if self.kind == "ratio":
            return {"kind": "ratio"}
        return {"center": self.center, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        kind = data.get("kind", "logistic")
        if kind == "ratio":
            return cls.ratio()
        if kind != "logistic":
            raise ValueError(f"unknown calibration kind {kind!r}")
        center, scale = float(data["center"]), float(data["scale"])
        if not (np.isfinite(center) and np.isfinite(scale) and scale > 0):
            raise ValueError(f"invalid calibration {data!r}")
        return cls(center=center, scale=scale)


# Operators mute alerts that are wrong too often: by default no more than 1 normal
# reading in 200 may score above the threshold on validation data.
DEFAULT_MAX_FALSE_ALARM_RATE = 0.005


def choose_threshold(
    scores: np.ndarray,
    y: np.ndarray | None = None,
    contamination: float = 0.01,
    max_false_alarm_rate: float = 1.0,
) -> float:
    """Alert threshold on calibrated scores; a reading is anomalous iff score >= threshold.

    With labels ``y`` (1 = anomaly) for these (validation) scores: the threshold that
    maximises F1 among those whose false-alarm rate (share of normal readings at or
    above it) is at most ``max_false_alarm_rate``.  Every cut between two adjacent
    distinct scores is a candidate and the threshold is placed midway between them,
    so slightly weaker anomalies than the weakest caught one still alert; on equal F1
    the higher threshold (fewer alarms) wins.  If the labels hold only one class, F1
    is meaningless and the rule below is
    used instead.

    Without labels: the (1 - contamination) quantile of the scores, i.e. about
    ``contamination`` of readings like these would alert.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("cannot choose a threshold from no scores")
    if not 0.0 < contamination < 0.5:
        raise ValueError(f"contamination must be in (0, 0.5), got {contamination}")
    if not 0.0 < max_false_alarm_rate <= 1.0:
        raise ValueError(f"max_false_alarm_rate must be in (0, 1], got {max_false_alarm_rate}")
    if y is not None:
        y = np.asarray(y).ravel().astype(bool)
        if y.shape != scores.shape:
            raise ValueError(f"labels shape {y.shape} != scores shape {scores.shape}")
        if y.any() and not y.all():
            return _f1_threshold(scores, y, max_false_alarm_rate)
        _LOG.warning("validation labels hold one class only; using the quantile threshold")
    return float(np.quantile(scores, 1.0 - contamination))


def _f1_threshold(scores: np.ndarray, y: np.ndarray, max_far: float = 1.0) -> float:
    order = np.argsort(-scores, kind="stable")
    s, labels = scores[order], y[order]
    # Cut after the last copy of each distinct score: predicting "anomaly" for
    # s[: i + 1] must not split tied scores.
    last_of_run = np.append(s[1:] != s[:-1], True)
    tp = np.cumsum(labels)[last_of_run]
    flagged = np.flatnonzero(last_of_run) + 1
    fp = flagged - tp
    fn = labels.sum() - tp
    f1 = 2 * tp / (2 * tp + fp + fn)
    # Cuts that would alarm on too many normal readings are not candidates; the
    # first cut (only the top score flagged) always stays one.
    far = fp / max(int((~labels).sum()), 1)
    f1 = np.where((far <= max_far) | (np.arange(f1.size) == 0), f1, -1.0)
    best = int(np.argmax(f1))  # first maximum = highest threshold among ties
    cut_values = s[last_of_run]
    lowest_flagged = cut_values[best]
    if best + 1 < cut_values.size:
        return float((lowest_flagged + cut_values[best + 1]) / 2.0)
    return float(lowest_flagged)
