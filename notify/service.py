"""The notification service: subscriber -> intake -> outbox -> channel senders.

Threads: the MQTT network thread (intake, commits, acks), one sender per channel, and
a housekeeper that folds held notifications into digests when their window ends,
prunes old rows and updates the gauges.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

from notify.channels import Channel, make_channels
from notify.config import NotifierConfig
from notify.delivery import ChannelWorker
from notify.intake import AlertIntake, OutboxGate
from notify.metrics import NotifierMetrics
from notify.outbox import Outbox
from notify.ratelimit import RateLimiter
from notify.render import render
from notify.routing import Router
from notify.subscriber import AlertSubscriber

log = logging.getLogger(__name__)

# Housekeeping period: digests go out at most this late after their window ends.
_HOUSEKEEPING_S = 0.5
_PRUNE_EVERY_S = 600.0
# A sender that shows no sign of life for this long (beyond its send timeout) is stuck.
_STUCK_MARGIN_S = 60.0


class NotificationService:
    def __init__(self, cfg: NotifierConfig, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self._clock = clock
        self.stop_requested = threading.Event()
        self.failed = threading.Event()
        self.channels: dict[str, Channel] = make_channels(cfg)
        self.metrics = NotifierMetrics(list(self.channels))
        self.outbox = Outbox(cfg.outbox.path)
        self._drop_rows_of_removed_channels()
        self.limiter = RateLimiter(cfg.rate_limit, clock)
        window_start, _ = self.limiter.window()
        self.limiter.seed(self.outbox.sent_since(window_start))
        self.gate = OutboxGate(self.outbox, cfg.outbox.max_pending, self.metrics)
        render_for = functools.partial(
            render, window_s=cfg.rate_limit.window_s, page_url=cfg.page_url
        )
        self.workers = {
            name: ChannelWorker(
                channel, self.outbox, cfg.retry, render_for, self.metrics, self.gate.settled,
                clock,
            )
            for name, channel in self.channels.items()
        }  # fmt: skip
        self.intake = AlertIntake(
            self.outbox, Router(cfg), self.limiter, self.metrics, self._wake_all, clock
        )
        self.subscriber = AlertSubscriber(
            cfg.mqtt, self.intake, self.gate, self.metrics, self._fail
        )
        self._housekeeper = threading.Thread(target=self._housekeep, name="housekeeper")
        self._last_housekeeping = time.monotonic()
        if not cfg.route:
            log.warning("no [[route]] configured: alerts are received but nobody is notified")

    def _drop_rows_of_removed_channels(self) -> None:
        dropped = self.outbox.drop_channels_except(set(self.channels), self._clock())
        if dropped:
            log.warning(
                "%d queued notifications were for channels no longer enabled: marked dead",
                dropped,
            )

    def _wake_all(self) -> None:
        for worker in self.workers.values():
            worker.wake()

    def _fail(self, exc: BaseException) -> None:
        self.failed.set()
        self.stop_requested.set()

    def start(self) -> None:
        self.metrics.serve(self.cfg.metrics.host, self.cfg.metrics.port)
        self._update_gauges()
        for worker in self.workers.values():
            worker.start()
        self._housekeeper.start()
        self.subscriber.start()
        log.info(
            "started: channels %s, %d routes, outbox %s (%d open)",
            ", ".join(self.channels) or "none",
            len(self.cfg.route),
            self.cfg.outbox.path,
            self.outbox.open_count,
        )

    def _housekeep(self) -> None:
        last_prune = -_PRUNE_EVERY_S
        while not self.stop_requested.wait(_HOUSEKEEPING_S):
            self._last_housekeeping = time.monotonic()
            try:
                now = self._clock()
                digests = self.outbox.fold_held(now)
                for row in digests:
                    self.metrics.digests.labels(row.channel).inc()
                    log.info("digest %s for %s%s queued", row.key, row.channel,
                             f" to {row.recipient}" if row.recipient else "")  # fmt: skip
                if digests:
                    self._wake_all()
                    self.gate.settled()  # folding frees room
                if time.monotonic() - last_prune >= _PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    ob = self.cfg.outbox
                    pruned = self.outbox.prune(now - ob.keep_delivered_s, now - ob.keep_dead_s)
                    if pruned:
                        log.info("pruned %d settled notifications", pruned)
                self._update_gauges()
            except Exception:
                log.exception("housekeeping failed")
                self._fail(RuntimeError("housekeeping failed"))
                return

    def _update_gauges(self) -> None:
        counts = self.outbox.counts()
        self.metrics.pending.set(counts["pending"])
        self.metrics.held.set(counts["held"])
        self.metrics.dead_rows.set(counts["dead"])

    def healthy(self) -> bool:
        """For the systemd watchdog: housekeeping and every sender make progress."""
        now = time.monotonic()
        if now - self._last_housekeeping > _STUCK_MARGIN_S:
            return False
        for worker in self.workers.values():
            if worker.failed:
                return False
            if now - worker.last_progress > worker.channel.timeout_s + _STUCK_MARGIN_S:
                return False
        return True

    def stop(self) -> None:
        """Ordered: stop intake, let in-flight sends finish (or abandon them), close the
        outbox, disconnect."""
        self.stop_requested.set()
        self.subscriber.stop_accepting()
        self.gate.close()
        self.gate.settled()  # release a network thread waiting for room
        for worker in self.workers.values():
            worker.stop()
        for worker in self.workers.values():
            if not worker.join(worker.channel.timeout_s + 1.0):
                log.warning(
                    "send via %s still in flight at shutdown: abandoned (it stays queued and is"
                    " sent again, with the same idempotency key, after the restart)",
                    worker.channel.name,
                )
        if self._housekeeper.is_alive():
            self._housekeeper.join(5.0)
        for channel in self.channels.values():
            channel.close()
        self.subscriber.close()
        self.outbox.close()
        self.metrics.close()
        log.info("stopped")
