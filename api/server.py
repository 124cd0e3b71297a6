"""Gunicorn, configured in code: a pre-fork master with N workers, one app per worker.

``preload_app`` is off on purpose: each worker calls :func:`api.app.create_app`
after the fork and loads its own model, so a SIGHUP to the master (gunicorn's
graceful reload: new workers start, old ones finish their requests and exit) also
loads the model ``current`` points at by then, and re-reads the API keys file.
"""

from __future__ import annotations

import logging
import urllib.request
from typing import Any

from gunicorn.app.base import BaseApplication

from api.config import ApiConfig

log = logging.getLogger(__name__)


def _child_exit(_server: Any, worker: Any) -> None:
    # A dead worker's live gauges must stop counting in the merged /metrics.
    from prometheus_client import multiprocess

    from api.metrics import multiprocess_mode

    if multiprocess_mode():
        multiprocess.mark_process_dead(worker.pid)


def _post_worker_init(worker: Any) -> None:
    log.info("worker %d ready", worker.pid)


def _watchdog_hook(cfg: ApiConfig):
    """gunicorn's master sends READY=1 itself; the watchdog pings come from here, and
    only while a worker answers /health, so a wedged server is restarted by systemd."""

    def when_ready(_server: Any) -> None:
        from common import sdnotify

        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
        url = f"http://{_bind(host, cfg.port)}/health"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.status == 200
            except OSError:
                return False

        if sdnotify.Watchdog(healthy).start():
            log.info("systemd watchdog: checking %s", url)

    return when_ready


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def gunicorn_options(cfg: ApiConfig) -> dict[str, Any]:
    server = cfg.server
    return {
        "bind": [_bind(cfg.host, cfg.port)],
        "workers": server.workers,
        "worker_class": server.worker_class,
        "threads": server.threads if server.worker_class == "gthread" else 1,
        "timeout": server.timeout_s,
        "graceful_timeout": server.graceful_timeout_s,
        "keepalive": server.keepalive_s,
        "backlog": server.backlog,
        "preload_app": False,
        # %(D)s: microseconds per request, for anyone reading the access log.
        "accesslog": "-" if server.access_log else None,
        "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(D)sus',
        "errorlog": "-",
        "loglevel": cfg.log_level.lower(),
        "proc_name": "factory-api",
        "child_exit": _child_exit,
        "post_worker_init": _post_worker_init,
        "when_ready": _watchdog_hook(cfg),
        # gunicorn >= 25 opens a control socket in $HOME by default; several servers
        # (tests, benchmarks) would fight over it, and we do not use it.
        "control_socket_disable": True,
    }


class ApiServer(BaseApplication):
    def __init__(self, cfg: ApiConfig):
        self._api_cfg = cfg
        self._options = gunicorn_options(cfg)
        super().__init__(prog="python -m api")

    def load_config(self) -> None:
        assert self.cfg is not None
        for key, value in self._options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        # Runs in each worker after the fork (preload_app is off).
        from api.app import create_app

        return create_app(self._api_cfg)
