"""The gateway speaks the sd_notify protocol: READY=1 once subscribed, watchdog pings
while healthy, STOPPING=1 on shutdown.  A real AF_UNIX datagram socket plays systemd."""

from __future__ import annotations

import os
import signal

import pytest

from devstack.process import wait_until

pytestmark = pytest.mark.integration


def test_ready_watchdog_and_stopping(start_gateway, fake_systemd):
    path, messages = fake_systemd
    # WATCHDOG_PID must be the gateway's own pid; the unset form applies to any pid.
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    assert "WATCHDOG_PID" not in os.environ
    gw = start_gateway(env=env)
    wait_until(lambda: any("READY=1" in m for m in messages), 20, "READY=1")
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=receiving; model " in ready
    wait_until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 3, 20, "watchdog pings")
    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.proc.wait(30) == 0
    assert any("STOPPING=1" in m for m in messages)
