"""The scoring thread: collect a micro-batch, run the core's stages over it, send its outbox.

One sklearn call per batch, never per message: a forest costs about the same for
1 row as for 100, so batching is what makes the gateway keep up.  The stages
(:mod:`gateway.stages`) are built by the app and passed in; this thread owns only the
loop: collecting, the once-a-second deadman and the drift check, sending, its
heartbeat, and stopping the gateway when a batch fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.config import PipelineConfig
from gateway.inbox import Inbox
from gateway.intake import Message
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, Sender
from gateway.stages.chain import Chain
from model.scorer import Scorer

log = logging.getLogger(__name__)

DEADMAN_INTERVAL_S = 1.0


class Processor(threading.Thread):
    def __init__(
        self,
        cfg: PipelineConfig,
        inbox: Inbox[Message],
        scorer: Callable[[], Scorer],
        chain: Chain,
        sender: Sender,
        metrics: GatewayMetrics,
        on_fatal: Callable[[BaseException], None],
    ):
        super().__init__(name="scorer", daemon=True)
        self._cfg = cfg
        self._inbox = inbox
        self._scorer = scorer
        self._chain = chain
        self._sender = sender
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._next_deadman = 0.0
        self.heartbeat = time.monotonic()
        # Messages taken from the inbox and not yet handed to the writer (memory bound).
        self.in_hand = 0
        self._stopping = threading.Event()

    def stop(self, timeout_s: float) -> None:
        """Finish what is already in the inbox, then end."""
        self._stopping.set()
        self.join(timeout_s)

    def _collect(self) -> list[Message]:
        pc = self._cfg
        return self._inbox.take(pc.batch_max, pc.batch_max_wait_ms / 1000, idle_wait_s=0.1)

    def run(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            messages = self._collect()
            self.in_hand = len(messages)
            if not messages and self._stopping.is_set():
                return
            try:
                self.process(messages)
            except Exception as exc:
                # A bug must not silently stall the flow: stop the gateway so the
                # supervisor restarts it; the batch is unacked and gets redelivered.
                log.exception("failed to process a batch of %d messages", len(messages))
                self._on_fatal(exc)
                return
            self.in_hand = 0
            writer = self._sender.writer
            self._metrics.set_depths(self._inbox.qsize(), writer.depth, writer.unacked)

    def process(self, messages: list[Message]) -> Outbox:
        """One turn: the stages over ``messages`` (maybe none), the periodic checks, then
        send: MQTT first, then one write batch."""
        scorer = self._scorer()  # one model per batch, even if a reload happens meanwhile
        now = time.monotonic()
        out = self._chain.batch(messages, scorer, now) if messages else Outbox()
        if now >= self._next_deadman:
            self._next_deadman = now + DEADMAN_INTERVAL_S
            self._chain.deadman(scorer.version, now, out)
        self._chain.check_drift(scorer.version, now, out)
        self._sender.send(out)
        return out
