"""Pieces shared by the sensors CLIs: broker settings and clean stop on signals."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from common.config import load_config
from common.mqtt import MqttSettings

ENV_PREFIX = "SENSORS"


@dataclass(frozen=True)
class SensorsConfig:
    """``config/sensors.toml``; every key can be overridden by ``SENSORS_MQTT_<KEY>``."""

    mqtt: MqttSettings = field(default_factory=MqttSettings)


def add_broker_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument("--config", help="TOML file with an [mqtt] section (optional)")
    group.add_argument("--broker-host", help="default: SENSORS_MQTT_HOST or localhost")
    group.add_argument("--broker-port", type=int, help="default: SENSORS_MQTT_PORT or 1883")
    group.add_argument("--client-id", help="MQTT client id (default: derived from the pid)")
    parser.add_argument("--log-level", help="DEBUG, INFO, ... (default: LOG_LEVEL or INFO)")


def broker_settings(args: argparse.Namespace) -> MqttSettings:
    """Config file, then environment, then command-line flags (highest priority)."""
    settings = load_config(SensorsConfig, args.config, ENV_PREFIX).mqtt
    overrides: dict[str, object] = {}
    if args.broker_host:
        overrides["host"] = args.broker_host
    if args.broker_port is not None:
        overrides["port"] = args.broker_port
    return dataclasses.replace(settings, **overrides) if overrides else settings


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set the event so loops finish and flush; a second one aborts."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
