"""Model inputs per reading, including per-device rolling stream features.

A model trained with features like ``temperature_c__std_10`` needs each device's
recent history.  One bounded window per device is kept (memory: the model's longest
window per field per device); a device's first readings, until its window is full,
are stored without a score (``warming_up``), as are readings older than the device's
last one (they cannot be placed in a window).  When the model changes, windows are
rebuilt for the new model's features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract import Reading
from gateway.metrics import GatewayMetrics
from model.scorer import Scorer
from model.stream_features import OutOfOrderReading, RollingWindow

# Devices beyond this many are forgotten (windows rebuilt when they come back).
_MAX_DEVICES = 50_000


class FeatureBuilder:
    def __init__(self, metrics: GatewayMetrics):
        self._metrics = metrics
        self._windows: dict[tuple[str, str], RollingWindow] = {}
        self._version: str | None = None

    def build(self, readings: Sequence[Reading], scorer: Scorer) -> tuple[np.ndarray, list[int]]:
        """(X, indices of the readings X's rows belong to)."""
        if not scorer.stream.has_derived:
            features = scorer.features
            x = np.array([[r.values[f] for f in features] for r in readings], dtype=np.float64)
            return x, list(range(len(readings)))
        if scorer.version != self._version:
            self._windows.clear()
            self._version = scorer.version
        rows: list[np.ndarray] = []
        index: list[int] = []
        warming = late = 0
        for i, reading in enumerate(readings):
            key = (reading.line, reading.device)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= _MAX_DEVICES:
                    self._windows.clear()
                window = self._windows[key] = scorer.new_window()
            try:
                row = window.update(reading.ts_ns, reading.values)
            except OutOfOrderReading:
                late += 1
                continue
            if row is None:
                warming += 1
                continue
            rows.append(row)
            index.append(i)
        if warming:
            self._metrics.unscored.labels("warming_up").inc(warming)
        if late:
            self._metrics.unscored.labels("out_of_order").inc(late)
        x = np.vstack(rows) if rows else np.empty((0, len(scorer.features)))
        return x, index
