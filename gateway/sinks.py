"""Where scored readings go: InfluxDB 1.x (v1 HTTP API) or 2.x/3.x (v2 via influxdb-client).

A sink takes a batch of line-protocol lines and either stores them or raises
:class:`WriteError`.  ``retryable`` tells the writer whether trying again can help
(database down, hung, timeout) or not: InfluxDB refused the points themselves
(malformed, field type conflict), possibly after storing the rest of the batch.
Each write has its own timeout, so a hung InfluxDB is noticed as fast as the caller
needs (see ``gateway.writer``).  The HTTP work is :class:`common.influx.InfluxClient`'s;
a sink is the gateway's ``[influx]`` section put to it.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from common.influx import REFUSED_STATUSES, InfluxClient, InfluxSettings, WriteError
from gateway.config import InfluxConfig

__all__ = [
    "REFUSED_STATUSES",
    "InfluxV1Sink",
    "InfluxV2Sink",
    "Sink",
    "WriteError",
    "influx_settings",
    "make_sink",
]


class Sink(Protocol):
    def write(self, lines: list[str], timeout_s: float) -> None: ...
    def close(self) -> None: ...


def influx_settings(cfg: InfluxConfig, api: int) -> InfluxSettings:
    """The gateway's ``[influx]`` section for write API ``api``.  Only that API's
    credentials are used (and their files read): username/password for 1, the token
    for 2, as the config file describes them."""
    settings = InfluxSettings.of(cfg, api=api)
    if api == 1:
        return dataclasses.replace(settings, token="", token_file="")
    return dataclasses.replace(settings, username="", password="", password_file="")


class _ClientSink:
    api = 1

    def __init__(self, cfg: InfluxConfig):
        self._client = InfluxClient(influx_settings(cfg, self.api))

    def write(self, lines: list[str], timeout_s: float) -> None:
        self._client.write(lines, timeout_s)

    def close(self) -> None:
        self._client.close()


class InfluxV1Sink(_ClientSink):
    """InfluxDB 1.x ``/write`` with keep-alive connections."""

    api = 1

    def ensure_database(self) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x."""
        self._client.create_database()


class InfluxV2Sink(_ClientSink):
    """InfluxDB 2.x/3.x/Cloud (and line-protocol compatible servers) via influxdb-client."""

    api = 2


def make_sink(cfg: InfluxConfig) -> InfluxV1Sink | InfluxV2Sink:
    return InfluxV1Sink(cfg) if cfg.api == 1 else InfluxV2Sink(cfg)
