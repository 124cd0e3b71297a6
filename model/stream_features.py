"""Per-device rolling features: one definition shared by training and the gateway.

A model may use, besides the raw reading fields, features computed over the last
``N`` readings *of the same device* (``N >= 2``), named ``<field>__<stat>_<N>``:

=====================  ==========================================================
``<field>__mean_<N>``  arithmetic mean of the last N values (this reading included)
``<field>__std_<N>``   population standard deviation (ddof = 0) of the last N values
``<field>__roc_<N>``   rate of change per second: ``(v_last - v_first) /
                       (t_last - t_first)`` over the last N readings, with t in
                       seconds computed as ``(ts_ns_last - ts_ns_first) / 1e9``
=====================  ==========================================================

e.g. ``temperature_c__std_10``, ``sound_db__mean_10``, ``temperature_c__roc_30``.
Windows count readings, not seconds: a dropout does not shorten a window, and the
rate of change divides by the real time the window spans.  A device's first
``max(N) - 1`` readings (its *warm-up*) have no complete window, so no feature vector:
training drops those rows and the gateway cannot score them yet.

Two implementations that agree (tests demand 1e-9):

* :func:`compute_offline` - vectorised over a whole table (training, evaluation);
* :class:`RollingWindow` - incremental, one per device (the gateway): bounded ring
  buffers, O(1) per reading (amortised).  Mean and std use running sums of values
  shifted by a recent window mean, rebuilt exactly every N readings, and as soon as a
  value much larger than the window's spread has passed through, so rounding cannot
  accumulate (a stuck sensor right after a spike has std exactly 0).

Readings must reach a window in strictly increasing time: an older or equal ``ts_ns``
raises :class:`OutOfOrderReading` and leaves the window unchanged (offline, duplicate
timestamps of one device are an error the caller resolves first).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

STATS = ("mean", "std", "roc")
SEPARATOR = "__"
_NAME = re.compile(r"^(?P<field>.+?)__(?P<stat>mean|std|roc)_(?P<window>[0-9]+)$")
MIN_WINDOW = 2
# Guards the gateway's memory against a typo such as window 100000.
MAX_WINDOW = 3600
_UNIT_SUFFIX = {"mean": "", "std": "", "roc": "/s"}


class StreamFeatureError(ValueError):
    """A stream feature name or its input data is unusable; the message says why."""


class OutOfOrderReading(ValueError):
    """A reading is not newer than the last one in the window; the window is unchanged."""


@dataclass(frozen=True)
class StreamFeature:
    name: str
    field: str
    stat: str
    window: int


def parse_feature(name: str) -> StreamFeature | None:
    """The stream feature ``name`` describes, or None for a plain reading field."""
    match = _NAME.match(name)
    if match is None:
        return None
    window = int(match["window"])
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise StreamFeatureError(
            f"{name}: window must be between {MIN_WINDOW} and {MAX_WINDOW} readings"
        )
    return StreamFeature(name, match["field"], match["stat"], window)


def feature_name(field: str, stat: str, window: int) -> str:
    if stat not in STATS:
        raise StreamFeatureError(f"unknown stat {stat!r}; choose from {STATS}")
    return f"{field}{SEPARATOR}{stat}_{window}"


def feature_unit(name: str, field_unit: str) -> str:
    """Unit of a feature given its field's unit (``°C`` -> ``°C/s`` for a rate)."""
    parsed = parse_feature(name)
    if parsed is None:
        return field_unit
    return f"{field_unit}{_UNIT_SUFFIX[parsed.stat]}" if field_unit else ""


