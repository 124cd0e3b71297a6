"""The scoring thread: micro-batch, decode and validate, score, decide, hand to the writer.

One sklearn call per batch, never per message: a forest costs about the same for
1 row as for 100, so batching is what makes the gateway keep up.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from contract import Reading, Rejected, decode_reading
from contract.payloads import rfc3339
from contract.topics import SILENCE_PREFIX, TopicError, parse_reading_topic
from gateway.config import GatewayConfig
from gateway.deadletters import DeadLetters
from gateway.detection import AlertTransition, Detection
from gateway.drift_watch import DriftWatch
from gateway.features import FeatureBuilder
from gateway.inbox import Inbox
from gateway.intake import Message
from gateway.lineprotocol import ReadingEncoder
from gateway.metrics import GatewayMetrics
from gateway.notifier import Notifier
from gateway.silence import Silences
from gateway.writer import WriteBatch, Writer
from model.reading_fields import required_fields
from model.scorer import Scorer

log = logging.getLogger(__name__)


class Processor(threading.Thread):
    def __init__(
        self,
        cfg: GatewayConfig,
        inbox: Inbox[Message],
        scorer: Callable[[], Scorer],
        writer: Writer,
        publish: Callable[[str, bytes, bool], None],
        metrics: GatewayMetrics,
        on_fatal: Callable[[BaseException], None],
        dead_letters: DeadLetters,
        shadow: Callable[[], Scorer | None] | None = None,
    ):
        super().__init__(name="scorer", daemon=True)
        self._on_fatal = on_fatal
        self._cfg = cfg
        self._inbox = inbox
        self._scorer = scorer
        self._writer = writer
        self._publish = publish
        self._metrics = metrics
        self._detection = Detection(cfg.alerts, cfg.sensor_faults, metrics)
        self._notifier = Notifier(
            cfg, publish, metrics, self._detection.alerts, self._detection.faults, Silences()
        )
        self._next_deadman = 0.0
        self._cluster = cfg.cluster.enabled
        self._encoder = ReadingEncoder()
        self._shadow_features = FeatureBuilder()
        self._drift = DriftWatch(cfg.drift, cfg.id, metrics, publish)
        self._shadow = shadow
        self._dead_letters = dead_letters
        self.heartbeat = time.monotonic()
        # Messages taken from the inbox and not yet handed to the writer (memory bound).
        self.in_hand = 0
        self._stopping = threading.Event()
        self._limits_for: tuple[tuple[str, ...], object] | None = None

    def stop(self, timeout_s: float) -> None:
        """Finish what is already in the inbox, then end."""
        self._stopping.set()
        self.join(timeout_s)

    def _limits(self, scorer: Scorer):
        # Required fields follow the active model, so a retrained model with an extra
        # feature changes validation without a config change.
        needed = required_fields(scorer)  # shared with the API (model.reading_fields)
        if self._limits_for is None or self._limits_for[0] != needed:
            self._limits_for = (needed, self._cfg.decode_limits(needed))
        return self._limits_for[1]

    def _collect(self) -> list[Message]:
        pc = self._cfg.pipeline
        return self._inbox.take(pc.batch_max, pc.batch_max_wait_ms / 1000, idle_wait_s=0.1)

    def run(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            batch = self._collect()
            self.in_hand = len(batch)
            if batch:
                try:
                    self._process(batch)
                    self.in_hand = 0
                except Exception as exc:
                    # A bug must not silently stall the flow: stop the gateway so the
                    # supervisor restarts it; the batch is unacked and gets redelivered.
                    log.exception("failed to process a batch of %d messages", len(batch))
                    self._on_fatal(exc)
                    return
            elif self._stopping.is_set():
                return
            self._check_deadman()
            self._drift.check(time.monotonic(), self._scorer().version)
            self._metrics.set_depths(self._inbox.qsize(), self._writer.depth, self._writer.unacked)

    def _process(self, batch: list[Message]) -> None:
        self._metrics.count_received(len(batch))
        scorer = self._scorer()  # one model per batch, even if a reload happens meanwhile
        limits = self._limits(scorer)
        valid: list[Reading] = []
        valid_msgs: list[Message] = []
        lines: list[str] = []
        now = time.monotonic()
        for msg in batch:
            try:
                if msg.topic.startswith(SILENCE_PREFIX):
                    self._silence(msg)
                else:
                    valid.append(decode_reading(msg.topic, msg.payload, msg.received_ns, limits))
                    valid_msgs.append(msg)
            except Rejected as rej:
                self._dead_letter(msg, rej, lines, scorer.version, now)
        # The first lines of _score are the readings' own, in order: remember which
        # message each encodes, so a point InfluxDB refuses is dead-lettered.
        origins = {
            len(lines) + i: (m.topic, m.payload, m.received_ns) for i, m in enumerate(valid_msgs)
        }
        if valid:
            lines += self._score(valid, scorer, now)
        self._writer.submit(
            WriteBatch(lines, [(m.client, m.mid, m.qos) for m in batch], len(valid), origins)
        )

    def _score(self, readings: list[Reading], scorer: Scorer, now: float) -> list[str]:
        started = time.perf_counter()
        decided = self._detection.decide(readings, scorer, now)
        if decided.X is not None and decided.X.shape[0]:
            self._drift.observe(scorer, decided.X, decided.scored_flags)
        self._metrics.observe_batch(len(readings), time.perf_counter() - started)
        self._shadow_score(readings, scorer, decided.scores, decided.flags)
        n_anomalies = sum(decided.flags)
        if n_anomalies:
            self._metrics.anomalies.inc(n_anomalies)
        version = scorer.version
        gateway_tail = self._encoder.gateway_tail(self._cfg.id) if self._cluster else ""
        encode = self._encoder.scored
        lines = [
            encode(reading, version, score, is_anomaly, gateway_tail)
            for reading, score, is_anomaly in zip(
                readings, decided.scores, decided.flags, strict=True
            )
        ]
        for alert in decided.alerts:
            self._notify(readings[alert.at], alert, scorer)
        for _, tr in decided.faults:
            lines.append(self._notifier.sensor_fault(tr, version))
        return lines

    def _notify(self, reading: Reading, alert: AlertTransition, scorer: Scorer) -> None:
        self._notifier.process_alert(
            reading.line,
            reading.device,
            alert.state,
            reading.ts_ns,
            alert.score,
            scorer.threshold,
            reading.values,
            scorer.version,
            seq=reading.seq,
            drivers=[{"feature": name, "z": round(z, 2)} for name, z in alert.drivers],
        )
        log.info(
            "alert %s %s/%s score=%.3f", alert.state, reading.line, reading.device, alert.score
        )

    def _shadow_score(
        self, readings: list[Reading], scorer: Scorer, scores: list[float], flags: list[bool]
    ) -> None:
        """Score with the shadow model too, from its own per-device state (its inputs may
        differ from the active model's); count where it would decide otherwise."""
        shadow = self._shadow() if self._shadow is not None else None
        if shadow is None or not set(shadow.raw_fields) <= set(scorer.raw_fields):
            return
        x, index = self._shadow_features.build(readings, shadow)
        both = [i for i in index.tolist() if not math.isnan(scores[i])]
        if not both:
            return
        shadow_flags = shadow.score(x) >= shadow.threshold
        row = {i: j for j, i in enumerate(index.tolist())}
        disagree = sum(bool(shadow_flags[row[i]]) != flags[i] for i in both)
        self._metrics.shadow_scored.inc(len(both))
        if disagree:
            self._metrics.shadow_disagreements.inc(disagree)

    def _check_deadman(self) -> None:
        now = time.monotonic()
        if not self._cfg.sensor_faults.enabled or now < self._next_deadman:
            return
        self._next_deadman = now + 1.0
        transitions = self._detection.check_deadman(now, time.time_ns())
        if transitions:
            version = self._scorer().version
            lines = [self._notifier.sensor_fault(tr, version) for tr in transitions]
            self._writer.submit(WriteBatch(lines, [], 0))

    def _silence(self, msg: Message) -> None:
        line, device, silence = self._notifier.silences.apply(msg.topic, msg.payload)
        if silence is None:
            log.info("silence lifted for %s/%s", line, device)
        else:
            log.info(
                "alerts silenced for %s/%s until %s (%s)",
                line,
                device,
                rfc3339(silence.until_ns),
                silence.reason or "no reason given",
            )

    def _dead_letter(
        self, msg: Message, rej: Rejected, lines: list[str], version: str, now: float
    ) -> None:
        try:
            line, device = parse_reading_topic(msg.topic)
        except TopicError:
            pass
        else:
            for tr in self._detection.rejected(
                line, device, rej.reason, rej.detail, msg.received_ns, now
            ):
                lines.append(self._notifier.sensor_fault(tr, version))
        self._dead_letters.send(
            msg.topic, msg.payload, rej.reason, rej.detail, rej.field, msg.received_ns
        )
