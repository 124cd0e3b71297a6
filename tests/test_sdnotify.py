"""common.sdnotify against real AF_UNIX datagram sockets, as systemd provides them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.sdnotify import Notifier, Watchdog
from devstack.process import wait_until
from tests.helpers import ROOT, unique


class Manager:
    """The service manager's end: a bound datagram socket that collects messages."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5.0)

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
            return True
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(5.0)


@pytest.fixture
def path_manager(tmp_path: Path) -> Iterator[tuple[Manager, str]]:
    path = str(tmp_path / "notify.sock")
    manager = Manager(path)
    yield manager, path
    manager.sock.close()


@pytest.fixture
def abstract_manager() -> Iterator[tuple[Manager, str]]:
    name = unique("sdnotify-test")
    manager = Manager(b"\0" + name.encode())
    yield manager, "@" + name
    manager.sock.close()


def test_messages_reach_a_path_socket(path_manager):
    manager, path = path_manager
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("subscribed to factory/+/+/reading")
    assert manager.receive() == ["READY=1", "STATUS=subscribed to factory/+/+/reading"]
    assert notifier.status("draining spool\n12 points left")
    assert manager.receive() == ["STATUS=draining spool 12 points left"]
    assert notifier.watchdog()
    assert manager.receive() == ["WATCHDOG=1"]
    assert notifier.stopping("flushing\nwrites")
    assert manager.receive() == ["STOPPING=1", "STATUS=flushing writes"]
    assert notifier.reloading()
    reload_msg = manager.receive()
    assert reload_msg[0] == "RELOADING=1"
    assert reload_msg[1].startswith("MONOTONIC_USEC=") and int(reload_msg[1].split("=")[1]) > 0
    notifier.close()


def test_abstract_namespace_address(abstract_manager):
    manager, address = abstract_manager
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.ready()
    assert manager.receive() == ["READY=1"]


def test_no_op_outside_systemd():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval() is None


def test_missing_socket_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1, "warned once, not on every ping"


def test_watchdog_interval_from_environment(path_manager):
    _, path = path_manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    assert Notifier(env).watchdog_interval() == 30.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval() == 30.0
    # Meant for another process (systemd sets it for the main PID only).
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval() is None
    assert Notifier({**env, "WATCHDOG_USEC": "0"}).watchdog_interval() is None
    assert Notifier({**env, "WATCHDOG_USEC": "soon"}).watchdog_interval() is None
    # No socket to ping: no watchdog either.
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


def test_watchdog_pings_only_while_healthy(path_manager):
    manager, path = path_manager
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})
    healthy = {"value": True}
    watchdog = Watchdog(lambda: healthy["value"], notifier)
    assert watchdog.period_s == pytest.approx(0.02)
    assert watchdog.start()
    try:
        assert manager.receive() == ["WATCHDOG=1"]
        assert manager.receive() == ["WATCHDOG=1"]
        healthy["value"] = False
        withheld_before = watchdog.withheld
        wait_until(lambda: watchdog.withheld >= withheld_before + 3, 5, "withheld pings")
        # Drain pings sent before the switch; then nothing more may arrive while unhealthy.
        while manager.pending():
            pass
        pings = watchdog.pings
        wait_until(lambda: watchdog.withheld >= withheld_before + 6, 5, "more withheld pings")
        assert watchdog.pings == pings
        assert not manager.pending()
        healthy["value"] = True
        assert manager.receive() == ["WATCHDOG=1"]
    finally:
        watchdog.stop()


def test_failing_health_check_counts_as_unhealthy(path_manager):
    manager, path = path_manager
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})

    def broken() -> bool:
        raise RuntimeError("health check bug")

    watchdog = Watchdog(broken, notifier)
    assert watchdog.start()
    try:
        wait_until(lambda: watchdog.withheld >= 3, 5, "withheld pings")
        assert watchdog.pings == 0
        assert not manager.pending()
    finally:
        watchdog.stop()


def test_watchdog_not_started_without_systemd():
    assert Watchdog(lambda: True, Notifier({})).start() is False


def test_a_child_process_notifies_through_the_inherited_environment(abstract_manager):
    """The module-level functions read the environment, as under systemd."""
    manager, address = abstract_manager
    code = (
        "from common import sdnotify\n"
        "assert sdnotify.watchdog_interval() == 5.0\n"
        "assert sdnotify.ready('up')\n"
        "assert sdnotify.watchdog()\n"
        "assert sdnotify.stopping()\n"
    )
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "5000000"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert manager.receive() == ["READY=1", "STATUS=up"]
    assert manager.receive() == ["WATCHDOG=1"]
    assert manager.receive() == ["STOPPING=1"]
