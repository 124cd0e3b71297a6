"""Wiring of the gateway's parts, and their ordered start and shutdown.

Threads: paho's network thread (intake), the scorer (pipeline), the InfluxDB writer,
the spool drainer, and the Prometheus HTTP server.  Shutdown order: stop accepting
messages, score what is already received, flush writes (which acknowledges them),
publish the retained ``offline`` status, disconnect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from contract import (
    ACK_SUBSCRIPTION,
    READING_SUBSCRIPTION,
    SILENCE_SUBSCRIPTION,
    STATE_SUBSCRIPTION,
    schema,
)
from contract.lineprotocol import encode_point
from gateway.cluster.coordinator import Coordinator
from gateway.config import GatewayConfig
from gateway.deadletters import DeadLetters
from gateway.drainer import Drainer
from gateway.flow import HeldLimit
from gateway.inbox import Inbox
from gateway.intake import Message, MqttIntake, ack_all
from gateway.metrics import GatewayMetrics
from gateway.model_reload import gateway_model_holder
from gateway.outbox import Sender
from gateway.pipeline import Processor
from gateway.sinks import InfluxV1Sink, Sink, WriteError, make_sink
from gateway.spool import Spool
from gateway.stages.chain import build_chain
from gateway.store import Store
from gateway.writer import Writer
from model.scorer import Scorer, load_scorer

log = logging.getLogger(__name__)


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        scorer_factory: Callable[[str], Scorer] = load_scorer,
        sink: Sink | None = None,
    ):
        self.cfg = cfg
        self.metrics = GatewayMetrics(cfg.id)
        # The model is loaded once per process; a reload swaps the holder's reference.
        self.model = gateway_model_holder(
            cfg.model.path, scorer_factory, self.metrics, cfg.model.watch_interval_s
        )
        scorer = self.model.current
        # Shadow mode: a second model scored on the same readings, never acted on.
        self.shadow = (
            gateway_model_holder(
                cfg.model.shadow_path, scorer_factory, self.metrics, 0, track=False
            )
            if cfg.model.shadow_path
            else None
        )
        log.info(
            "model %s loaded (features %s, threshold %.3f)",
            scorer.version,
            ",".join(scorer.features),
            scorer.threshold,
        )
        self._sink = sink or make_sink(cfg.influx)
        self._spool = (
            Spool(cfg.spool.path, cfg.spool.max_bytes, cfg.spool.max_age_s)
            if cfg.spool.path
            else None
        )
        if self._spool is not None:
            self.metrics.count_spooled(0, self._spool)
        # The memory bound (see gateway.flow).  The inbox is smaller: when the scorer
        # falls behind, the network thread waits for it and then reads in larger bursts,
        # which costs less CPU per reading (measured at 12,000/s: 44 % of a core, not 51 %).
        held = cfg.pipeline.max_held_readings
        self._inbox: Inbox[Message] = Inbox(capacity=min(held, 2 * cfg.mqtt.receive_maximum))
        self.held_limit = HeldLimit(held, self._held)
        self.metrics.held.set_function(self._held)
        self.metrics.held_peak.set_function(lambda: self.held_limit.peak)
        self.metrics.held_limit.set(self.held_limit.limit)
        self.cluster: Coordinator | None = None
        # Silences and acknowledgements come in order with the readings.
        control = (SILENCE_SUBSCRIPTION, ACK_SUBSCRIPTION)
        # The retained device states (not our own later ones: no-local) restore the
        # alerts firing before a restart.
        subscriptions: tuple[str, ...] = (READING_SUBSCRIPTION, *control, STATE_SUBSCRIPTION)
        if cfg.cluster.enabled:
            # Readings arrive through partition sessions; the main session only
            # follows membership, partition markers, silences and acknowledgements.
            # No device states: a device moves between gateways, and its alert state
            # starts afresh on the new one (other gateways' states are not ours to take).
            self.cluster = Coordinator(
                cfg.cluster, cfg.mqtt, cfg.id, self._inbox, self.metrics, self.held_limit
            )
            subscriptions = (*self.cluster.subscriptions, *control)
        self.intake = MqttIntake(
            cfg.mqtt, cfg.id, subscriptions, self._inbox, self.metrics, self.held_limit,
            no_local=frozenset({STATE_SUBSCRIPTION}),
        )  # fmt: skip
        if self.cluster is not None:
            self.intake.set_router(self.cluster.handle_status)
        dead_letters = DeadLetters(self.intake.publish, self.metrics)
        store = Store(self._sink, self.metrics, dead_letters)
        self.drainer = (
            Drainer(self._spool, store, cfg.influx, self.metrics, on_fatal=self._fatal)
            if self._spool is not None
            else None
        )
        self.writer = Writer(
            store,
            cfg.influx,
            self.metrics,
            ack_all,
            cfg.pipeline.write_queue_batches,
            health_point=self._health_point,
            health_interval_s=cfg.metrics.influx_interval_s,
            spool=self._spool,
            on_settled=self.held_limit.settled,
            on_spooled=self.drainer.wake if self.drainer is not None else None,
        )
        # The core: its stages over each micro-batch, and the one way out of it.
        self.processor = Processor(
            cfg.pipeline,
            self._inbox,
            self.scorer,
            build_chain(
                cfg, self.metrics, shadow=(lambda: self.shadow.current) if self.shadow else None
            ),
            Sender(self.intake.publish, dead_letters, self.writer),
            self.metrics,
            on_fatal=self._fatal,
        )
        self.failed = threading.Event()
        # Set by a signal handler or a fatal error; the main thread then calls stop().
        self.stop_requested = threading.Event()

    def scorer(self) -> Scorer:
        return self.model.current

    def _held(self) -> int:
        """Readings in memory: waiting, being scored, or waiting to be settled."""
        return len(self._inbox) + self.processor.in_hand + self.writer.unacked

    def _health_point(self) -> str:
        fields = self.metrics.health_fields()
        return encode_point(
            schema.GATEWAY_HEALTH,
            {schema.GATEWAY: self.cfg.id, schema.MODEL_VERSION: self.model.current.version},
            fields,
            time.time_ns(),
        )

    def healthy(self, stale_s: float = 10.0) -> bool:
        """For the systemd watchdog: both worker threads alive and making progress.

        A scorer blocked on a full write queue is waiting, not hung, as long as the
        writer itself is alive (it retries InfluxDB or drains the spool).
        """
        now = time.monotonic()
        writer_ok = self.writer.is_alive() and now - self.writer.heartbeat < stale_s
        if self.drainer is not None:
            writer_ok = writer_ok and self.drainer.is_alive()
        scorer_ok = self.processor.is_alive() and (
            now - self.processor.heartbeat < stale_s or self.writer.full
        )
        return writer_ok and scorer_ok and not self.failed.is_set()

    def _fatal(self, exc: BaseException) -> None:
        self.failed.set()
        self.stop_requested.set()

    def start(self) -> None:
        if (
            self.cfg.influx.api == 1
            and self.cfg.influx.create_database
            and isinstance(self._sink, InfluxV1Sink)
        ):
            try:
                self._sink.ensure_database()
            except WriteError as exc:
                # Not fatal: InfluxDB may come up later; writes retry until it does.
                log.warning("could not ensure database %s: %s", self.cfg.influx.database, exc)
        self.metrics.serve(self.cfg.metrics.host, self.cfg.metrics.port)
        self.writer.start()
        if self.drainer is not None:
            self.drainer.start()
        self.processor.start()
        self.intake.start()
        if self.cluster is not None:
            self.cluster.start()
        self.model.start()
        log.info("gateway %s started", self.cfg.id)

    def stop(self, timeout_s: float = 20.0) -> None:
        log.info("stopping: no new messages, flushing what was received")
        self.model.stop()
        if self.cluster is not None:
            self.cluster.stop_routing()
            self.cluster.stop_accepting()
        self.intake.stop_accepting()
        self.processor.stop(timeout_s)
        if not self.writer.stop(timeout_s):
            log.warning(
                "InfluxDB did not take the last writes in %.0fs; %d messages stay "
                "unacknowledged and will be redelivered",
                timeout_s,
                self.writer.unacked,
            )
        if self.drainer is not None:
            self.drainer.stop(self.cfg.influx.timeout_s + 1.0)
        if self.cluster is not None:
            self.cluster.close()  # partition sessions stay with the broker for the next owner
        self.intake.close()
        self._sink.close()
        if self._spool is not None:
            self._spool.close()
        self.metrics.close()
        log.info("gateway %s stopped", self.cfg.id)
