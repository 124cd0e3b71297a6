"""Where scored readings go: InfluxDB 1.x (v1 HTTP API) or 2.x/3.x (v2 via influxdb-client).

A sink takes a batch of line-protocol lines and either stores them or raises
:class:`WriteError`.  ``retryable`` tells the writer whether trying again can help
(database down, hung, timeout) or not: InfluxDB refused the points themselves
(malformed, field type conflict), possibly after storing the rest of the batch.
Each write has its own timeout, so a hung InfluxDB is noticed as fast as the caller
needs (see ``gateway.writer``).
"""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import urlencode

import urllib3

from common.config import read_secret
from gateway.config import InfluxConfig

log = logging.getLogger(__name__)


class WriteError(RuntimeError):
    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


# HTTP statuses that mean "these points are refused", not "InfluxDB is unavailable".
REFUSED_STATUSES = frozenset({400, 413, 422})


class Sink(Protocol):
    def write(self, lines: list[str], timeout_s: float) -> None: ...
    def close(self) -> None: ...


class InfluxV1Sink:
    """InfluxDB 1.x ``/write`` with keep-alive connections."""

    def __init__(self, cfg: InfluxConfig):
        self._cfg = cfg
        params = {"db": cfg.database, "precision": "ns"}
        if cfg.retention_policy:
            params["rp"] = cfg.retention_policy
        self._write_url = f"{cfg.url.rstrip('/')}/write?{urlencode(params)}"
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        password = read_secret(cfg.password, cfg.password_file, "influx.password")
        if cfg.username:
            self._headers.update(urllib3.make_headers(basic_auth=f"{cfg.username}:{password}"))
        self._http = urllib3.PoolManager(
            num_pools=2, maxsize=2, retries=False, timeout=urllib3.Timeout(total=cfg.timeout_s)
        )

    def ensure_database(self) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x."""
        resp = self._http.request(
            "POST",
            f"{self._cfg.url.rstrip('/')}/query",
            fields={"q": f'CREATE DATABASE "{self._cfg.database}"'},
            headers={k: v for k, v in self._headers.items() if k != "Content-Type"},
            encode_multipart=False,
        )
        if resp.status >= 300:
            raise WriteError(
                f"cannot create database {self._cfg.database}: HTTP {resp.status} "
                f"{resp.data[:200]!r}",
                retryable=resp.status >= 500,
            )

    def write(self, lines: list[str], timeout_s: float) -> None:
        body = "\n".join(lines).encode()
        try:
            resp = self._http.request(
                "POST",
                self._write_url,
                body=body,
                headers=self._headers,
                timeout=urllib3.Timeout(total=timeout_s),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise WriteError(f"InfluxDB unreachable: {exc}", retryable=True) from None
        if resp.status == 204:
            return
        detail = resp.data[:300].decode(errors="replace")
        # 400 is a bad point or a field type conflict: InfluxDB already stored the
        # good points of the batch, and retrying cannot fix the rest.
        raise WriteError(
            f"InfluxDB write HTTP {resp.status}: {detail}",
            retryable=resp.status not in REFUSED_STATUSES,
        )

    def close(self) -> None:
        self._http.clear()


class InfluxV2Sink:
    """InfluxDB 2.x/3.x/Cloud (and line-protocol compatible servers) via influxdb-client."""

    def __init__(self, cfg: InfluxConfig):
        from influxdb_client import InfluxDBClient, WriteService

        token = read_secret(cfg.token, cfg.token_file, "influx.token")
        self._cfg = cfg
        self._client = InfluxDBClient(
            url=cfg.url,
            token=token or "unused",
            org=cfg.org or "-",
            timeout=int(cfg.timeout_s * 1000),
            enable_gzip=False,
        )
        # We batch ourselves, so the client's write service is called directly: it is
        # synchronous, surfaces every error, and takes a timeout per request (the
        # client's WriteApi does not).
        self._service = WriteService(self._client.api_client)

    def write(self, lines: list[str], timeout_s: float) -> None:
        from influxdb_client.rest import ApiException

        try:
            self._service.post_write(
                org=self._cfg.org or "-",
                bucket=self._cfg.bucket,
                body="\n".join(lines).encode(),
                precision="ns",
                content_type="text/plain; charset=utf-8",
                _request_timeout=timeout_s * 1000,  # milliseconds, as the client's own
            )
        except ApiException as exc:
            status = exc.status or 0
            raise WriteError(
                f"InfluxDB v2 write HTTP {status}: {str(exc.body)[:300]}",
                retryable=status not in REFUSED_STATUSES,
            ) from None
        except Exception as exc:  # urllib3 / socket errors surface as various types
            raise WriteError(f"InfluxDB v2 unreachable: {exc}", retryable=True) from None

    def close(self) -> None:
        self._client.close()


def make_sink(cfg: InfluxConfig) -> InfluxV1Sink | InfluxV2Sink:
    return InfluxV1Sink(cfg) if cfg.api == 1 else InfluxV2Sink(cfg)
