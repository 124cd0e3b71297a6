"""Per-row arrays the backtest's counting shares: timestamps, device keys, grouping."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np


def as_ns(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").view(np.int64)
    return arr.astype(np.int64)


def as_keys(values: Any) -> np.ndarray:
    return np.asarray(values).astype(str)


def check_lengths(**arrays: np.ndarray | None) -> int:
    sizes = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"columns differ in length: {sizes}")
    return next(iter(sizes.values()), 0)


def by_device(
    keys: np.ndarray, ts: np.ndarray, tie: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(device names, device index per sorted row, order): rows grouped by device, by ts."""
    names, inv = np.unique(keys, return_inverse=True)
    inv = inv.ravel()
    order = np.lexsort((ts, inv) if tie is None else (tie, ts, inv))
    return names, inv[order], order


def segments(dev: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each device's block in device-sorted rows."""
    if dev.size == 0:
        return []
    cuts = np.flatnonzero(dev[1:] != dev[:-1]) + 1
    bounds = [0, *cuts.tolist(), int(dev.size)]
    return list(pairwise(bounds))


def ratio(num: float, den: float) -> float:
    """num / den, NaN when there is nothing to divide by."""
    return float(num) / den if den else float("nan")
