"""Per-device state of the time-aware detector, for many devices at once.

Every statistic is computed from one device's own recent history and divided by that
device's own scales, so one trained model serves machines it has never seen: it
learns each machine's normal as the machine runs.  For each field ``f``:

``f__spike``  how far the sample ``H`` readings back lies from the median of the
              ``2H + 1`` readings around it (a Hampel filter), in the device's usual
              residual size.  A monotone change (a machine starting or stopping)
              leaves the median on the sample itself: it scores ~0, a 1-3 sample
              glitch scores high.  Known ``H`` readings late, by design.
``f__noise``  the median of the last ``noise_window`` Hampel residuals over their
              usual size: a burst of noise, immune to a single spike.
``f__resid``  the field's median-filtered value predicted from the *other* fields'
              recent history (exponential filters at several half-lives, a linear
              model fitted per device on its first ``fit_after`` readings and refitted
              with forgetting as it runs), smoothed and divided by the device's residual
              spread.  A sensor drifting away from what the others imply shows here
              long before it leaves its range.  0 until the device's fit exists.

A batch is processed in rounds: round ``r`` takes the ``r``-th reading of every device
in the batch, so each step is one numpy operation across devices (a gateway batch
holds one or a few readings per device; a file holds many).  Memory per device is
fixed by the parameters (about 4 KB for three fields); at most ``max_devices`` are
kept, the least recently seen is forgotten first.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

STATS = ("spike", "noise", "resid")
READY, WARMING, LATE = 1, 0, -1
# E|x_t - 2x_{t-1} + x_{t-2}| of white noise is sqrt(6) * sqrt(2/pi) sigma.
_D2_TO_SIGMA = 1.0 / (math.sqrt(6.0) * math.sqrt(2.0 / math.pi))
SEPARATOR = "__"


@dataclass(frozen=True)
class BankParams:
    fields: tuple[str, ...]
    # Hampel window 2H+1: glitches up to H samples long leave the median alone.
    hampel_half: int = 3
    noise_window: int = 15
    # Half-lives in readings.  Scales adapt over ~10 min at 1 Hz, the regression
    # forgets over hours, so a slow drift is not learned as normal while it happens.
    scale_half_life: float = 600.0
    filter_half_lives: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 80.0)
    resid_half_life: float = 30.0
    memory_half_life: float = 14_400.0
    warmup: int = 60
    fit_after: int = 3_600
    refit_every: int = 600
    ridge: float = 1e-6
    # Smallest residual size per field (sensor resolution): a flat signal must not
    # turn every 0.01 step into a huge ratio.
    floors: tuple[float, ...] = ()
    max_devices: int = 20_000
    # A residual this many spreads out is not learned from (a fault must not teach).
    learn_below: float = 4.0
    # Residuals are clipped at this many spreads before smoothing (see _regress).
    resid_clip: float = 6.0
    # Weight of the signal's own step size in the spike statistic's denominator.
    step_weight: float = 0.5

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("the detector needs at least one field")
        if self.hampel_half < 1 or self.noise_window < 3 or self.warmup < 1:
            raise ValueError("hampel_half >= 1, noise_window >= 3 and warmup >= 1 required")
        if self.fit_after < 10 or self.refit_every < 1 or self.max_devices < 1:
            raise ValueError("fit_after >= 10, refit_every >= 1, max_devices >= 1 required")
        if self.floors and len(self.floors) != len(self.fields):
            raise ValueError("floors needs one value per field")
        if min(self.filter_half_lives, default=1.0) <= 0:
            raise ValueError("filter half-lives must be > 0")

    @property
    def stat_names(self) -> tuple[str, ...]:
        return tuple(f"{f}{SEPARATOR}{s}" for s in STATS for f in self.fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BankParams:
        tuples = {"fields", "filter_half_lives", "floors"}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items()})


def _alpha(half_life: float) -> float:
    return 1.0 - 2.0 ** (-1.0 / half_life)


@dataclass
class _State:
    """Arrays indexed by device slot; grown by doubling."""

    k: int
    p: int
    w: int
    nw: int
    nb: int
    size: int = 0
    count: np.ndarray = field(init=False)
    last_ts: np.ndarray = field(init=False)
    ring: np.ndarray = field(init=False)
    absr: np.ndarray = field(init=False)
    scale: np.ndarray = field(init=False)
    fbank: np.ndarray = field(init=False)
    A: np.ndarray = field(init=False)
    b: np.ndarray = field(init=False)
    c: np.ndarray = field(init=False)
    n: np.ndarray = field(init=False)
    theta: np.ndarray = field(init=False)
    sigma: np.ndarray = field(init=False)
    esm: np.ndarray = field(init=False)
    fitted_at: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.resize(8)

    def _shapes(self, s: int) -> dict[str, tuple[tuple[int, ...], Any]]:
        k, p = self.k, self.p
        return {
            "count": ((s,), np.int64),
            "last_ts": ((s,), np.int64),
            "ring": ((s, k, self.w), np.float64),
            "absr": ((s, k, self.nw), np.float64),
            "scale": ((s, k), np.float64),
            "fbank": ((s, k, self.nb), np.float64),
            "A": ((s, k, p, p), np.float64),
            "b": ((s, k, p), np.float64),
            "c": ((s, k), np.float64),
            "n": ((s, k), np.float64),
            "theta": ((s, k, p), np.float64),
            "sigma": ((s, k), np.float64),
            "esm": ((s, k), np.float64),
            "fitted_at": ((s,), np.int64),
        }

    def resize(self, s: int) -> None:
        for name, (shape, dtype) in self._shapes(s).items():
            new = np.zeros(shape, dtype=dtype)
            if self.size:
                new[: self.size] = getattr(self, name)[: self.size]
            setattr(self, name, new)
        self.size = s

    def reset(self, slots: np.ndarray) -> None:
        for name in self._shapes(0):
            getattr(self, name)[slots] = 0


class DeviceBank:
    """Statistics of many devices' readings, one device's readings in time order.

        bank = DeviceBank(params)
        stats, state = bank.update(keys, ts_ns, values)   # values (n, k) in params.fields

    ``stats`` is (n, 3k) in :attr:`BankParams.stat_names` order.  ``state`` per
    reading: ``READY``; ``WARMING`` (the device's first ``warmup`` readings: its
    statistics are 0, not yet known); ``LATE`` (not later than the device's previous
    reading: ignored, statistics 0).  Not thread-safe: one feeder.
    """

    def __init__(self, params: BankParams):
        self.params = p = params
        self.k = k = len(p.fields)
        self._h = p.hampel_half
        self._w = 2 * p.hampel_half + 1
        nb = len(p.filter_half_lives)
        self._p = 1 + (k - 1) * nb
        self._st = _State(k, self._p, self._w, p.noise_window, nb)
        self._slots: dict[Hashable, int] = {}
        self._seen: dict[Hashable, int] = {}  # key -> last use tick (LRU eviction)
        self._tick = 0
        self._free: list[int] = []
        self._next = 0
        self._a_scale = _alpha(p.scale_half_life)
        self._a_bank = np.array([_alpha(h) for h in p.filter_half_lives])
        self._a_resid = _alpha(p.resid_half_life)
        self._keep = 2.0 ** (-1.0 / p.memory_half_life)
        self._floors = np.array(p.floors if p.floors else [1e-9] * k, dtype=np.float64)
        # Regressors of field i: a constant and the filter banks of every other field.
        self._others = [np.array([j for j in range(k) if j != i], dtype=np.intp) for i in range(k)]
        self.late = 0

    @property
    def devices(self) -> int:
        return len(self._slots)

    def _slot(self, key: Hashable) -> int:
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= self.params.max_devices:
                oldest = min(self._seen, key=self._seen.__getitem__)
                self._free.append(self._slots.pop(oldest))
                del self._seen[oldest]
            if self._free:
                slot = self._free.pop()
            else:
                slot = self._next
                self._next += 1
                if slot >= self._st.size:
                    self._st.resize(min(2 * self._st.size, max(self.params.max_devices, 8)))
            self._st.reset(np.array([slot]))
            self._slots[key] = slot
        self._seen[key] = self._tick
        return slot

    def update(
        self, keys: Sequence[Hashable], ts_ns: Sequence[int] | np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(values, dtype=np.float64)
        n = len(keys)
        if values.shape != (n, self.k):
            raise ValueError(f"values must have shape ({n}, {self.k}), got {values.shape}")
        self._tick += 1
        stats = np.zeros((n, 3 * self.k))
        state = np.full(n, WARMING, dtype=np.int8)
        if n == 0:
            return stats, state
        slots = np.fromiter((self._slot(key) for key in keys), dtype=np.intp, count=n)
        ts = np.asarray(ts_ns, dtype=np.int64)
        # Round r holds each device's r-th reading of this batch (stable order).
        order = np.argsort(slots, kind="stable")
        s_sorted = slots[order]
        starts = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
        first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        rank = np.empty(n, dtype=np.intp)
        rank[order] = np.arange(n) - first
        by_round = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_round], np.arange(rank.max() + 2))
        for r in range(len(bounds) - 1):
            rows = by_round[bounds[r] : bounds[r + 1]]
            self._round(rows, slots[rows], ts[rows], values[rows], stats, state)
        return stats, state

    def _round(
        self,
        rows: np.ndarray,
        slots: np.ndarray,
        ts: np.ndarray,
        v: np.ndarray,
        stats: np.ndarray,
        state: np.ndarray,
    ) -> None:
        st, k, h, w = self._st, self.k, self._h, self._w
        in_order = ts > st.last_ts[slots]
        if not in_order.all():
            self.late += int((~in_order).sum())
            state[rows[~in_order]] = LATE
            rows, slots, ts, v = rows[in_order], slots[in_order], ts[in_order], v[in_order]
            if rows.size == 0:
                return
        st.last_ts[slots] = ts
        count = st.count[slots] + 1
        st.count[slots] = count
        st.ring[slots, :, (count - 1) % w] = v
        have = count >= w
        if not have.any():
            return
        rows, slots, count = rows[have], slots[have], count[have]
        window = st.ring[slots]  # (m, k, w)
        idx = np.arange(slots.size)
        med = np.median(window, axis=2)
        centre = window[idx, :, (count - 1 - h) % w]
        absr = np.abs(centre - med)
        nres = count - w + 1  # residuals seen, this one included
        # The device's noise size from second differences: a smooth rise or fall (a
        # machine starting) adds almost nothing, noise adds sqrt(6) sigma.
        d2 = (
            np.abs(
                window[idx, :, (count - 1) % w]
                - 2.0 * window[idx, :, (count - 2) % w]
                + window[idx, :, (count - 3) % w]
            )
            * _D2_TO_SIGMA
        )
        old = st.scale[slots]
        scale = np.maximum(old, self._floors)
        # Warm start: a plain mean of the first values, then an EWMA of values clipped
        # at 4 scales, so a burst or spike barely moves the device's scale.
        a = np.maximum(self._a_scale, 1.0 / nres)[:, None]
        clipped = np.where((nres > 30)[:, None], np.minimum(d2, 4.0 * scale), d2)
        st.scale[slots] = old + a * (clipped - old)
        st.absr[slots, :, (nres - 1) % self.params.noise_window] = absr
        # A sharp but real turn (cooling, then heating at once) bends the window too;
        # its typical step size joins the denominator, so only a jump far larger than
        # the signal's own movement counts as a spike.
        ordered = window[idx[:, None, None], np.arange(k)[None, :, None], self._chrono(count)]
        step = np.median(np.abs(np.diff(ordered, axis=2)), axis=2)
        spike = absr / np.maximum(scale, self.params.step_weight * step)
        nw = self.params.noise_window
        noise = np.where((nres >= nw)[:, None], np.median(st.absr[slots], axis=2) / scale, 0.0)
        # Filter banks of the median-filtered values (robust to glitches and bursts).
        ab = np.maximum(self._a_bank[None, :], (1.0 / nres)[:, None])[:, None, :]
        fb = st.fbank[slots]
        fb += ab * (med[:, :, None] - fb)
        st.fbank[slots] = fb
        resid = self._regress(slots, nres, fb, med)
        warm = nres >= self.params.warmup
        out = np.concatenate([spike, noise, resid], axis=1)
        stats[rows] = np.where(warm[:, None], out, 0.0)
        state[rows] = np.where(warm, READY, WARMING)

    def _regress(
        self, slots: np.ndarray, nres: np.ndarray, fb: np.ndarray, med: np.ndarray
    ) -> np.ndarray:
        st, k, p = self._st, self.k, self._p
        m = slots.size
        resid = np.zeros((m, k))
        if k == 1:
            phi = np.ones((m, 1, 1))
        else:
            phi = np.empty((m, k, p))
            phi[:, :, 0] = 1.0
            for i in range(k):
                phi[:, i, 1:] = fb[:, self._others[i], :].reshape(m, -1)
        fitted = st.fitted_at[slots] > 0
        if fitted.any():
            theta = st.theta[slots]
            e = med - np.einsum("mkp,mkp->mk", phi, theta)
            sigma = np.where(fitted[:, None], st.sigma[slots], 1.0)
            # Clipped before smoothing: the statistic is for slow departures (a jump
            # is the spike and level checks' job), and a huge excursion must not keep
            # it high for minutes after it ended, hiding the next fault's alert.
            bound = self.params.resid_clip * sigma
            esm = st.esm[slots] + self._a_resid * (np.clip(e, -bound, bound) - st.esm[slots])
            esm = np.where(fitted[:, None], esm, 0.0)
            st.esm[slots] = esm
            resid = np.where(fitted[:, None], np.abs(esm) / sigma, 0.0)
            learn = (~fitted[:, None]) | (np.abs(e) / sigma < self.params.learn_below)
        else:
            learn = np.ones((m, k), dtype=bool)
        keep = np.where(learn, self._keep, 1.0)
        gate = learn.astype(np.float64)
        st.A[slots] = keep[:, :, None, None] * st.A[slots] + gate[:, :, None, None] * (
            phi[:, :, :, None] * phi[:, :, None, :]
        )
        st.b[slots] = keep[:, :, None] * st.b[slots] + gate[:, :, None] * phi * med[:, :, None]
        st.c[slots] = keep * st.c[slots] + gate * med * med
        st.n[slots] = keep * st.n[slots] + gate
        since = nres - st.fitted_at[slots]
        due = np.where(fitted, since >= self.params.refit_every, nres >= self.params.fit_after)
        if due.any():
            self._fit(slots[due], nres[due])
        return resid

    def _fit(self, slots: np.ndarray, nres: np.ndarray) -> None:
        st, p = self._st, self._p
        A, b = st.A[slots], st.b[slots]  # (m, k, p, p), (m, k, p)
        diag = np.einsum("mkii->mki", A)
        reg = self.params.ridge * (diag + 1e-12)
        A_reg = A + reg[:, :, :, None] * np.eye(p)[None, None]
        theta = np.linalg.solve(A_reg, b[..., None])[..., 0]
        # Residual variance from the same sums: (c - 2 theta.b + theta' A theta) / n.
        sse = (
            st.c[slots]
            - 2.0 * np.einsum("mkp,mkp->mk", theta, b)
            + np.einsum("mkp,mkpq,mkq->mk", theta, A, theta)
        )
        var = np.maximum(sse, 0.0) / np.maximum(st.n[slots], 1.0)
        st.theta[slots] = theta
        st.sigma[slots] = np.maximum(np.sqrt(var), self._floors)
        st.fitted_at[slots] = nres

    def _chrono(self, count: np.ndarray) -> np.ndarray:
        """Ring positions of each device's window, oldest first: (m, 1, w)."""
        return ((count[:, None] + np.arange(self._w)[None, :]) % self._w)[:, None, :]

    def memory_bytes(self) -> int:
        st = self._st
        return sum(getattr(st, name).nbytes for name in st._shapes(0))
