"""Typed bridge configuration: TOML file, then ``SERIAL_*`` environment, then flags.

One bridge process serves one port, so the per-port settings (``port``, ``device``,
``line``, ``baud``) are top-level keys: a systemd template instance sets them with
``SERIAL_PORT=/dev/%i`` and an environment file, all instances sharing one config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError, load_config
from common.mqtt import MqttSettings
from contract import canonical_field
from contract.topics import parse_reading_topic, reading_topic

ENV_PREFIX = "SERIAL"
FORMATS = ("json", "kv", "csv")
# CSV columns that are not reading fields: the node's timestamp and sequence number,
# and "_" for a column to skip.
CSV_EXTRA_COLUMNS = ("ts", "seq", "_")


def _canonical_or_error(name: str, where: str) -> str:
    canonical = canonical_field(name)
    if canonical is None:
        raise ValueError(f"{where}: {name!r} is not a reading field or alias")
    return canonical


@dataclass(frozen=True)
class ParseSettings:
    """How a line becomes a reading (section ``[parse]``)."""

    format: str = "json"
    # CSV only: the node's column order (contract names, aliases, ts, seq or _).
    csv_columns: tuple[str, ...] = ("temperature_c", "humidity_pct", "sound_db")
    csv_delimiter: str = ","
    # value = raw * scale + offset, per field (e.g. ADC counts -> dB). Keys may be aliases.
    scale: dict[str, float] = field(default_factory=dict)
    offset: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if len(self.csv_delimiter) != 1 or self.csv_delimiter in '\r\n"':
            raise ValueError("csv_delimiter must be one character (not a quote or newline)")
        columns = tuple(
            c.lower() if c.lower() in CSV_EXTRA_COLUMNS else _canonical_or_error(c, "csv_columns")
            for c in self.csv_columns
        )
        named = [c for c in columns if c != "_"]
        if len(named) != len(set(named)):
            raise ValueError(f"csv_columns name a field twice: {list(self.csv_columns)}")
        if not named:
            raise ValueError("csv_columns is empty")
        object.__setattr__(self, "csv_columns", columns)
        for name in ("scale", "offset"):
            table = {_canonical_or_error(k, name): float(v) for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, table)
        if any(v == 0 for v in self.scale.values()):
            raise ValueError("a scale of 0 would turn every value into the offset")


@dataclass(frozen=True)
class ReaderSettings:
    """The serial port side (section ``[reader]``)."""

    # A read returns after this long without data, so a stop request is seen promptly.
    read_timeout_s: float = 0.2
    # Longer lines are discarded up to the next newline and counted as too_long.
    max_line_bytes: int = 1024
    # After the port vanishes, reopen attempts wait reopen_min_s, doubling up to reopen_max_s.
    reopen_min_s: float = 0.5
    reopen_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.read_timeout_s <= 5:
            raise ValueError("read_timeout_s must be in (0, 5]")
        if not 64 <= self.max_line_bytes <= 65536:
            raise ValueError("max_line_bytes must be 64..65536")
        if not 0 < self.reopen_min_s <= self.reopen_max_s:
            raise ValueError("need 0 < reopen_min_s <= reopen_max_s")


@dataclass(frozen=True)
class OutboxSettings:
    """Readings waiting for the broker's acknowledgement (section ``[outbox]``)."""

    # When this many are unacknowledged (broker away), the newest reading is dropped.
    max_pending: int = 10_000
    # At shutdown, wait at most this long for the broker to acknowledge the outbox.
    flush_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if self.flush_timeout_s < 0:
            raise ValueError("flush_timeout_s must be >= 0")


@dataclass(frozen=True)
class StatsSettings:
    """Counters in the log and, optionally, on a Prometheus endpoint (section ``[stats]``)."""

    log_interval_s: float = 60.0
    metrics_host: str = "127.0.0.1"
    # 0 disables the endpoint.
    metrics_port: int = 0

    def __post_init__(self) -> None:
        if self.log_interval_s <= 0:
            raise ValueError("log_interval_s must be > 0")
        if not 0 <= self.metrics_port < 65536:
            raise ValueError("metrics_port must be 0..65535")


