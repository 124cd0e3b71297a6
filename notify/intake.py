"""From an alert message to committed outbox rows (the notifier's one decision point).

``AlertIntake.handle`` runs on the MQTT network thread for each message, in order:
parse -> route -> rate limit -> commit to the outbox.  Only when it returns does the
subscriber acknowledge the message; if it raises, the message stays unacknowledged
and the broker redelivers it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from common.logs import RateLimitedLog
from contract.alerting import FIRING, idempotency_key
from notify.alerts import Alert, BadAlert, parse_alert
from notify.metrics import NotifierMetrics
from notify.outbox import Outbox
from notify.ratelimit import RateLimiter
from notify.routing import Router, Target

log = logging.getLogger(__name__)


class AlertIntake:
    def __init__(
        self,
        outbox: Outbox,
        router: Router,
        limiter: RateLimiter,
        metrics: NotifierMetrics,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ):
        self._outbox = outbox
        self._router = router
        self._limiter = limiter
        self._metrics = metrics
        self._wake = wake
        self._clock = clock
        self._bad_log = RateLimitedLog(log)

    def handle(self, topic: str, payload: bytes) -> None:
        self._metrics.received.inc()
        try:
            alert = parse_alert(payload)
        except BadAlert as bad:
            # It can never become valid: count, say why, and let it be acknowledged.
            self._metrics.bad_input.labels(bad.reason).inc()
            self._bad_log.warning(bad.reason, "dropped alert message on %s: %s", topic, bad.detail)
            return
        if self._outbox.known(alert.key):
            self._metrics.duplicates.inc()
            log.debug("%s already queued; not again", alert.key)
            return
        targets = self._router.targets(alert)
        if not targets:
            self._metrics.unrouted.inc()
            return
        if not alert.limited:
            self._follow_the_firing(alert, targets)
            return
        hold_until = None
        decision = self._limiter.decide(alert.line, alert.device)
        if decision.hold:
            hold_until = decision.window_end
            self._metrics.rate_limited.labels(decision.reason).inc()
        added = self._outbox.enqueue(alert, targets, hold_until, self._clock())
        self._metrics.queued.inc(added)
        if hold_until is None:
            self._limiter.record(alert.line, alert.device)
            self._wake()

    def _follow_the_firing(self, alert: Alert, targets: list[Target]) -> None:
        """Resolutions and acknowledgements are never limited, but one whose alert reached
        a person only inside a digest goes into that person's next digest too: a storm's
        end must not become a storm of "resolved" messages."""
        held = self._outbox.held_targets(idempotency_key(alert.alert_id, FIRING))
        digest = [t for t in targets if (t.channel, t.recipient) in held]
        now = self._clock()
        added = 0
        if digest:
            _, window_end = self._limiter.window(now)
            added += self._outbox.enqueue(alert, digest, window_end, now)
            self._metrics.rate_limited.labels("follows_digest").inc()
        alone = [t for t in targets if (t.channel, t.recipient) not in held]
        if alone:
            added += self._outbox.enqueue(alert, alone, None, now)
            self._wake()
        self._metrics.queued.inc(added)


class OutboxGate:
    """The subscriber reads the next message only while the outbox has room.

    When ``open_count`` (pending + held) reaches ``max_pending`` the MQTT network thread
    stops reading: the broker keeps the rest in our persistent session (nothing is
    lost, nothing acknowledged), and TCP flow control holds it back.
    """

    def __init__(self, outbox: Outbox, max_pending: int, metrics: NotifierMetrics):
        self._outbox = outbox
        self._max = max_pending
        self._metrics = metrics
        self._room = threading.Event()
        self._closed = False
        self._warned = False

    def _allows(self) -> bool:
        return not self._closed and self._outbox.open_count < self._max

    def room(self, timeout_s: float) -> bool:
        if self._allows():
            return True
        self._room.clear()
        if self._allows():
            return True
        if not self._closed and not self._warned:
            log.warning(
                "outbox full (%d notifications open, bound %d): intake paused, the broker keeps"
                " new alerts until there is room",
                self._outbox.open_count,
                self._max,
            )
            self._warned = True
        self._metrics.intake_paused.set(1)
        self._room.wait(timeout_s)
        if self._allows():
            self._resumed()
            return True
        return False

    def _resumed(self) -> None:
        if self._warned:
            log.info("outbox has room again: intake resumed")
            self._warned = False
        self._metrics.intake_paused.set(0)

    def settled(self) -> None:
        self._room.set()

    def close(self) -> None:
        """Read nothing more (shutdown)."""
        self._closed = True
