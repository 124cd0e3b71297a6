"""How a long-running service process runs under systemd (gateway, notifier).

SIGTERM / SIGINT request a stop; READY=1 is sent once the service is *receiving*
(its MQTT subscription is confirmed), from a thread, so a stop requested during a
broker outage is still served; the watchdog is pinged only while the service says it
is healthy; the stop is ordered: STOPPING=1, watchdog off, then the service's own stop.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Protocol

from common import sdnotify

log = logging.getLogger(__name__)


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
