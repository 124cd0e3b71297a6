"""The one InfluxDB HTTP client: the gateway's writes, the API's and retraining's reads.

* :meth:`InfluxClient.write` stores line protocol: InfluxDB 1.x ``/write``
  (``api = 1``), or the v2 write API through influxdb-client (``api = 2``: 2.x, 3.x,
  Cloud and line-protocol compatible servers).  It raises :class:`WriteError`, whose
  ``retryable`` says whether trying again can help (database down, hung, timeout) or
  not: InfluxDB refused the points themselves (malformed, field type conflict),
  possibly after storing the rest of the batch.  Each write has its own timeout, so a
  hung InfluxDB is noticed as fast as the caller needs (see ``gateway.writer``); the
  client never retries a write itself.
* :meth:`InfluxClient.query` runs InfluxQL over the v1 ``/query`` endpoint, which
  InfluxDB 1.x serves natively and 2.x/3.x serve for a bucket mapped to a database /
  retention policy (DBRP).  It raises :class:`InfluxUnavailable` (no answer) or
  :class:`InfluxQueryError` (an answer that is an error).

On the v1 endpoints the client authenticates with a token (``Authorization: Token
...``) if one is set, else as a 1.x user (basic auth).  Identifiers and literals in
InfluxQL are quoted by :mod:`common.influxql`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3

from common.config import read_secret
from common.influxql import quote_ident

# HTTP statuses that mean "these points are refused", not "InfluxDB is unavailable".
REFUSED_STATUSES = frozenset({400, 413, 422})
# A streamed query waits this long for the connection, then timeout_s for each chunk.
CONNECT_TIMEOUT_S = 5.0


class InfluxError(RuntimeError):
    """Something InfluxDB did or did not do; the message says what."""


class WriteError(InfluxError):
    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class InfluxUnavailable(InfluxError):
    """InfluxDB did not answer (network, timeout) or is not configured."""


class InfluxQueryError(InfluxError):
    """InfluxDB answered with an error (bad credentials, unknown database, ...)."""


@dataclass(frozen=True)
class InfluxSettings:
    """Where InfluxDB is and how to log in: the keys the gateway's and the API's
    ``[influx]`` sections share (:meth:`of` takes them from either)."""

    url: str = "http://localhost:8086"  # empty: not configured (queries fail, ping is False)
    # Write path: 1 = /write of InfluxDB 1.x; 2 = v2 write API via influxdb-client.
    api: int = 1
    # v1: where points go and where queries look.
    database: str = "factory"
    retention_policy: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    # v2 writes; a token is also what 2.x/3.x want on /query.
    org: str = ""
    bucket: str = "factory"
    token: str = ""
    token_file: str = ""
    timeout_s: float = 10.0

    @classmethod
    def of(cls, section: object, **overrides: Any) -> InfluxSettings:
        """The settings of a config section that has (some of) these keys by name."""
        names = [f.name for f in dataclasses.fields(cls)]
        found = {name: getattr(section, name) for name in names if hasattr(section, name)}
        return cls(**{**found, **overrides})


class InfluxClient:
    """Keep-alive connections to one InfluxDB (one urllib3 pool for the v1 endpoints).

    ``query_retries``: how often a query is sent again when the connection fails
    (with back-off); 0 fails at once.  Secrets are read here, once.
    """

    def __init__(self, settings: InfluxSettings, *, query_retries: int = 0):
        s = self.settings = settings
        self._base = s.url.rstrip("/")
        token = read_secret(s.token, s.token_file, "influx.token")
        self._auth: dict[str, str] = {}
        if token:
            self._auth["Authorization"] = f"Token {token}"
        elif s.username:
            password = read_secret(s.password, s.password_file, "influx.password")
            self._auth.update(urllib3.make_headers(basic_auth=f"{s.username}:{password}"))
        self._http = urllib3.PoolManager(
            num_pools=1, maxsize=4, retries=False, timeout=urllib3.Timeout(total=s.timeout_s)
        )
        self._query_retries: urllib3.Retry | bool = (
            urllib3.Retry(total=query_retries, backoff_factor=0.5, allowed_methods=None)
            if query_retries
            else False
        )
        params = {"db": s.database, "precision": "ns"}
        if s.retention_policy:
            params["rp"] = s.retention_policy
        self._write_url = f"{self._base}/write?{urlencode(params)}"
        self._write_headers = {"Content-Type": "text/plain; charset=utf-8", **self._auth}
        self._v2: Any = None
        if s.api == 2:
            from influxdb_client import InfluxDBClient, WriteService

            self._v2_client = InfluxDBClient(
                url=s.url,
                token=token or "unused",
                org=s.org or "-",
                timeout=int(s.timeout_s * 1000),
                enable_gzip=False,
            )
            # We batch ourselves, so the client's write service is called directly: it
            # is synchronous, surfaces every error, and takes a timeout per request (the
            # client's WriteApi does not).
            self._v2 = WriteService(self._v2_client.api_client)

    @property
    def configured(self) -> bool:
        return bool(self._base)

    # --- writes -----------------------------------------------------------------------

    def write(self, lines: list[str], timeout_s: float) -> None:
        """Store line-protocol ``lines`` (ns precision) or raise :class:`WriteError`."""
        if self._v2 is not None:
            self._write_v2(lines, timeout_s)
            return
        body = "\n".join(lines).encode()
        try:
            resp = self._http.request(
                "POST",
                self._write_url,
                body=body,
                headers=self._write_headers,
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

    def _write_v2(self, lines: list[str], timeout_s: float) -> None:
        from influxdb_client.rest import ApiException

        try:
            self._v2.post_write(
                org=self.settings.org or "-",
                bucket=self.settings.bucket,
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

    def create_database(self) -> None:
        """CREATE DATABASE (v1; idempotent in InfluxDB 1.x).  Raises :class:`WriteError`."""
        database = self.settings.database
        resp = self._http.request(
            "POST",
            f"{self._base}/query",
            fields={"q": f"CREATE DATABASE {quote_ident(database)}"},
            headers=self._auth,
            encode_multipart=False,
        )
        if resp.status >= 300:
            raise WriteError(
                f"cannot create database {database}: HTTP {resp.status} {resp.data[:200]!r}",
                retryable=resp.status >= 500,
            )

    # --- reads ------------------------------------------------------------------------

    def source(self, measurement: str) -> str:
        """``"measurement"`` for a FROM clause, in the configured retention policy."""
        if self.settings.retention_policy:
            return f"{quote_ident(self.settings.retention_policy)}.{quote_ident(measurement)}"
        return quote_ident(measurement)

    def ping(self, timeout_s: float) -> bool:
        if not self._base:
            return False
        try:
            resp = self._http.request(
                "GET", f"{self._base}/ping", headers=self._auth, timeout=timeout_s
            )
        except urllib3.exceptions.HTTPError:
            return False
        return resp.status == 204

    def query(
        self, influxql: str, *, epoch: str = "ns", chunk_size: int = 0
    ) -> Iterator[dict[str, Any]]:
        """The series of the (single) statement ``influxql`` in the configured database,
        times as epoch ``epoch`` (ns, ms, s, ...).

        ``chunk_size`` 0: the answer is read whole within ``timeout_s``.  Otherwise it
        is streamed (``chunked=true``), one chunk of that many points parsed at a time,
        each to arrive within ``timeout_s``; a series may then span chunks.  The
        request is sent when iteration starts.
        """
        if not self._base:
            raise InfluxUnavailable("no InfluxDB configured (influx.url is empty)")
        fields = {"q": influxql, "db": self.settings.database, "epoch": epoch}
        options: dict[str, Any] = {"retries": self._query_retries}
        if chunk_size:
            fields |= {"chunked": "true", "chunk_size": str(chunk_size)}
            read_s = self.settings.timeout_s
            connect_s = min(CONNECT_TIMEOUT_S, read_s)
            timeout = urllib3.Timeout(connect=connect_s, read=read_s)
            options |= {"preload_content": False, "timeout": timeout}
        try:
            resp = self._http.request(
                "POST",
                f"{self._base}/query",
                fields=fields,
                headers=self._auth,
                encode_multipart=False,
                **options,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"InfluxDB at {self._base} did not answer: {exc}") from None
        try:
            if resp.status >= 400:
                head = resp.read(2000) if chunk_size else resp.data[:2000]
                raise InfluxQueryError(
                    f"InfluxDB query failed (HTTP {resp.status}): {_error_detail(head)}"
                )
            blocks = resp.stream(1 << 16) if chunk_size else (resp.data,)
            yield from _series(blocks, resp.status)
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxUnavailable(f"InfluxDB connection lost while reading: {exc}") from None
        finally:
            resp.release_conn()

    def close(self) -> None:
        self._http.clear()
        if self._v2 is not None:
            self._v2_client.close()


def _error_detail(body: bytes) -> str:
    """InfluxDB's ``{"error": ...}``, else the answer's text."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()
    return str(doc["error"]) if isinstance(doc, dict) and "error" in doc else str(doc)


def _series(blocks: Iterable[bytes], status: int) -> Iterator[dict[str, Any]]:
    """Series of newline-separated JSON documents (one, or one per chunk)."""
    pending = b""
    documents = 0
    for block in blocks:
        pending += block
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                documents += 1
                yield from _document_series(line, status)
    if pending.strip() or not documents:
        yield from _document_series(pending, status)


def _document_series(raw: bytes, status: int) -> Iterator[dict[str, Any]]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InfluxQueryError(
            f"InfluxDB answered HTTP {status} without JSON: {raw[:200]!r}"
        ) from None
    if not isinstance(doc, dict) or "error" in doc:
        detail = doc.get("error") if isinstance(doc, dict) else doc
        raise InfluxQueryError(f"InfluxDB query failed (HTTP {status}): {detail}")
    for result in doc.get("results") or ():
        if "error" in result:
            raise InfluxQueryError(f"InfluxDB query error: {result['error']}")
        yield from result.get("series") or ()
