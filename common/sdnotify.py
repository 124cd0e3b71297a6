"""A tiny, dependency-free client for systemd's sd_notify protocol.

Units with ``Type=notify`` wait for ``READY=1`` before they count as started, and with
``WatchdogSec=`` they kill and restart a service that stops sending ``WATCHDOG=1``.
systemd passes the socket in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and the watchdog timeout in ``$WATCHDOG_USEC`` (for ``$WATCHDOG_PID``, if
set).  Outside systemd every call is a no-op that returns False, so the same code runs
in a terminal, in tests and under the service manager.

A notification that cannot be sent is logged and dropped: telling systemd about our
state must never be the reason a service fails.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _socket_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of "@", no filesystem entry.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock addresses (systemd >= 253, VMs) are not used on a Pi; ignore them.
    log.debug("unsupported NOTIFY_SOCKET %r; notifications disabled", value)
    return None


def _watchdog_seconds(env: Mapping[str, str], pid: int) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None  # the watchdog belongs to another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return None
    return value / 1e6 if value > 0 else None


def _status(text: str) -> list[str]:
    # One line: a newline would start a new assignment.
    return [f"STATUS={' '.join(text.splitlines())}"] if text else []


class Notifier:
    """Sends notifications to the service manager named by the environment."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None):
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = _watchdog_seconds(env, os.getpid() if pid is None else pid)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if the manager got it."""
        if self._address is None:
            return False
        data = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._warned:
                    log.warning("cannot notify systemd at %r: %s", self._address, exc)
                    self._warned = True
                return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *_status(status))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload to
        # this message; older managers ignore it. Send ready() when the reload is done.
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds for this process, or None when none is set."""
        return self._watchdog_s if self.enabled else None

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class Watchdog:
    """Pings the systemd watchdog from a thread, but only while ``healthy()`` says so.

    A process that hangs (a deadlocked or stalled worker thread) then stops pinging
    and systemd restarts it, instead of it sitting "active" while doing nothing.
    Pings go out every half timeout, as systemd recommends.
    """

    def __init__(
        self,
        healthy: Callable[[], bool],
        notifier: Notifier | None = None,
        interval_s: float | None = None,
    ):
        self._healthy = healthy
        self._notifier = notifier or default()
        timeout = self._notifier.watchdog_interval()
        self.period_s = interval_s if interval_s is not None else (timeout / 2 if timeout else None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.withheld = 0

    def start(self) -> bool:
        """Start pinging; False (and nothing started) when no watchdog is configured."""
        if self.period_s is None or not self._notifier.enabled:
            return False
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return True

    def _check(self) -> bool:
        try:
            return bool(self._healthy())
        except Exception:
            log.exception("watchdog health check failed")
            return False

    def _run(self) -> None:
        assert self.period_s is not None
        was_healthy = True
        while not self._stop.wait(self.period_s):
            healthy = self._check()
            if healthy:
                self._notifier.watchdog()
                self.pings += 1
            else:
                self.withheld += 1
                if was_healthy:
                    log.error("unhealthy: withholding watchdog pings; systemd will restart us")
            was_healthy = healthy

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)


_default: Notifier | None = None
_default_lock = threading.Lock()


def default() -> Notifier:
    """The process-wide notifier, made from the environment on first use."""
    global _default  # noqa: PLW0603 - one notifier per process, created lazily
    with _default_lock:
        if _default is None:
            _default = Notifier()
        return _default


def ready(status: str = "") -> bool:
    return default().ready(status)


def reloading() -> bool:
    return default().reloading()


def stopping(status: str = "") -> bool:
    return default().stopping(status)


def status(text: str) -> bool:
    return default().status(text)


def watchdog() -> bool:
    return default().watchdog()


def watchdog_interval() -> float | None:
    return default().watchdog_interval()
