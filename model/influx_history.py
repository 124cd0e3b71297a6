"""Read scored readings and sensor-fault flags back from InfluxDB (v1 ``/query``, through
the shared client :mod:`common.influx`).

The gateway writes measurement ``reading`` (tags line, device, model_version; fields
temperature_c, humidity_pct, sound_db, ..., score, is_anomaly) and, for sensor faults,
measurement ``sensor_fault`` (tags line, device, kind; field ``active`` 1/0).

Memory stays bounded while reading: the time range is queried in slices of
``window_s``, and each slice is streamed with ``chunked=true`` so that only one chunk
of ``chunk_size`` points is parsed at a time; values go straight into compact numpy
arrays, and more than ``max_rows`` readings is refused with a clear error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.influx import InfluxClient, InfluxError, InfluxSettings
from common.influxql import quote_ident, quote_string, regex_literal
from contract.schema import (
    ACTIVE,
    DEVICE,
    IS_ANOMALY,
    KIND,
    LINE,
    READING,
    SCORE,
    SENSOR_FAULT,
)

_LOG = logging.getLogger(__name__)

NS = 1_000_000_000
# A failed connection is tried again this often (with back-off): retraining is a batch
# job that can wait a little, not a request.
QUERY_RETRIES = 3
GROUP_BY_DEVICE = f"GROUP BY {quote_ident(LINE)}, {quote_ident(DEVICE)}"


class HistoryError(RuntimeError):
    """InfluxDB could not be queried, or the history cannot be used; says why."""


@dataclass(frozen=True)
class HistoryFilter:
    since_ns: int
    until_ns: int
    line: str | None = None
    device_regex: str | None = None

    def where(self, since_ns: int | None = None, until_ns: int | None = None) -> str:
        lo = self.since_ns if since_ns is None else since_ns
        hi = self.until_ns if until_ns is None else until_ns
        parts = [f"time >= {lo}", f"time < {hi}"]
        if self.line is not None:
            parts.append(f"{quote_ident(LINE)} = {quote_string(self.line)}")
        if self.device_regex is not None:
            try:
                regex = regex_literal(self.device_regex, "device regex")
            except ValueError as exc:
                raise HistoryError(str(exc)) from None
            parts.append(f"{quote_ident(DEVICE)} =~ {regex}")
        return " AND ".join(parts)


class InfluxV1:
    """Retraining's reads: the shared InfluxDB client (:mod:`common.influx`), every
    query streamed in chunks of ``chunk_size`` points, failed connections retried."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str = "",
        password: str = "",
        retention_policy: str = "",
        timeout_s: float = 60.0,
        chunk_size: int = 10_000,
    ):
        self.chunk_size = chunk_size
        settings = InfluxSettings(
            url=url,
            database=database,
            retention_policy=retention_policy,
            username=username,
            password=password,
            timeout_s=timeout_s,
        )
        self._client = InfluxClient(settings, query_retries=QUERY_RETRIES)

    def measurement(self, name: str) -> str:
        return self._client.source(name)

    def query(self, q: str) -> Iterator[dict[str, Any]]:
        """Series of the (single) statement, chunk by chunk; a series may span chunks."""
        try:
            yield from self._client.query(q, chunk_size=self.chunk_size)
        except InfluxError as exc:
            raise HistoryError(str(exc)) from None

    def close(self) -> None:
        self._client.close()


@dataclass
class _DeviceParts:
    ts: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    anomalous: list[np.ndarray] = field(default_factory=list)
    rows: int = 0


@dataclass(frozen=True, eq=False)
class History:
    """Readings grouped by device, time-ordered within each device.

    Keys are ``"line/device"``; :meth:`time_order` and :meth:`line_device` give what a
    replay through the gateway's detection needs (all devices in one time order).
    """

    keys: np.ndarray  # (n,) "line/device"
    ts_ns: np.ndarray  # (n,) int64
    X: np.ndarray  # (n, k) float64, columns = fields
    anomalous: np.ndarray  # (n,) bool: is_anomaly was true when it was scored
    fields: tuple[str, ...]
    incomplete: int = 0  # points lacking a needed field (not in the arrays)
    duplicates: int = 0  # repeated (device, ts) points, e.g. re-scored by another version

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    def time_order(self) -> np.ndarray:
        """Row indices of all devices merged in time order (ties: by device)."""
        return np.lexsort((self.keys, self.ts_ns))

    def line_device(self) -> tuple[np.ndarray, np.ndarray]:
        """(line, device) per row, from the keys (MQTT topic levels hold no ``/``)."""
        parts = np.char.partition(self.keys.astype(str), "/")
        return parts[:, 0].astype(object), parts[:, 2].astype(object)


