"""One sender thread per channel: sends due outbox rows, retries with backoff.

A channel that hangs or fails (a dead webhook) does not hold up the others.  Rows are
taken oldest-due first; a failed row waits for its backoff while others go ahead.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from notify.backoff import retry_delay
from notify.channels import Channel, Outcome
from notify.config import RetryConfig
from notify.metrics import NotifierMetrics
from notify.outbox import Outbox, Row
from notify.render import Rendered

log = logging.getLogger(__name__)

# With nothing due, look again at least this often (rows may be added by a digest).
_IDLE_POLL_S = 1.0


class ChannelWorker:
    def __init__(
        self,
        channel: Channel,
        outbox: Outbox,
        retry: RetryConfig,
        render: Callable[[Row], Rendered],
        metrics: NotifierMetrics,
        settled: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ):
        self.channel = channel
        self._outbox = outbox
        self._retry = retry
        self._render = render
        self._metrics = metrics
        self._settled = settled
        self._clock = clock
        self._rng = random.Random()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"send-{channel.name}", daemon=True)
        # Monotonic time of the last loop pass: the watchdog's sign of life.
        self.last_progress = time.monotonic()
        self.failed = False

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout_s: float) -> bool:
        """True if the thread ended; False: a send is still in flight (abandoned: the
        row stays pending and is sent again, with the same key, after the restart)."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.last_progress = time.monotonic()
                self._wake.clear()
                rows = self._outbox.due(self.channel.name, self._clock())
                for row in rows:
                    if self._stop.is_set():
                        return
                    self._deliver(row)
                    self.last_progress = time.monotonic()
                if not rows:
                    self._wake.wait(self._idle_wait())
        except Exception:
            self.failed = True
            log.exception("sender for channel %s failed", self.channel.name)

    def _idle_wait(self) -> float:
        next_due = self._outbox.next_due(self.channel.name)
        if next_due is None:
            return _IDLE_POLL_S
        return min(_IDLE_POLL_S, max(0.0, next_due - self._clock()))

    def _deliver(self, row: Row) -> None:
        name = self.channel.name
        now = self._clock()
        if now - row.created >= self._retry.max_age_s:
            self._give_up(row, now, "older than retry.max_age_s before sending", attempted=False)
            return
        started = time.monotonic()
        result = self.channel.send(self._render(row), row.recipient, row.from_addr)
        self._metrics.send_seconds.labels(name).observe(time.monotonic() - started)
        now = self._clock()
        if result.outcome is Outcome.DELIVERED:
            self._outbox.mark_delivered(row, now)
            self._metrics.delivered.labels(name).inc()
            log.info("delivered %s via %s%s", row.key, name, _to(row))
            self._settled()
            return
        self._metrics.failures.labels(name, result.outcome.value).inc()
        if result.outcome is Outcome.PERMANENT:
            self._give_up(row, now, result.detail)
            return
        if now - row.created >= self._retry.max_age_s:
            self._give_up(row, now, f"not delivered within retry.max_age_s ({result.detail})")
            return
        delay = retry_delay(self._retry, row.attempts + 1, self._rng)
        self._outbox.retry_later(row, now + delay, result.detail)
        self._metrics.retries.labels(name).inc()
        log.warning(
            "%s via %s%s failed (attempt %d: %s); next try in %.1fs",
            row.key, name, _to(row), row.attempts + 1, result.detail, delay,
        )  # fmt: skip

    def _give_up(self, row: Row, now: float, why: str, attempted: bool = True) -> None:
        self._outbox.mark_dead(row, now, why, attempted)
        self._metrics.dead.labels(self.channel.name).inc()
        log.error(
            "gave up on %s via %s%s after %d attempts: %s (kept in the outbox as dead)",
            row.key, self.channel.name, _to(row), row.attempts + int(attempted), why,
        )  # fmt: skip
        self._settled()


def _to(row: Row) -> str:
    return f" to {row.recipient}" if row.recipient else ""