@dataclass(frozen=True)
class StreamSpec:
    """What a model's feature list asks of the readings and the per-device windows."""

    features: tuple[str, ...]  # the model's features, in column order
    raw_fields: tuple[str, ...]  # reading fields needed (plain features + windowed fields)
    derived: tuple[StreamFeature, ...]  # in column order

    @classmethod
    def from_features(cls, names: Sequence[str]) -> StreamSpec:
        names = tuple(names)
        if len(set(names)) != len(names):
            raise StreamFeatureError(f"duplicate features: {list(names)}")
        derived = tuple(f for f in (parse_feature(n) for n in names) if f is not None)
        raw: dict[str, None] = {}
        for name in names:
            parsed = parse_feature(name)
            raw[name if parsed is None else parsed.field] = None
        return cls(features=names, raw_fields=tuple(raw), derived=derived)

    @property
    def has_derived(self) -> bool:
        return bool(self.derived)

    @property
    def windows(self) -> dict[str, int]:
        """Readings to keep per field: the largest window any feature uses."""
        out: dict[str, int] = {}
        for f in self.derived:
            out[f.field] = max(out.get(f.field, 0), f.window)
        return out

    @property
    def longest(self) -> int:
        return max((f.window for f in self.derived), default=1)

    @property
    def warmup(self) -> int:
        """Readings of a device that produce no feature vector."""
        return self.longest - 1

    def to_metadata(self) -> dict[str, Any]:
        """The ``stream_features`` entry of a model's metadata (read by the gateway)."""
        return {
            "window": self.windows,
            "warmup_readings": self.warmup,
            "raw_fields": list(self.raw_fields),
            "features": {
                f.name: {"field": f.field, "stat": f.stat, "window": f.window} for f in self.derived
            },
            "definition": (
                "per device, over the last N readings including this one: mean; "
                "population std (ddof 0); roc = (v_last - v_first) / "
                "((ts_ns_last - ts_ns_first) / 1e9) per second"
            ),
        }


# --- offline ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DeviceRows:
    """A table of readings: device key, timestamp (int ns) and field values per row."""

    keys: np.ndarray  # (n,) device key per row, e.g. "line1/press-01"
    ts_ns: np.ndarray  # (n,) int64
    values: Mapping[str, np.ndarray]  # field -> (n,) float64

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])