def _truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "t", "yes"}
    return False


def _device_key(series: dict[str, Any]) -> str:
    tags = series.get("tags") or {}
    return f"{tags.get(LINE, '')}/{tags.get(DEVICE, '')}"


def read_history(
    client: InfluxV1,
    fields: Sequence[str],
    flt: HistoryFilter,
    *,
    window_s: float = 6 * 3600.0,
    max_rows: int = 2_000_000,
) -> History:
    """Readings with every field in ``fields`` (plus is_anomaly) between since and until."""
    fields = tuple(fields)
    select = ", ".join(quote_ident(f) for f in (*fields, SCORE, IS_ANOMALY))
    devices: dict[str, _DeviceParts] = {}
    total = incomplete = 0
    step = max(int(window_s * NS), 1)
    lo = flt.since_ns
    while lo < flt.until_ns:
        hi = min(lo + step, flt.until_ns)
        q = (
            f"SELECT {select} FROM {client.measurement(READING)} WHERE {flt.where(lo, hi)} "
            f"{GROUP_BY_DEVICE}"
        )
        for series in client.query(q):
            columns = series["columns"]
            values = series.get("values") or []
            if not values:
                continue
            table = np.array(values, dtype=object)  # None where a point lacks a field
            sub = table[:, [columns.index(f) for f in fields]]
            complete = np.not_equal(sub, None).all(axis=1)
            X = sub[complete].astype(np.float64)
            finite = np.isfinite(X).all(axis=1)
            keep = np.flatnonzero(complete)[finite]
            incomplete += len(values) - keep.size
            part = devices.setdefault(_device_key(series), _DeviceParts())
            part.ts.append(table[keep, 0].astype(np.int64))
            part.values.append(X[finite])
            flags = table[keep, columns.index(IS_ANOMALY)]
            part.anomalous.append(np.fromiter(map(_truthy, flags), dtype=bool, count=keep.size))
            part.rows += keep.size
            total += keep.size
            if total > max_rows:
                raise HistoryError(
                    f"more than {max_rows} readings in the selected range; narrow --since/"
                    "--until, --line or --device-regex, or raise retrain.max_rows"
                )
        _LOG.info("read history up to %s: %d readings", iso_ns(hi), total)
        lo = hi
    return _assemble(devices, fields, incomplete)


def _assemble(
    devices: dict[str, _DeviceParts], fields: tuple[str, ...], incomplete: int
) -> History:
    keys, ts, X, anomalous = [], [], [], []
    duplicates = 0
    for key in sorted(devices):
        part = devices[key]
        if part.rows == 0:
            continue
        t = np.concatenate(part.ts)
        order = np.argsort(t, kind="stable")
        t = t[order]
        first = np.r_[True, t[1:] != t[:-1]]  # same reading stored twice: keep one
        duplicates += int((~first).sum())
        keep = order[first]
        keys.append(np.full(keep.size, key))
        ts.append(t[first])
        X.append(np.concatenate(part.values)[keep])
        anomalous.append(np.concatenate(part.anomalous)[keep])
    if not keys:
        return History(
            keys=np.empty(0, dtype=str),
            ts_ns=np.empty(0, dtype=np.int64),
            X=np.empty((0, len(fields))),
            anomalous=np.empty(0, dtype=bool),
            fields=fields,
            incomplete=incomplete,
        )
    return History(
        keys=np.concatenate(keys),
        ts_ns=np.concatenate(ts),
        X=np.concatenate(X),
        anomalous=np.concatenate(anomalous),
        fields=fields,
        incomplete=incomplete,
        duplicates=duplicates,
    )


def _fault_key(series: dict[str, Any]) -> tuple[str, str]:
    return _device_key(series), str((series.get("tags") or {}).get(KIND, ""))


