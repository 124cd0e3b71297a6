"""Prometheus metrics of the API.

Under gunicorn each worker is a process, and a scrape of ``/metrics`` reaches one of
them.  So that every scrape shows the whole server, ``python -m api`` runs
prometheus_client in multi-process mode: ``PROMETHEUS_MULTIPROC_DIR`` points at a
fresh temporary directory (made before any worker starts and removed at exit), each
worker writes its values to memory-mapped files there, and ``/metrics`` merges them.
Without that variable (tests, ``--dev``) the app keeps its own in-memory registry.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_RECORD_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "api_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "api_request_seconds",
            "Time in the app per request",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.records = Histogram(
            "api_predict_records",
            "Records per /predict request",
            buckets=_RECORD_BUCKETS,
            registry=r,
        )
        self.scored = Counter("api_predict_scored", "Records scored by /predict", registry=r)
        self.anomalies = Counter(
            "api_predict_anomalies", "Records scored anomalous by /predict", registry=r
        )
        self.errors = Counter("api_errors", "Requests refused, by error code", ["code"], registry=r)
        self.auth_failures = Counter(
            "api_auth_failures", "Requests with a missing or wrong API key", registry=r
        )
        self.reloads = Counter(
            "api_model_reloads", "Model switches in workers", ["result"], registry=r
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        # livemax: a version is shown while at least one live worker serves it.
        self.model_info = Gauge(
            "api_model_info",
            "Model version served (1) by live workers",
            ["version"],
            multiprocess_mode="livemax",
            registry=r,
        )

    def set_model(self, version: str, previous: str | None) -> None:
        if previous is not None and previous != version:
            self.model_info.labels(previous).set(0)
        self.model_info.labels(version).set(1)

    def render(self) -> tuple[bytes, str]:
        if multiprocess_mode():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