@dataclass(frozen=True)
class BridgeConfig:
    # A device path (/dev/ttyUSB0, /dev/serial/by-id/...) or a pyserial URL
    # (socket://host:port for a network serial server, loop:// for tests).
    port: str = ""
    device: str = ""
    line: str = ""
    baud: int = 9600
    log_level: str = "INFO"
    parse: ParseSettings = field(default_factory=ParseSettings)
    reader: ReaderSettings = field(default_factory=ReaderSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    stats: StatsSettings = field(default_factory=StatsSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)

    def __post_init__(self) -> None:
        if self.baud <= 0:
            raise ValueError(f"baud must be > 0, got {self.baud}")

    def check_complete(self) -> None:
        """Port, device and line have no useful default; the topic must be a valid one."""
        missing = [n for n in ("port", "device", "line") if not getattr(self, n)]
        if missing:
            names = ", ".join(f"--{n} / {ENV_PREFIX}_{n.upper()}" for n in missing)
            raise ConfigError(f"missing setting(s): {names}")
        try:
            parse_reading_topic(reading_topic(self.line, self.device))
        except ValueError as exc:
            raise ConfigError(f"line/device: {exc}") from None

    @property
    def client_id(self) -> str:
        """One MQTT session per port and host: two bridges must never share one."""
        if self.mqtt.client_id:
            return self.mqtt.client_id
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(self.port).name or self.port)
        return f"serial-{socket.gethostname()}-{name}"[:128]


def _pair(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIELD=NUMBER, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    node = parser.add_argument_group("node")
    node.add_argument("--port", help="device path or pyserial URL (SERIAL_PORT)")
    node.add_argument("--device", help="device name in the topic (SERIAL_DEVICE)")
    node.add_argument("--line", help="production line in the topic (SERIAL_LINE)")
    node.add_argument("--baud", type=int, help="baud rate (SERIAL_BAUD, default 9600)")
    fmt = parser.add_argument_group("format")
    fmt.add_argument("--format", choices=FORMATS, help="line format (default json)")
    fmt.add_argument("--csv-columns", help="CSV column order, e.g. seq,temperature_c,_,sound_db")
    fmt.add_argument("--csv-delimiter", help="CSV delimiter (default ,)")
    fmt.add_argument(
        "--scale", type=_pair, action="append", default=[], metavar="FIELD=X", help="repeatable"
    )
    fmt.add_argument(
        "--offset", type=_pair, action="append", default=[], metavar="FIELD=X", help="repeatable"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--config", help="TOML config file (e.g. config/serial_bridge.toml)")
    run.add_argument("--max-line-bytes", type=int)
    run.add_argument("--max-pending", type=int, help="outbox size (readings)")
    run.add_argument("--stats-interval", type=float, help="seconds between counter logs")
    run.add_argument("--metrics-port", type=int, help="Prometheus port (0 = off, the default)")
    run.add_argument("--log-level", help="DEBUG, INFO, ... (default: config or INFO)")
    broker = parser.add_argument_group("broker")
    broker.add_argument("--broker-host", help="default: SERIAL_MQTT_HOST or localhost")
    broker.add_argument("--broker-port", type=int, help="default: SERIAL_MQTT_PORT or 1883")
    broker.add_argument("--client-id", help="MQTT client id (default: serial-<host>-<port name>)")


def _replace(obj, **changes):
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return obj
    try:
        return dataclasses.replace(obj, **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def build_config(args: argparse.Namespace, env: dict[str, str] | None = None) -> BridgeConfig:
    """Config file, then ``SERIAL_*`` environment, then command-line flags (highest)."""
    cfg = load_config(BridgeConfig, args.config, ENV_PREFIX, os.environ if env is None else env)
    parse = cfg.parse
    columns = None
    if args.csv_columns is not None:
        columns = tuple(c.strip() for c in args.csv_columns.split(",") if c.strip())
    parse = _replace(
        parse,
        format=args.format,
        csv_columns=columns,
        csv_delimiter=args.csv_delimiter,
        scale={**parse.scale, **dict(args.scale)} if args.scale else None,
        offset={**parse.offset, **dict(args.offset)} if args.offset else None,
    )
    cfg = _replace(
        cfg,
        port=args.port,
        device=args.device,
        line=args.line,
        baud=args.baud,
        log_level=args.log_level,
        parse=parse,
        reader=_replace(cfg.reader, max_line_bytes=args.max_line_bytes),
        outbox=_replace(cfg.outbox, max_pending=args.max_pending),
        stats=_replace(
            cfg.stats, log_interval_s=args.stats_interval, metrics_port=args.metrics_port
        ),
        mqtt=_replace(
            cfg.mqtt, host=args.broker_host, port=args.broker_port, client_id=args.client_id
        ),
    )
    cfg.check_complete()
    return cfg
