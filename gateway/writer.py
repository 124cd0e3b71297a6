"""The InfluxDB writer thread: large line-protocol batches, retries, late acks.

Scored batches arrive on a bounded queue (full queue = back-pressure on scoring).
The writer merges them into writes of up to ``batch_max_points`` points or
``flush_interval_ms``, whichever comes first, and acknowledges the MQTT messages of
a batch only after InfluxDB accepted it.  While InfluxDB is down it retries with
capped exponential backoff.  With a spool configured (the default) a batch that
InfluxDB cannot take goes to the on-disk spool instead and is acknowledged once
committed there; without one, nothing is acknowledged until InfluxDB takes it, so
the broker keeps the readings and flow control stops the intake.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.logs import RateLimitedLog
from gateway.config import InfluxConfig
from gateway.metrics import GatewayMetrics
from gateway.sinks import Sink, WriteError
from gateway.spool import Spool

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WriteBatch:
    lines: list[str]
    # (session, mid, qos) of every MQTT message the batch covers, rejected ones included, so
    # acknowledgements go out in the order the messages arrived.
    acks: list[tuple[Any, int, int]]
    readings: int = 0


class Writer(threading.Thread):
    def __init__(
        self,
        sink: Sink,
        cfg: InfluxConfig,
        metrics: GatewayMetrics,
        ack: Callable[[list[tuple[Any, int, int]]], None],
        max_batches: int,
        health_point: Callable[[], str] | None = None,
        health_interval_s: float = 0.0,
        spool: Spool | None = None,
    ):
        super().__init__(name="influx-writer", daemon=True)
        self._sink = sink
        self._cfg = cfg
        self._metrics = metrics
        self._ack = ack
        self._queue: queue.Queue[WriteBatch] = queue.Queue(maxsize=max_batches)
        self._health_point = health_point
        self._health_interval = health_interval_s
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._ratelog = RateLimitedLog(log, 10.0)
        self.unacked = 0
        self._unacked_lock = threading.Lock()
        self._spool = spool
        # Updated every loop and every retry wait: the watchdog's proof of life.
        self.heartbeat = time.monotonic()
        self._next_drain = 0.0
        self._drain_delay = cfg.retry_min_s

    def submit(self, batch: WriteBatch) -> None:
        with self._unacked_lock:
            self.unacked += len(batch.acks)
        self._queue.put(batch)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        return self._queue.full()

    def stop(self, timeout_s: float) -> bool:
        """Flush what is queued; give up after ``timeout_s`` (unflushed = not acked)."""
        self._stopping.set()
        self.join(timeout_s)
        if self.is_alive():
            self._abandon.set()
            self.join(5.0)
            return False
        return True

    def _collect(self) -> list[WriteBatch]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batches = [first]
        points = len(first.lines)
        deadline = time.monotonic() + self._cfg.flush_interval_ms / 1000
        while points < self._cfg.batch_max_points:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self._stopping.is_set():
                break
            try:
                if remaining > 0:
                    nxt = self._queue.get(timeout=remaining)
                else:  # stopping: drain without waiting
                    nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            batches.append(nxt)
            points += len(nxt.lines)
        return batches

    def run(self) -> None:
        next_health = time.monotonic() + self._health_interval
        while True:
            self.heartbeat = time.monotonic()
            batches = self._collect()
            lines = [ln for b in batches for ln in b.lines]
            if self._health_point and self._health_interval and time.monotonic() >= next_health:
                lines.append(self._health_point())
                next_health = time.monotonic() + self._health_interval
            readings = sum(b.readings for b in batches)
            if lines and not self._store(lines, readings):
                return  # abandoned at shutdown: nothing acked, the broker redelivers
            for b in batches:
                self._ack(b.acks)
                with self._unacked_lock:
                    self.unacked -= len(b.acks)
            if self._spool is not None and not self._spool.empty:
                self._maybe_drain()
            if self._stopping.is_set() and self._queue.empty() and not batches:
                return

    def _store(self, lines: list[str], readings: int) -> bool:
        """Make a batch durable: InfluxDB, else the spool, else wait (no ack)."""
        if self._spool is None:
            return self._write_retrying(lines, readings)
        # While the spool holds anything, new batches queue behind it so that
        # InfluxDB receives everything in order.
        if self._spool.empty and self._try_write(lines, readings):
            return True
        delay = self._cfg.retry_min_s
        while not self._spool.append(lines, readings):
            self._metrics.count_spool_full()
            self._ratelog.warning(
                "spool-full",
                "spool full (%d bytes); not acknowledging until InfluxDB drains it",
                self._spool.bytes,
            )
            self._maybe_drain(force=True)
            self.heartbeat = time.monotonic()
            if self._abandon.wait(delay):
                return False
            delay = min(delay * 2, self._cfg.retry_max_s)
        self._metrics.count_spooled(len(lines), self._spool)
        return True

    def _maybe_drain(self, force: bool = False) -> None:
        assert self._spool is not None
        now = time.monotonic()
        if not force and now < self._next_drain:
            return
        expired = self._spool.expire()
        if expired:
            log.error("spool: dropped %d points older than the spool's age limit", expired)
            self._metrics.count_spool_expired(expired, self._spool)
        # Drain for a bounded time so fresh batches keep being taken from the queue.
        deadline = now + 1.0
        while not self._spool.empty and time.monotonic() < deadline:
            batches = self._spool.oldest(self._cfg.batch_max_points)
            lines = [ln for b in batches for ln in b.lines]
            if not self._try_write(lines, sum(b.readings for b in batches)):
                self._next_drain = time.monotonic() + self._drain_delay
                self._drain_delay = min(self._drain_delay * 2, self._cfg.retry_max_s)
                return
            self._spool.delete(batches)
            self._metrics.count_drained(len(lines), self._spool)
        self._drain_delay = self._cfg.retry_min_s
        if self._spool.empty:
            log.info("spool drained; writing to InfluxDB directly again")

    def _try_write(self, lines: list[str], readings: int) -> bool:
        """One write attempt. True when done (stored, or refused for good)."""
        started = time.perf_counter()
        try:
            self._sink.write(lines)
        except WriteError as exc:
            self._metrics.count_write_error(exc.retryable)
            if not exc.retryable:
                log.error("InfluxDB refused points (not retried): %s", exc)
                self._metrics.count_points_dropped(len(lines))
                return True
            self._ratelog.warning("write", "%s", exc)
            return False
        self._metrics.observe_write(len(lines), readings, time.perf_counter() - started)
        return True

    def _write_retrying(self, lines: list[str], readings: int) -> bool:
        """Without a spool: retry until written; False only when abandoned at shutdown."""
        delay = self._cfg.retry_min_s
        while not self._try_write(lines, readings):
            self.heartbeat = time.monotonic()
            if self._abandon.wait(delay):
                return False
            delay = min(delay * 2, self._cfg.retry_max_s)
        return True