@dataclass(frozen=True)
class FaultPeriod:
    """One sensor-fault period of one device, as the gateway recorded it."""

    device: str  # "line/device"
    kind: str  # stuck, impossible_jump, dropout, ...
    start_ns: int
    end_ns: int


def read_fault_periods(
    client: InfluxV1, flt: HistoryFilter, margin_s: float, window_s: float = 6 * 3600.0
) -> list[FaultPeriod]:
    """Sensor-fault periods with their kind, sorted by device and start.

    The gateway writes ``active=1`` when a fault starts and ``active=0`` when it
    clears, per (device, kind).  A period runs from an active point to the next
    inactive one of the same kind (a lone active point is a period of length 0); a
    fault already active before the range (its last point before it says so) starts
    at the range start, and one still active at the end runs to the range end.
    """
    margin = int(margin_s * NS)
    lo, end = flt.since_ns - margin, flt.until_ns + margin
    tags = f"{GROUP_BY_DEVICE}, {quote_ident(KIND)}"
    state: dict[tuple[str, str], int | None] = {}  # start of the open period, if any
    q = (
        f"SELECT last({quote_ident(ACTIVE)}) FROM {client.measurement(SENSOR_FAULT)} "
        f"WHERE {flt.where(0, lo)} {tags}"
    )
    for series in client.query(q):
        values = series.get("values") or []
        if values and _truthy(values[-1][1]):
            state[_fault_key(series)] = lo
    periods: list[FaultPeriod] = []
    step = max(int(window_s * NS), 1)
    while lo < end:
        hi = min(lo + step, end)
        q = (
            f"SELECT {quote_ident(ACTIVE)} FROM {client.measurement(SENSOR_FAULT)} "
            f"WHERE {flt.where(lo, hi)} {tags}"
        )
        for series in client.query(q):
            key = _fault_key(series)
            col = series["columns"].index(ACTIVE)
            for row in series.get("values") or []:
                t, active = int(row[0]), _truthy(row[col])
                opened = state.get(key)
                if active:
                    if opened is None:
                        state[key] = t
                    else:  # repeated active point: the period goes on; record up to here
                        periods.append(FaultPeriod(*key, opened, t))
                elif opened is not None:
                    periods.append(FaultPeriod(*key, opened, t))
                    state[key] = None
        lo = hi
    for key, opened in state.items():
        if opened is not None:
            periods.append(FaultPeriod(*key, opened, end))
    return sorted(periods, key=lambda p: (p.device, p.start_ns, p.end_ns, p.kind))


def fault_intervals(periods: Sequence[FaultPeriod]) -> dict[str, np.ndarray]:
    """Per device key: int64 array (m, 2) of [start, end] ns, kinds merged."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for p in periods:
        spans.setdefault(p.device, []).append((p.start_ns, p.end_ns))
    return {
        device: np.array(sorted(s), dtype=np.int64).reshape(-1, 2) for device, s in spans.items()
    }


def read_fault_intervals(
    client: InfluxV1, flt: HistoryFilter, margin_s: float, window_s: float = 6 * 3600.0
) -> dict[str, np.ndarray]:
    """Sensor-fault periods per device key (:func:`read_fault_periods`, kinds merged)."""
    return fault_intervals(read_fault_periods(client, flt, margin_s, window_s))


def near_faults(
    keys: np.ndarray, ts_ns: np.ndarray, periods: dict[str, np.ndarray], margin_s: float
) -> np.ndarray:
    """True for readings within ``margin_s`` of a sensor-fault period of their device."""
    out = np.zeros(len(ts_ns), dtype=bool)
    margin = int(margin_s * NS)
    for key, spans in periods.items():
        rows = np.flatnonzero(keys == key)
        if rows.size == 0 or spans.size == 0:
            continue
        t = ts_ns[rows]
        hit = np.zeros(rows.size, dtype=bool)
        for start, stop in spans:  # few periods per device: a loop is fine
            hit |= (t >= start - margin) & (t <= stop + margin)
        out[rows] = hit
    return out


def iso_ns(ts_ns: int) -> str:
    """Epoch ns -> ``2026-11-22T07:00:00Z`` (seconds resolution, for messages)."""
    return str(np.datetime64(int(ts_ns), "ns"))[:19] + "Z"
