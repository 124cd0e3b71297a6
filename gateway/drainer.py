"""The spool drainer thread: writes spooled batches to InfluxDB, oldest first.

It runs beside the writer so that a slow or hung InfluxDB holds up only the drain,
never the intake: while the spool holds anything the writer just appends to it.
A batch leaves the spool only once InfluxDB took it (or refused points of it, which
are dead-lettered like any refused point); a failed write is retried with capped
exponential backoff.  Spooled batches older than ``spool.max_age_s`` are dropped and
counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common.logs import RateLimitedLog
from gateway.config import InfluxConfig
from gateway.metrics import GatewayMetrics
from gateway.sinks import WriteError
from gateway.spool import Spool
from gateway.store import Points, Store

log = logging.getLogger(__name__)

_EXPIRE_EVERY_S = 10.0


class Drainer(threading.Thread):
    def __init__(
        self,
        spool: Spool,
        store: Store,
        cfg: InfluxConfig,
        metrics: GatewayMetrics,
        on_fatal: Callable[[BaseException], None],
    ):
        super().__init__(name="spool-drainer", daemon=True)
        self._spool = spool
        self._store = store
        self._cfg = cfg
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._ratelog = RateLimitedLog(log, 10.0)

    def wake(self) -> None:
        """Something was spooled."""
        self._wake.set()

    def stop(self, timeout_s: float) -> None:
        """Stop draining; what is still spooled stays on disk for the next start."""
        self._stopping.set()
        self._wake.set()
        self.join(timeout_s)

    def run(self) -> None:
        try:
            self._drain_until_stopped()
        except Exception as exc:
            log.exception("spool drainer failed")
            self._on_fatal(exc)

    def _drain_until_stopped(self) -> None:
        delay = self._cfg.retry_min_s
        next_expiry = 0.0
        while not self._stopping.is_set():
            if time.monotonic() >= next_expiry:
                self._expire()
                next_expiry = time.monotonic() + _EXPIRE_EVERY_S
            if self._spool.empty:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            batches = self._spool.oldest(self._cfg.batch_max_points)
            points = Points.merge([b.points for b in batches])
            try:
                self._store.write(points, self._cfg.timeout_s)
            except WriteError as exc:
                self._ratelog.warning("drain", "spool drain: %s", exc)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._cfg.retry_max_s)
                continue
            delay = self._cfg.retry_min_s
            self._spool.delete(batches)
            self._metrics.count_drained(len(points.lines), self._spool)
            if self._spool.empty:
                log.info("spool drained; writing to InfluxDB directly again")

    def _expire(self) -> None:
        expired = self._spool.expire()
        if expired:
            log.error("spool: dropped %d points older than the spool's age limit", expired)
            self._metrics.count_spool_expired(expired, self._spool)
