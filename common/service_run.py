"""How a long-running service process starts and runs under systemd (gateway, notifier).

``--config FILE`` (or the service's environment overrides) is loaded once; a bad
config exits with status 2 (systemd does not restart it); ``--check-config`` prints
the effective config, secrets masked, and exits.

SIGTERM / SIGINT request a stop; READY=1 is sent once the service is *receiving*
(its MQTT subscription is confirmed), from a thread, so a stop requested during a
broker outage is still served; the watchdog is pinged only while the service says it
is healthy; the stop is ordered: STOPPING=1, watchdog off, then the service's own stop.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from common import sdnotify
from common.config import ConfigError
from common.logs import setup_logging

log = logging.getLogger(__name__)


def load_service_config(
    prog: str,
    description: str | None,
    loader: Callable[[str | None], Any],
    check_help: str,
    argv: list[str] | None,
) -> tuple[Any, bool] | int:
    """(config, whether --check-config was asked), or exit status 2 for a bad config.
    Logging is set up from the config's ``log_level``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", "-c", default=None, help="TOML config file")
    parser.add_argument("--check-config", action="store_true", help=check_help)
    args = parser.parse_args(argv)
    try:
        cfg = loader(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return 2
    setup_logging(cfg.log_level)
    return cfg, args.check_config


def print_check(report: dict[str, Any]) -> int:
    """The --check-config answer: the report as JSON on stdout; exit status 0."""
    sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    return 0


class Service(Protocol):
    stop_requested: threading.Event
    failed: threading.Event

    def healthy(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


def run_service(
    service: Service,
    receiving: threading.Event,
    ready_status: Callable[[], str],
    stopping_status: str,
) -> int:
    """Run ``service`` until a stop is requested; exit code 1 if it failed, else 0."""

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        service.stop_requested.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    notifier = sdnotify.default()
    watchdog = sdnotify.Watchdog(service.healthy, notifier)
    service.start()
    watchdog.start()

    def _ready() -> None:
        while not service.stop_requested.is_set():
            if receiving.wait(1.0):
                notifier.ready(ready_status())
                log.info("ready")
                return

    threading.Thread(target=_ready, name="sd-ready", daemon=True).start()
    service.stop_requested.wait()
    notifier.stopping(stopping_status)
    watchdog.stop()
    service.stop()
    return 1 if service.failed.is_set() else 0
