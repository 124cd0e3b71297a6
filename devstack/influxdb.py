"""A real InfluxDB 1.x (influxd) in a directory of its own, and a tiny v1 HTTP client."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import urllib3

from devstack.process import ManagedProcess, free_port

_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=30.0))


def ping(url: str) -> bool:
    try:
        return _http.request("GET", f"{url}/ping", timeout=1.0).status == 204
    except urllib3.exceptions.HTTPError:
        return False


def query(url: str, q: str, db: str | None = None, epoch: str = "ns") -> list[dict[str, Any]]:
    """Run InfluxQL through the v1 ``/query`` API; returns the list of series of the
    first statement (each {name, columns, values, tags?}). Raises on errors."""
    fields = {"q": q, "epoch": epoch}
    if db:
        fields["db"] = db
    resp = _http.request("POST", f"{url}/query", fields=fields, encode_multipart=False)
    body = orjson.loads(resp.data)
    if resp.status >= 400 or "error" in body:
        raise RuntimeError(f"InfluxDB query failed ({resp.status}): {body}")
    result = body["results"][0]
    if "error" in result:
        raise RuntimeError(f"InfluxDB query error: {result['error']}")
    return result.get("series", [])


def scalar(url: str, q: str, db: str) -> Any:
    """First value of the first row of the first series (None if no data)."""
    series = query(url, q, db)
    if not series or not series[0]["values"]:
        return None
    return series[0]["values"][0][1]


@dataclass
class InfluxDB:
    run_dir: Path
    port: int
    host: str = "127.0.0.1"
    rpc_port: int = field(default_factory=free_port)
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "influxdb.conf"
        conf.write_text(
            f"""reporting-disabled = true
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{self.run_dir}/meta"

[data]
  dir = "{self.run_dir}/data"
  wal-dir = "{self.run_dir}/wal"
  query-log-enabled = false

[http]
  bind-address = "{self.host}:{self.port}"
  log-enabled = false

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false
"""
        )
        return conf

    def start(self, timeout_s: float = 30.0) -> InfluxDB:
        binary = shutil.which("influxd") or "/usr/bin/influxd"
        conf = self.write_config()
        self.process = ManagedProcess(
            "influxd",
            [binary, "-config", str(conf)],
            self.run_dir / "influxd.log",
            ready=lambda: ping(self.url),
        ).start(timeout_s)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def create_database(self, name: str) -> None:
        query(self.url, f'CREATE DATABASE "{name}"')
