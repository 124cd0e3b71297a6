"""Running or idle, per device, from one column: where false alerts fall.

Per device, ``lo``/``hi`` = the ``low_q``/``high_q`` quantiles of one column (e.g.
``sound_db``), ``mid`` = their midpoint, hysteresis band = a quarter of the gap
``hi - lo``: the state turns "running" when a value exceeds ``mid + gap/8`` and
"idle" when one falls below ``mid - gap/8``.  A change is stamped with the ts of
the reading that crossed.  The initial state is the first value's side of ``mid``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backtest.rows import as_keys, as_ns, by_device, check_lengths, segments


@dataclass(frozen=True, slots=True)
class StateTrack:
    """A device's running/idle history: the state flips at each change."""

    initial_running: bool
    changes_ns: tuple[int, ...]
    on_above: float  # value above which the machine turns "running"
    off_below: float  # value below which it turns "idle"

    def running_at(self, ts_ns: int) -> bool:
        """State at ``ts_ns`` (a change at exactly ``ts_ns`` has happened)."""
        flips = bisect_right(self.changes_ns, ts_ns)
        return self.initial_running != (flips % 2 == 1)


def machine_states(
    keys: Sequence[str] | np.ndarray,
    ts_ns: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    low_q: float = 0.1,
    high_q: float = 0.9,
    min_gap: float = 0.0,
) -> dict[str, StateTrack]:
    """Running/idle per device from one column (module doc); NaN values are skipped.

    Devices whose quantile gap is ``<= min_gap`` (no on/off pattern, e.g. a machine
    that never stops; its noise alone would flap) are left out: state unknown.
    """
    if not 0.0 <= low_q < high_q <= 1.0:
        raise ValueError("need 0 <= low_q < high_q <= 1")
    k = as_keys(keys)
    ts = as_ns(ts_ns)
    v_all = np.asarray(values, dtype=np.float64).ravel()
    check_lengths(keys=k, ts_ns=ts, values=v_all)
    finite = np.isfinite(v_all)
    k, ts, v_all = k[finite], ts[finite], v_all[finite]
    names, dev, order = by_device(k, ts)
    t_sorted, v_sorted = ts[order], v_all[order]
    out: dict[str, StateTrack] = {}
    for a, b in segments(dev):
        t, v = t_sorted[a:b], v_sorted[a:b]
        lo, hi = np.quantile(v, [low_q, high_q])
        gap = float(hi - lo)
        if gap <= min_gap or gap <= 0:
            continue
        mid = float(lo + hi) / 2
        on_above, off_below = mid + gap / 8, mid - gap / 8
        mark = np.full(v.size, -1, dtype=np.int8)
        mark[v > on_above] = 1
        mark[v < off_below] = 0
        if mark[0] < 0:
            mark[0] = int(v[0] >= mid)
        # Inside the band the state holds: carry the last decided mark forward.
        last = np.maximum.accumulate(np.where(mark >= 0, np.arange(v.size), 0))
        state = mark[last]
        flips = np.flatnonzero(state[1:] != state[:-1]) + 1
        out[str(names[dev[a]])] = StateTrack(
            bool(state[0]), tuple(int(x) for x in t[flips]), on_above, off_below
        )
    return out