def device_order(keys: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
    """Row order grouped by device, time-ordered within each device (stable)."""
    return np.lexsort((np.asarray(ts_ns, dtype=np.int64), np.asarray(keys)))


def duplicate_mask(keys: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
    """True for rows repeating an earlier row's (device, timestamp); the first is kept."""
    order = device_order(keys, ts_ns)
    k, t = np.asarray(keys)[order], np.asarray(ts_ns, dtype=np.int64)[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = (k[1:] == k[:-1]) & (t[1:] == t[:-1])
    out = np.zeros(len(order), dtype=bool)
    out[order] = repeat
    return out


def compute_offline(
    rows: DeviceRows, feature_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """All features for every row: ``(X, ready)``, X (n, k) in ``feature_names`` order.

    Rows may come in any order; windows run over each device's rows in time order.
    ``ready`` is False for a device's warm-up rows, whose X rows are NaN.  Two rows of
    one device with the same timestamp raise :class:`StreamFeatureError`.
    """
    spec = StreamSpec.from_features(feature_names)
    n = len(rows)
    missing = [f for f in spec.raw_fields if f not in rows.values]
    if missing:
        raise StreamFeatureError(f"no values for field(s) {missing}")
    order = device_order(rows.keys, rows.ts_ns)
    keys = np.asarray(rows.keys)[order]
    ts = np.asarray(rows.ts_ns, dtype=np.int64)[order]
    cols = {f: np.asarray(rows.values[f], dtype=np.float64)[order] for f in spec.raw_fields}
    X = np.full((n, len(spec.features)), np.nan)
    ready = np.zeros(n, dtype=bool)
    if n == 0:
        return X, ready
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], n]
    for start, end in zip(starts, ends, strict=True):
        t = ts[start:end]
        if np.any(np.diff(t) <= 0):
            at = int(np.flatnonzero(np.diff(t) <= 0)[0]) + 1
            raise StreamFeatureError(
                f"device {keys[start]}: two readings at ts_ns {int(t[at])}; remove duplicates"
            )
        size = end - start
        first_ready = spec.longest - 1
        if size <= first_ready:
            continue
        ready[start + first_ready : end] = True
        for j, name in enumerate(spec.features):
            parsed = parse_feature(name)
            v = cols[name if parsed is None else parsed.field][start:end]
            out = X[start:end, j]
            if parsed is None:
                out[first_ready:] = v[first_ready:]
                continue
            w = parsed.window
            lo = first_ready - (w - 1)  # first window end we need, relative to w - 1
            if parsed.stat == "roc":
                dt = (t[w - 1 :] - t[: size - w + 1]) / 1e9
                vals = (v[w - 1 :] - v[: size - w + 1]) / dt
            else:
                view = sliding_window_view(v, w)
                vals = view.mean(axis=1) if parsed.stat == "mean" else view.std(axis=1)
            out[first_ready:] = vals[lo:]
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return X[inverse], ready[inverse]


# --- incremental -----------------------------------------------------------------------


# Rebuild the running sums once the magnitude of what went through them since the last
# rebuild exceeds this multiple of the window's spread: rounding error in the variance
# is then bounded by about this factor times machine epsilon (~1e-13, relative).
_REBUILD_RATIO = 1e3


class _Moments:
    """Running mean / population std of the last ``window`` values of one ring.

    Sums of values shifted by ``shift`` (a recent window mean) are updated in O(1).  A
    large value leaving the window would leave rounding residue behind (a spike of +60
    followed by a stuck sensor must give std 0, not 1e-7), so the sums are rebuilt
    exactly from the ring when ``mag`` (sum of the squared terms added and removed
    since the last rebuild) exceeds ``_REBUILD_RATIO`` times the current spread, and
    every ``window`` readings anyway: amortised O(1) on ordinary data.
    """

    __slots__ = ("count", "mag", "s1", "s2", "shift", "since_rebuild", "window")

    def __init__(self, window: int):
        self.window = window
        self.count = 0
        self.shift = 0.0
        self.s1 = 0.0
        self.s2 = 0.0
        self.mag = 0.0
        self.since_rebuild = 0

    def push(self, new: float, old: float | None, ring: _Ring) -> None:
        if self.count == 0:
            self.shift = new  # values near the shift keep the sums small and exact
        d = new - self.shift
        self.s1 += d
        self.s2 += d * d
        self.mag += d * d
        if old is None:
            self.count += 1
        else:
            e = old - self.shift
            self.s1 -= e
            self.s2 -= e * e
            self.mag += e * e
        self.since_rebuild += 1
        spread = self.s2 - self.s1 * self.s1 / self.count  # count x variance
        if self.since_rebuild >= self.window or self.mag > _REBUILD_RATIO * max(spread, 0.0):
            self._rebuild(ring)

    def _rebuild(self, ring: _Ring) -> None:
        """Exact sums over the current window (math.fsum): no rounding carried over."""
        values = ring.last(self.count)
        self.shift = math.fsum(values) / len(values)
        deltas = [v - self.shift for v in values]
        self.s1 = math.fsum(deltas)
        self.s2 = math.fsum(d * d for d in deltas)
        self.mag = self.s2
        self.since_rebuild = 0

    def mean(self) -> float:
        return self.shift + self.s1 / self.count

    def std(self) -> float:
        m = self.s1 / self.count
        return math.sqrt(max(self.s2 / self.count - m * m, 0.0))


class _Ring:
    """Fixed-size ring buffer: O(1) append and O(1) access to the i-th newest value."""

    __slots__ = ("_buf", "_next", "count", "size")

    def __init__(self, size: int):
        self.size = size
        self._buf: list[Any] = [0] * size
        self._next = 0
        self.count = 0

    def append(self, value: Any) -> Any | None:
        """Store ``value``; returns the value it overwrote (None while not yet full)."""
        old = self._buf[self._next] if self.count == self.size else None
        self._buf[self._next] = value
        self._next = (self._next + 1) % self.size
        self.count = min(self.count + 1, self.size)
        return old

    def back(self, i: int) -> Any:
        """The i-th newest value (0 = newest); i < count."""
        return self._buf[(self._next - 1 - i) % self.size]

    def last(self, n: int) -> list[Any]:
        """The ``n`` newest values, oldest first."""
        return [self.back(i) for i in range(n - 1, -1, -1)]


class RollingWindow:
    """Incremental stream features for ONE device; memory bounded by the windows.

        window = RollingWindow(model_features)      # one per (line, device)
        x = window.update(reading.ts_ns, reading.values)
        if x is not None: ...                        # (k,) row for scorer.score

    ``values`` must hold every field in ``spec.raw_fields``.  Not thread-safe: a
    device's readings are fed by one thread, in time order.
    """

    def __init__(self, features: Sequence[str] | StreamSpec):
        spec = features if isinstance(features, StreamSpec) else None
        self.spec = spec or StreamSpec.from_features(features)  # type: ignore[arg-type]
        self._ts = _Ring(self.spec.longest)
        self._rings = {field: _Ring(n) for field, n in self.spec.windows.items()}
        # One running-moments object per (field, window) that a mean or std needs.
        moments: dict[tuple[str, int], _Moments] = {}
        for f in self.spec.derived:
            if f.stat in {"mean", "std"}:
                moments.setdefault((f.field, f.window), _Moments(f.window))
        self._moments_by_field = {
            field: [m for (mf, _), m in moments.items() if mf == field] for field in self._rings
        }
        # Column plan, resolved once: ("raw", field) | ("roc", field, w) | (stat, moments).
        self._plan: list[tuple[Any, ...]] = []
        for name in self.spec.features:
            parsed = parse_feature(name)
            if parsed is None:
                self._plan.append(("raw", name))
            elif parsed.stat == "roc":
                self._plan.append(("roc", parsed.field, parsed.window))
            else:
                self._plan.append((parsed.stat, moments[parsed.field, parsed.window]))
        self.last_ts_ns: int | None = None
        self.count = 0  # readings accepted so far (not capped)

    @property
    def ready(self) -> bool:
        return self.count >= self.spec.longest

    @property
    def stored_values(self) -> int:
        """Values held (ring slots, timestamps included): fixed by the windows."""
        return self._ts.size + sum(ring.size for ring in self._rings.values())

    def update(self, ts_ns: int, values: Mapping[str, float]) -> np.ndarray | None:
        """Add one reading; its feature row once the window is full, else None.

        Raises :class:`OutOfOrderReading` (window unchanged) if ``ts_ns`` is not later
        than the previous reading's, and KeyError if a needed field is missing.
        """
        ts_ns = int(ts_ns)
        if self.last_ts_ns is not None and ts_ns <= self.last_ts_ns:
            raise OutOfOrderReading(
                f"reading at ts_ns {ts_ns} is not after the previous one ({self.last_ts_ns})"
            )
        # Read everything first: a missing field must not leave a half-updated window.
        new = {field: float(values[field]) for field in self.spec.raw_fields}
        self.last_ts_ns = ts_ns
        self.count += 1
        self._ts.append(ts_ns)
        for field, ring in self._rings.items():
            x = new[field]
            # The value leaving window w is the w-th newest before this append.
            olds = [
                ring.back(m.window - 1) if ring.count >= m.window else None
                for m in self._moments_by_field[field]
            ]
            ring.append(x)
            for m, old in zip(self._moments_by_field[field], olds, strict=True):
                m.push(x, old, ring)
        if not self.ready:
            return None
        row = np.empty(len(self._plan))
        for j, step in enumerate(self._plan):
            kind = step[0]
            if kind == "raw":
                row[j] = new[step[1]]
            elif kind == "roc":
                ring, w = self._rings[step[1]], step[2]
                dt = (self._ts.back(0) - self._ts.back(w - 1)) / 1e9
                row[j] = (ring.back(0) - ring.back(w - 1)) / dt
            elif kind == "mean":
                row[j] = step[1].mean()
            else:
                row[j] = step[1].std()
        return row
