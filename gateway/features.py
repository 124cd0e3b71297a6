"""Model inputs per reading, from each device's recent history when the model needs it.

The model decides how readings become its input rows (:meth:`Scorer.new_inputs`:
plain values, rolling stream features, or the time-aware detector's per-device
statistics); this class keeps that state across batches for the active model and
counts readings that get no score: a device's first readings (``warming_up``) and
readings older than the device's last one (``out_of_order``), and readings scored
while the model still learns their device (``partial``, time-aware detector).  When the model
changes, the state is rebuilt for the new model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract import Reading
from gateway.metrics import GatewayMetrics
from model.inputs import Inputs
from model.scorer import Scorer


class FeatureBuilder:
    def __init__(self, metrics: GatewayMetrics | None = None):
        self._metrics = metrics
        self._inputs: Inputs | None = None
        self._version: str | None = None

    def build(self, readings: Sequence[Reading], scorer: Scorer) -> tuple[np.ndarray, np.ndarray]:
        """(X, positions of the readings X's rows belong to)."""
        if scorer.version != self._version or self._inputs is None:
            self._inputs = scorer.new_inputs()
            self._version = scorer.version
        fields = scorer.raw_fields
        values = np.array([[r.values[f] for f in fields] for r in readings], dtype=np.float64)
        values = values.reshape(len(readings), len(fields))
        keys = [(r.line, r.device) for r in readings]
        ts_ns = np.fromiter((r.ts_ns for r in readings), dtype=np.int64, count=len(readings))
        batch = self._inputs.build(keys, ts_ns, values)
        if self._metrics is not None:
            if batch.warming:
                self._metrics.unscored.labels("warming_up").inc(batch.warming)
            if batch.late:
                self._metrics.unscored.labels("out_of_order").inc(batch.late)
            if batch.partial:
                self._metrics.partial.inc(batch.partial)
        return batch.X, batch.index
