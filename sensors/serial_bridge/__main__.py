"""Command line: ``python -m sensors.serial_bridge`` (one process per serial port).

Stops in order on SIGTERM/SIGINT: stop reading and close the port, wait (bounded)
for the broker to acknowledge the outbox, disconnect, log the counters and print one
summary line on stdout.  A second signal aborts the wait.  Exit status: 0, or 1 if
readings were still unacknowledged at exit, 2 for a configuration error, 130 if aborted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from common import sdnotify
from common.config import ConfigError, redacted
from common.logs import setup_logging
from contract import reading_topic
from sensors.cli_support import stop_on_signals
from sensors.publisher import ReadingPublisher
from sensors.serial_bridge.bridge import SerialBridge
from sensors.serial_bridge.config import BridgeConfig, add_arguments, build_config
from sensors.serial_bridge.stats import (
    BridgeStats,
    MetricsServer,
    StatsLogger,
    log_stats,
    summary_line,
)

log = logging.getLogger("sensors.serial_bridge")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sensors.serial_bridge",
        description="Bridge one serial sensor node to MQTT readings (QoS 1).",
    )
    add_arguments(parser)
    parser.add_argument(
        "--check-config", action="store_true", help="print the effective config and exit"
    )
    return parser


def run(cfg: BridgeConfig, stop: threading.Event) -> int:
    stats = BridgeStats()
    publisher = ReadingPublisher(cfg.mqtt, cfg.client_id, cfg.outbox.max_pending)
    metrics = None
    if cfg.stats.metrics_port:
        metrics = MetricsServer(stats, publisher, publisher.connected)
        metrics.start(cfg.stats.metrics_host, cfg.stats.metrics_port)
    log.info(
        "bridging %s -> %s via %s:%d (client id %s)",
        cfg.port,
        reading_topic(cfg.line, cfg.device),
        cfg.mqtt.host,
        cfg.mqtt.port,
        cfg.client_id,
    )
    # Do not wait for the broker: readings queue in the outbox until it answers.
    publisher.start(wait_connected_s=None)
    bridge = SerialBridge(cfg, publisher, stop, stats)
    stats_logger = StatsLogger(stats, publisher, cfg.stats.log_interval_s).start()
    # Under systemd (Type=notify, WatchdogSec=): ready once reading can start; the
    # watchdog is fed only while the read loop turns. Outside systemd: no-ops.
    watchdog = sdnotify.Watchdog(bridge.alive)
    watchdog.start()
    sdnotify.ready(f"reading {cfg.port}")
    try:
        bridge.run()
    finally:
        watchdog.stop()
        stats_logger.stop()
        sdnotify.stopping(f"flushing {publisher.pending} readings")
        log.info(
            "stopping: waiting up to %.0f s for the broker to acknowledge %d readings",
            cfg.outbox.flush_timeout_s,
            publisher.pending,
        )
        publisher.stop(cfg.outbox.flush_timeout_s)
        if metrics is not None:
            metrics.stop()
        log_stats(stats, publisher, "final counters")
        sys.stdout.write(summary_line(stats, publisher))
        sys.stdout.flush()
    return 1 if publisher.pending else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = build_config(args)
    except ConfigError as exc:
        log.error("config: %s", exc)
        return 2
    setup_logging(cfg.log_level)
    if args.check_config:
        sys.stdout.write(f"{redacted(cfg)}\n")
        return 0
    try:
        with stop_on_signals() as stop:
            return run(cfg, stop)
    except KeyboardInterrupt:  # a second signal: do not wait for the broker any longer
        log.warning("aborted: readings still in the outbox are lost")
        return 130
    except (ConfigError, OSError) as exc:  # unreadable password file, metrics port taken
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
