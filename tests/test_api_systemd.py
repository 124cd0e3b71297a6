"""Under systemd (Type=notify, WatchdogSec=) the API's gunicorn master says READY=1 and
the watchdog is pinged while a worker answers /health."""

from __future__ import annotations

import pytest

from devstack.process import wait_until
from tests.test_api_server import private_models, start_api, two_versions  # noqa: F401

pytestmark = pytest.mark.integration


def test_api_notifies_ready_and_pings_the_watchdog(start_api, private_models, fake_systemd):  # noqa: F811
    path, messages = fake_systemd
    models, _, _ = private_models
    start_api(models, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    wait_until(lambda: any("READY=1" in m for m in messages), 20, "READY=1")
    wait_until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 2, 20, "watchdog pings")
