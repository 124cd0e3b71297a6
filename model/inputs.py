"""How a model turns readings into its input rows: one owner for the gateway, the API,
the model CLI and the backtest.

    inputs = scorer.new_inputs()          # per-device state, if the model keeps any
    batch = inputs.build(keys, ts_ns, values)   # values (n, len(scorer.raw_fields))
    scores = scorer.score(batch.X)        # batch.index: the readings X's rows belong to

* plain models: every reading is one row, nothing is remembered;
* rolling stream features (``sound_db__std_10``): one :class:`RollingWindow` per
  device;
* the time-aware detector: one :class:`model.dynamics.bank.DeviceBank` for all.

Readings of one device must come in time order; a reading not later than the
device's previous one is ``late`` and gets no row, as is a device's warm-up.
At most ``max_devices`` devices are remembered (least recently seen forgotten).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from model.dynamics.bank import LATE, WARMING, DeviceBank
from model.stream_features import OutOfOrderReading, RollingWindow, StreamSpec

MAX_DEVICES = 50_000
CHUNK_ROWS = 5_000


@dataclass(frozen=True, slots=True)
class InputBatch:
    X: np.ndarray  # (len(index), k) model input rows
    index: np.ndarray  # (len(index),) positions of the readings the rows belong to
    warming: int  # readings without a row: still in their device's warm-up
    late: int  # readings not later than their device's previous one
    # Readings with a row from part of the model only (its history-based checks are
    # still learning the device; the absolute level guard already applies).
    partial: int = 0


class Inputs(Protocol):
    def build(
        self, keys: Sequence[Hashable], ts_ns: np.ndarray, values: np.ndarray
    ) -> InputBatch: ...


class PlainInputs:
    """Each reading is its own row."""

    def build(self, keys: Sequence[Hashable], ts_ns: np.ndarray, values: np.ndarray) -> InputBatch:
        values = np.asarray(values, dtype=np.float64)
        return InputBatch(values, np.arange(values.shape[0]), 0, 0)


class WindowInputs:
    """Rolling stream features: one bounded window per device."""

    def __init__(self, spec: StreamSpec, max_devices: int = MAX_DEVICES):
        self._spec = spec
        self._max = max_devices
        self._windows: OrderedDict[Hashable, RollingWindow] = OrderedDict()

    def build(self, keys: Sequence[Hashable], ts_ns: np.ndarray, values: np.ndarray) -> InputBatch:
        fields = self._spec.raw_fields
        rows: list[np.ndarray] = []
        index: list[int] = []
        warming = late = 0
        for i, key in enumerate(keys):
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self._max:
                    self._windows.popitem(last=False)
                window = self._windows[key] = RollingWindow(self._spec)
            else:
                self._windows.move_to_end(key)
            try:
                row = window.update(int(ts_ns[i]), dict(zip(fields, values[i], strict=True)))
            except OutOfOrderReading:
                late += 1
                continue
            if row is None:
                warming += 1
                continue
            rows.append(row)
            index.append(i)
        X = np.vstack(rows) if rows else np.empty((0, len(self._spec.features)))
        return InputBatch(X, np.asarray(index, dtype=np.intp), warming, late)


class BankInputs:
    """The time-aware detector: statistics of each device's history, then raw values.

    Every reading in time order gets a row from the start: during a device's warm-up
    its history statistics are 0, so only the absolute level guard can raise it (a
    reading far outside any machine's range alerts at once, even from a new device).
    """

    def __init__(self, bank: DeviceBank):
        self.bank = bank

    def build(self, keys: Sequence[Hashable], ts_ns: np.ndarray, values: np.ndarray) -> InputBatch:
        values = np.asarray(values, dtype=np.float64)
        stats, state = self.bank.update(keys, ts_ns, values)
        index = np.flatnonzero(state != LATE)
        X = np.hstack([stats[index], values[index]])
        late = len(keys) - index.size
        return InputBatch(X, index, 0, late, int((state == WARMING).sum()))


def score_in_order(
    scorer: _Scoring, keys: Sequence[Hashable], ts_ns: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """Scores of readings given in time order (NaN: no score), through fresh inputs, in
    chunks of ``CHUNK_ROWS`` (the same floats as any other split, see the bank)."""
    inputs = scorer.new_inputs()
    out = np.full(len(keys), np.nan)
    for start in range(0, len(keys), CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, len(keys))
        batch = inputs.build(keys[start:stop], ts_ns[start:stop], values[start:stop])
        if batch.index.size:
            out[start + batch.index] = scorer.score(batch.X)
    return out


class _Scoring(Protocol):
    def new_inputs(self) -> Inputs: ...
    def score(self, X: np.ndarray) -> np.ndarray: ...


def inputs_for(spec: StreamSpec | None, bank: DeviceBank | None) -> Inputs:
    if bank is not None:
        return BankInputs(bank)
    if spec is not None and spec.has_derived:
        return WindowInputs(spec)
    return PlainInputs()
