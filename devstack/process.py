"""A child process with readiness waiting and ordered stop."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service did not start or become ready."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, for a server that a child process binds later.

    Asking the kernel for port 0 returns an *ephemeral* port, and between this call
    and the child's bind any outgoing connection on the machine may take it (seen in
    CI: "Address already in use"). So pick from below the ephemeral range, where the
    kernel never assigns client ports, and never hand out the same port twice."""
    low = max(_ephemeral_low(), 12000)
    candidates = list(range(10000, low))
    random.shuffle(candidates)
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ServiceError(f"no free port below {low} on {host}")


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.02
) -> None:
    """Poll ``condition`` until it is true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        # Polling interval, not synchronisation: the condition is re-checked.
        time.sleep(interval_s)


class ManagedProcess:
    """Runs a command, logs to a file, waits for readiness, stops it in order."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        ready: Callable[[], bool],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._ready = ready
        self._env = env
        self._cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,  # Ctrl-C in a terminal goes to us, not to children
            )
        try:
            wait_until(self._ready_or_dead, timeout_s, f"{self.name} to become ready")
        except TimeoutError:
            self.stop()
            raise ServiceError(
                f"{self.name} not ready; see {self.log_path}:\n{self.tail()}"
            ) from None
        if self.proc.poll() is not None:
            raise ServiceError(
                f"{self.name} exited with {self.proc.returncode}; "
                f"see {self.log_path}:\n{self.tail()}"
            )
        log.info("%s ready (pid %d)", self.name, self.proc.pid)
        return self

    def _ready_or_dead(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is not None or self._ready()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing", self.name, timeout_s)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
