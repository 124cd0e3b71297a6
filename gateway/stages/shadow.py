"""Shadow stage: score the batch with a second model too, never acted on.

The shadow model keeps its own per-device state (its inputs may differ from the active
model's); the stage counts where it would decide otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from contract import Reading
from gateway.detection import Decisions
from gateway.features import FeatureBuilder
from gateway.metrics import GatewayMetrics
from model.scorer import Scorer


class Shadow:
    def __init__(self, model: Callable[[], Scorer | None], metrics: GatewayMetrics):
        self._model = model
        self._metrics = metrics
        self._features = FeatureBuilder()

    def __call__(self, readings: list[Reading], scorer: Scorer, decided: Decisions) -> None:
        shadow = self._model()
        if shadow is None or not set(shadow.raw_fields) <= set(scorer.raw_fields):
            return
        scores, flags = decided.scores, decided.flags
        x, index = self._features.build(readings, shadow)
        both = [i for i in index.tolist() if not math.isnan(scores[i])]
        if not both:
            return
        shadow_flags = shadow.score(x) >= shadow.threshold
        row = {i: j for j, i in enumerate(index.tolist())}
        disagree = sum(bool(shadow_flags[row[i]]) != flags[i] for i in both)
        self._metrics.shadow_scored.inc(len(both))
        if disagree:
            self._metrics.shadow_disagreements.inc(disagree)
