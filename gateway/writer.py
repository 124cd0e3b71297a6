"""The InfluxDB writer thread: large line-protocol batches, retries, late acks.

Scored batches arrive on a bounded queue (full queue = back-pressure on scoring).
The writer merges them into writes of up to ``batch_max_points`` points or
``flush_interval_ms``, whichever comes first, and acknowledges the MQTT messages of
a batch only after InfluxDB accepted it.  While InfluxDB is down it retries with
capped exponential backoff and acknowledges nothing, so the broker keeps the
readings and flow control stops the intake.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.logs import RateLimitedLog
from gateway.config import InfluxConfig
from gateway.metrics import GatewayMetrics
from gateway.sinks import Sink, WriteError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WriteBatch:
    lines: list[str]
    # (mid, qos) of every MQTT message the batch covers, rejected ones included, so
    # acknowledgements go out in the order the messages arrived.
    acks: list[tuple[int, int]]
    readings: int = 0


class Writer(threading.Thread):
    def __init__(
        self,
        sink: Sink,
        cfg: InfluxConfig,
        metrics: GatewayMetrics,
        ack: Callable[[list[tuple[int, int]]], None],
        max_batches: int,
        health_point: Callable[[], str] | None = None,
        health_interval_s: float = 0.0,
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

    def submit(self, batch: WriteBatch) -> None:
        with self._unacked_lock:
            self.unacked += len(batch.acks)
        self._queue.put(batch)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

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
            batches = self._collect()
            lines = [ln for b in batches for ln in b.lines]
            if self._health_point and self._health_interval and time.monotonic() >= next_health:
                lines.append(self._health_point())
                next_health = time.monotonic() + self._health_interval
            readings = sum(b.readings for b in batches)
            if lines and not self._write(lines, readings):
                return  # abandoned at shutdown: nothing acked, the broker redelivers
            for b in batches:
                self._ack(b.acks)
                with self._unacked_lock:
                    self.unacked -= len(b.acks)
            if self._stopping.is_set() and self._queue.empty() and not batches:
                return

    def _write(self, lines: list[str], readings: int) -> bool:
        """Write with retries; False only when abandoned during shutdown."""
        delay = self._cfg.retry_min_s
        while True:
            started = time.perf_counter()
            try:
                self._sink.write(lines)
            except WriteError as exc:
                self._metrics.count_write_error(exc.retryable)
                if not exc.retryable:
                    log.error("InfluxDB refused points (not retried): %s", exc)
                    self._metrics.count_points_dropped(len(lines))
                    return True
                self._ratelog.warning("write", "%s; retrying in %.1fs", exc, delay)
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, self._cfg.retry_max_s)
                continue
            self._metrics.observe_write(len(lines), readings, time.perf_counter() - started)
            return True
