"""Optional dependency checks for ``/ready``: InfluxDB answers, the broker accepts us.

Results are cached for ``cache_s`` so a probe every second costs at most one
connection attempt per worker per period.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import threading
import time
from collections.abc import Callable

from common.mqtt import MqttSettings, make_client


def mqtt_reachable(settings: MqttSettings, timeout_s: float) -> bool:
    """A full MQTT CONNECT/CONNACK with our credentials, then DISCONNECT."""
    settings = dataclasses.replace(settings, client_id="")
    client = make_client(settings, f"api-ready-{os.getpid()}-{secrets.token_hex(3)}")
    client.connect_timeout = timeout_s
    accepted = threading.Event()

    def on_connect(_client, _userdata, _flags, reason_code, _props) -> None:
        if not reason_code.is_failure:
            accepted.set()

    client.on_connect = on_connect
    deadline = time.monotonic() + timeout_s
    try:
        client.connect(settings.host, settings.port, keepalive=max(5, round(timeout_s) * 2))
        while not accepted.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        if accepted.is_set():
            client.disconnect()
        return accepted.is_set()
    except (OSError, ValueError):
        return False
    finally:
        sock = client.socket()  # the client is thrown away: just release its socket
        if sock is not None:
            sock.close()


class CachedCheck:
    def __init__(self, name: str, probe: Callable[[], bool], cache_s: float):
        self.name = name
        self._probe = probe
        self._cache_s = cache_s
        self._lock = threading.Lock()
        self._expires = 0.0
        self._ok = False

    def __call__(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now >= self._expires:
                self._ok = self._probe()
                self._expires = now + self._cache_s
            return self._ok
