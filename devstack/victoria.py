"""VictoriaMetrics: a real server that accepts InfluxDB line protocol on /api/v2/write.

No InfluxDB 2.x/3.x is installable on Debian; this lets the v2 write path
(influxdb-client) be exercised against a real HTTP server.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import urllib3

from devstack.process import ManagedProcess

_http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=1.0, read=30.0))


@dataclass
class VictoriaMetrics:
    run_dir: Path
    port: int
    host: str = "127.0.0.1"
    process: ManagedProcess | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _healthy(self) -> bool:
        try:
            return _http.request("GET", f"{self.url}/health", timeout=1.0).status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def start(self, timeout_s: float = 30.0) -> VictoriaMetrics:
        binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "victoria-metrics",
            [
                binary,
                f"-httpListenAddr={self.host}:{self.port}",
                f"-storageDataPath={self.run_dir}/data",
                "-search.latencyOffset=0s",
                "-loggerLevel=WARN",
            ],
            self.run_dir / "victoria.log",
            ready=self._healthy,
        ).start(timeout_s)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def flush(self) -> None:
        """Make just-ingested samples searchable (test/bench helper)."""
        _http.request("GET", f"{self.url}/internal/force_flush")

    def export(self, match: str) -> list[dict]:
        """Raw series matching a selector, via /api/v1/export (JSON lines)."""
        import orjson

        resp = _http.request(
            "POST", f"{self.url}/api/v1/export", fields={"match[]": match}, encode_multipart=False
        )
        return [orjson.loads(line) for line in resp.data.splitlines() if line.strip()]
