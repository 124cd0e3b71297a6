"""The bridge's counters: logged periodically and at exit, optionally on Prometheus.

One :class:`BridgeStats` is the single source of truth; the Prometheus endpoint
reads it at scrape time instead of keeping a second set of counters.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from common import sdnotify
from contract.reading import REASONS
from sensors.serial_bridge.parsers import PARSE_REASONS

log = logging.getLogger(__name__)

# Line-level reasons: bytes that never became text, or a line cut off by an unplug.
LINE_REASONS = ("too_long", "not_text", "partial")
ALL_REASONS = LINE_REASONS + PARSE_REASONS + tuple(r for r in REASONS if r not in PARSE_REASONS)


class Outbox(Protocol):
    """What the stats read from the publisher (``sensors.publisher.ReadingPublisher``)."""

    published: int
    refused: int

    @property
    def pending(self) -> int: ...


@dataclass
class BridgeStats:
    bytes_read: int = 0
    lines: int = 0  # non-blank lines, including over-long and invalid ones
    comments: int = 0  # lines starting with '#': node messages, not readings
    readings: int = 0  # valid readings
    queued: int = 0  # handed to the outbox
    dropped: int = 0  # valid, but the outbox was full (broker away too long)
    invalid: Counter[str] = field(default_factory=Counter)
    opens: int = 0
    open_failures: int = 0  # attempts while the device was absent (or not a serial port)
    port_lost: int = 0
    port_open: bool = False

    @property
    def reopens(self) -> int:
        return max(0, self.opens - 1)


def _pairs(counts: Counter[str]) -> str:
    return ",".join(f"{k}:{n}" for k, n in sorted(counts.items()) if n) or "-"


def summary_line(stats: BridgeStats, outbox: Outbox | None) -> str:
    """One machine-readable line (stdout at exit) for scripts and tests."""
    published = outbox.published if outbox else 0
    refused = outbox.refused if outbox else 0
    pending = outbox.pending if outbox else 0
    return (
        f"lines={stats.lines} readings={stats.readings} queued={stats.queued} "
        f"published={published} dropped={stats.dropped} refused={refused} "
        f"unacknowledged={pending} invalid={sum(stats.invalid.values())} "
        f"comments={stats.comments} reopens={stats.reopens} port_lost={stats.port_lost} "
        f"reasons={_pairs(stats.invalid)}\n"
    )


def log_stats(stats: BridgeStats, outbox: Outbox | None, prefix: str = "counters") -> None:
    log.info("%s: %s", prefix, summary_line(stats, outbox).strip())


class StatsLogger:
    """Logs the counters every ``interval_s`` on its own thread, until stopped."""

    def __init__(self, stats: BridgeStats, outbox: Outbox | None, interval_s: float):
        self._stats = stats
        self._outbox = outbox
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serial-stats", daemon=True)

    def start(self) -> StatsLogger:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            log_stats(self._stats, self._outbox)
            # `systemctl status factory-serial@...` shows the latest counters.
            sdnotify.status(summary_line(self._stats, self._outbox).strip())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class _StatsCollector(Collector):
    def __init__(self, stats: BridgeStats, outbox: Outbox | None, connected=None):
        self._stats = stats
        self._outbox = outbox
        self._connected = connected

    def collect(self) -> Iterator:
        s = self._stats
        for name, doc, value in (
            ("bytes_read", "Bytes read from the serial port", s.bytes_read),
            ("lines", "Non-blank lines read, including invalid ones", s.lines),
            ("comments", "Comment lines ('#') from the node", s.comments),
            ("readings", "Valid readings parsed", s.readings),
            ("readings_queued", "Readings handed to the MQTT outbox", s.queued),
            ("readings_dropped", "Valid readings dropped: outbox full", s.dropped),
            ("port_reopens", "Times the port was reopened after being lost", s.reopens),
            ("port_lost", "Times the port vanished or failed", s.port_lost),
            ("port_open_failures", "Failed attempts to open the port", s.open_failures),
        ):
            yield CounterMetricFamily(f"serial_bridge_{name}", doc, value=value)
        invalid = CounterMetricFamily(
            "serial_bridge_lines_invalid", "Lines not published, by reason", labels=["reason"]
        )
        for reason in ALL_REASONS:
            invalid.add_metric([reason], s.invalid.get(reason, 0))
        yield invalid
        yield GaugeMetricFamily("serial_bridge_port_open", "1 while the port is open", s.port_open)
        if self._outbox is not None:
            yield CounterMetricFamily(
                "serial_bridge_readings_published",
                "Readings acknowledged by the broker",
                value=self._outbox.published,
            )
            yield GaugeMetricFamily(
                "serial_bridge_outbox_pending",
                "Readings waiting for the broker's acknowledgement",
                self._outbox.pending,
            )
        if self._connected is not None:
            yield GaugeMetricFamily(
                "serial_bridge_broker_connected", "1 while connected", self._connected.is_set()
            )


class MetricsServer:
    """Prometheus exposition of the counters on ``host:port`` (off unless configured)."""

    def __init__(self, stats: BridgeStats, outbox: Outbox | None, connected=None):
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, outbox, connected))
        self._server = None

    def start(self, host: str, port: int) -> MetricsServer:
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        log.info("metrics on http://%s:%d/metrics", host, port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
