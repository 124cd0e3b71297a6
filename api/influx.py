"""Recent readings and device history from InfluxDB, for ``/api/recent``, the web page
and ``/predict``'s stored history.

InfluxQL over the v1 ``/query`` endpoint through the shared client
(:mod:`common.influx`): InfluxDB 1.x natively, 2.x/3.x for a bucket mapped to a
database/retention policy (DBRP).  Authentication: a 1.x user (basic auth) or a
2.x/3.x token (``Authorization: Token ...``).
"""

from __future__ import annotations

from typing import Any

from api.config import InfluxQueryConfig
from common.influx import InfluxClient, InfluxQueryError, InfluxSettings, InfluxUnavailable
from common.influxql import quote_ident, quote_string
from contract.schema import DEVICE, IS_ANOMALY, LINE, MODEL_VERSION, SCORE

__all__ = ["InfluxQueryError", "InfluxReader", "InfluxUnavailable"]


class InfluxReader:
    def __init__(self, cfg: InfluxQueryConfig, fields: tuple[str, ...]):
        self._cfg = cfg
        self._fields = fields
        self._client = InfluxClient(InfluxSettings.of(cfg))

    @property
    def configured(self) -> bool:
        return self._client.configured

    @property
    def client(self) -> InfluxClient:
        """The worker's one InfluxDB client, shared with the alert endpoints."""
        return self._client

    def ping(self, timeout_s: float) -> bool:
        return self._client.ping(timeout_s)

    def build_query(self, minutes: int, line: str | None, device: str | None) -> str:
        columns = [*self._fields, SCORE, IS_ANOMALY, MODEL_VERSION]
        where = [f"time > now() - {int(minutes)}m"]
        if line:
            where.append(f"{quote_ident(LINE)} = {quote_string(line)}")
        if device:
            where.append(f"{quote_ident(DEVICE)} = {quote_string(device)}")
        # LIMIT applies per series (per line/device) with GROUP BY: newest points first.
        return (
            f"SELECT {', '.join(quote_ident(c) for c in columns)} FROM {self._source()} "
            f"WHERE {' AND '.join(where)} GROUP BY {quote_ident(LINE)}, {quote_ident(DEVICE)} "
            f"ORDER BY time DESC LIMIT {int(self._cfg.max_points_per_device)}"
        )

    def _source(self) -> str:
        return self._client.source(self._cfg.measurement)

    def build_history_query(
        self, line: str, device: str, fields: tuple[str, ...], before_ns: int, limit: int
    ) -> str:
        return (
            f"SELECT {', '.join(quote_ident(f) for f in fields)} FROM {self._source()} "
            f"WHERE {quote_ident(LINE)} = {quote_string(line)} "
            f"AND {quote_ident(DEVICE)} = {quote_string(device)} "
            f"AND time < {int(before_ns)} ORDER BY time DESC LIMIT {int(limit)}"
        )

    def history(
        self, line: str, device: str, fields: tuple[str, ...], before_ns: int, limit: int
    ) -> tuple[list[int], list[list[float]]]:
        """A device's newest ``limit`` stored readings before ``before_ns``, oldest
        first: (ts in epoch ns, values in ``fields`` order).  Readings without one of
        the fields are skipped.  Raises InfluxUnavailable / InfluxQueryError."""
        if limit <= 0:
            return [], []
        q = self.build_history_query(line, device, fields, before_ns, limit)
        ts: list[int] = []
        values: list[list[float]] = []
        for series in self._client.query(q, epoch="ns"):
            for row in reversed(series.get("values") or []):
                rest = row[1:]
                if len(rest) == len(fields) and all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in rest
                ):
                    ts.append(int(row[0]))
                    values.append([float(v) for v in rest])
        return ts, values

    def recent(self, minutes: int, line: str | None, device: str | None) -> list[dict[str, Any]]:
        """Per device, oldest first: columnar arrays ready for a chart."""
        devices = []
        for series in self._client.query(self.build_query(minutes, line, device), epoch="ms"):
            tags = series.get("tags") or {}
            columns = series["columns"]
            rows = list(reversed(series.get("values") or []))
            data: dict[str, list[Any]] = {
                name: [row[i] for row in rows] for i, name in enumerate(columns)
            }
            flags = [bool(v) for v in data.get(IS_ANOMALY, [])]
            devices.append(
                {
                    "line": tags.get(LINE, ""),
                    "device": tags.get(DEVICE, ""),
                    "points": len(rows),
                    "anomalies": sum(flags),
                    "time": data.get("time", []),
                    "values": {f: data.get(f, [None] * len(rows)) for f in self._fields},
                    "score": data.get(SCORE, []),
                    "is_anomaly": flags,
                    # The newest point's model (per-point versions would repeat it).
                    "model_version": (data.get(MODEL_VERSION) or [None])[-1],
                }
            )
        devices.sort(key=lambda d: (d["line"], d["device"]))
        return devices

    def close(self) -> None:
        self._client.close()
