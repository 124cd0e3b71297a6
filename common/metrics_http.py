"""A service's Prometheus endpoint: /metrics on its own port, stopped on shutdown."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._server = None

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on host:port (port 0: not at all)."""
        if port:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
