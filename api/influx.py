"""Recent readings from InfluxDB for ``/api/recent`` and the web page.

Queries go through the v1 ``/query`` endpoint in InfluxQL, which InfluxDB 1.x serves
natively and InfluxDB 2.x/3.x serve for a bucket mapped to a database/retention
policy (DBRP).  Authentication: a 1.x user (basic auth) or a 2.x/3.x token
(``Authorization: Token ...``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import urllib3

from api.config import InfluxQueryConfig

log = logging.getLogger(__name__)


class InfluxUnavailable(RuntimeError):
    """InfluxDB did not answer (network, timeout) or is not configured."""


class InfluxQueryError(RuntimeError):
    """InfluxDB answered with an error (bad credentials, unknown database, ...)."""


def quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxReader:
    def __init__(self, cfg: InfluxQueryConfig, fields: tuple[str, ...]):
        self._cfg = cfg
        self._fields = fields
        self._headers: dict[str, str] = {}
        token = cfg.secret_token()
        if token:
            self._headers["Authorization"] = f"Token {token}"
        elif cfg.username:
            self._headers.update(
                urllib3.make_headers(basic_auth=f"{cfg.username}:{cfg.secret_password()}")
            )
        self._http = urllib3.PoolManager(
            num_pools=1, maxsize=4, retries=False, timeout=urllib3.Timeout(total=cfg.timeout_s)
        )
        self._base = cfg.url.rstrip("/")

    @property
    def configured(self) -> bool:
        return bool(self._base)

    def ping(self, timeout_s: float) -> bool:
        if not self._base:
            return False
        try:
            resp = self._http.request(
                "GET", f"{self._base}/ping", headers=self._headers, timeout=timeout_s
            )
        except urllib3.exceptions.HTTPError:
            return False
        return resp.status == 204

    def build_query(self, minutes: int, line: str | None, device: str | None) -> str:
        cfg = self._cfg
        columns = [*self._fields, "score", "is_anomaly", "model_version"]
        source = self._source()
        where = [f"time > now() - {int(minutes)}m"]
        if line:
            where.append(f'"line" = {quote_string(line)}')
        if device:
            where.append(f'"device" = {quote_string(device)}')
        # LIMIT applies per series (per line/device) with GROUP BY: newest points first.
        return (
            f"SELECT {', '.join(quote_ident(c) for c in columns)} FROM {source} "
            f'WHERE {" AND ".join(where)} GROUP BY "line", "device" '
            f"ORDER BY time DESC LIMIT {int(cfg.max_points_per_device)}"
        )

    def _source(self) -> str:
        source = quote_ident(self._cfg.measurement)
        if self._cfg.retention_policy:
            source = f"{quote_ident(self._cfg.retention_policy)}.{source}"
        return source

    def build_history_query(
        self, line: str, device: str, fields: tuple[str, ...], before_ns: int, limit: int
    ) -> str:
        return (
            f"SELECT {', '.join(quote_ident(f) for f in fields)} FROM {self._source()} "
            f'WHERE "line" = {quote_string(line)} AND "device" = {quote_string(device)} '
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
        for series in self._query(q, epoch="ns"):
            for row in reversed(series.get("values") or []):
                rest = row[1:]
                if len(rest) == len(fields) and all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in rest
                ):
                    ts.append(int(row[0]))
                    values.append([float(v) for v in rest])
        return ts, values

    def _query(self, q: str, epoch: str = "ms") -> list[dict[str, Any]]:
        if not self._base:
            raise InfluxUnavailable("no InfluxDB configured (influx.url is empty)")
        try:
            resp = self._http.request(
                "POST",
                f"{self._base}/query",
                fields={"db": self._cfg.database, "q": q, "epoch": epoch},
                headers=self._headers,
                encode_multipart=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"InfluxDB at {self._base} did not answer: {exc}") from None
        try:
            body = orjson.loads(resp.data)
        except orjson.JSONDecodeError:
            raise InfluxQueryError(
                f"InfluxDB answered HTTP {resp.status} without JSON: {resp.data[:120]!r}"
            ) from None
        if resp.status >= 400 or not isinstance(body, dict) or "error" in body:
            detail = body.get("error") if isinstance(body, dict) else body
            raise InfluxQueryError(f"InfluxDB query failed (HTTP {resp.status}): {detail}")
        results = body.get("results") or [{}]
        if "error" in results[0]:
            raise InfluxQueryError(f"InfluxDB query error: {results[0]['error']}")
        return results[0].get("series", [])

    def recent(self, minutes: int, line: str | None, device: str | None) -> list[dict[str, Any]]:
        """Per device, oldest first: columnar arrays ready for a chart."""
        devices = []
        for series in self._query(self.build_query(minutes, line, device)):
            tags = series.get("tags") or {}
            columns = series["columns"]
            rows = list(reversed(series.get("values") or []))
            data: dict[str, list[Any]] = {
                name: [row[i] for row in rows] for i, name in enumerate(columns)
            }
            flags = [bool(v) for v in data.get("is_anomaly", [])]
            devices.append(
                {
                    "line": tags.get("line", ""),
                    "device": tags.get("device", ""),
                    "points": len(rows),
                    "anomalies": sum(flags),
                    "time": data.get("time", []),
                    "values": {f: data.get(f, [None] * len(rows)) for f in self._fields},
                    "score": data.get("score", []),
                    "is_anomaly": flags,
                    # The newest point's model (per-point versions would repeat it).
                    "model_version": (data.get("model_version") or [None])[-1],
                }
            )
        devices.sort(key=lambda d: (d["line"], d["device"]))
        return devices

    def close(self) -> None:
        self._http.clear()
