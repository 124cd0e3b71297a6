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

import numpy as np

from common.logs import RateLimitedLog
from contract import Reading, Rejected, deadletter_topic, decode_reading
from contract.payloads import deadletter_payload, rfc3339
from contract.topics import UNKNOWN, TopicError, parse_reading_topic
from gateway.alerts import AlertTracker
from gateway.config import GatewayConfig
from gateway.drift_watch import DriftWatch
from gateway.features import FeatureBuilder
from gateway.inbox import Inbox
from gateway.intake import Message
from gateway.lineprotocol import ReadingEncoder, format_field
from gateway.metrics import GatewayMetrics
from gateway.notifier import PROCESS_ANOMALY, Notifier
from gateway.sensor_faults import SensorFaults
from gateway.silence import PREFIX as SILENCE_PREFIX
from gateway.silence import Silences
from gateway.writer import WriteBatch, Writer
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
        self._alerts = AlertTracker(cfg.alerts)
        self._faults = SensorFaults(cfg.sensor_faults)
        self._notifier = Notifier(cfg, publish, metrics, self._alerts, self._faults, Silences())
        self._next_deadman = 0.0
        self._cluster = cfg.cluster.enabled
        self._encoder = ReadingEncoder()
        self._features = FeatureBuilder(metrics)
        self._drift = DriftWatch(cfg.drift, cfg.id, metrics, publish)
        self._shadow = shadow
        self.heartbeat = time.monotonic()
        self._stopping = threading.Event()
        self._ratelog = RateLimitedLog(log, 10.0)
        self._limits_for: tuple[tuple[str, ...], object] | None = None

    def stop(self, timeout_s: float) -> None:
        """Finish what is already in the inbox, then end."""
        self._stopping.set()
        self.join(timeout_s)

    def _limits(self, scorer: Scorer):
        # Required fields follow the active model, so a retrained model with an extra
        # feature changes validation without a config change.
        needed = scorer.raw_fields  # plain features and the fields stream features use
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
            if batch:
                try:
                    self._process(batch)
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
        lines: list[str] = []
        now = time.monotonic()
        for msg in batch:
            try:
                if msg.topic.startswith(SILENCE_PREFIX):
                    self._silence(msg)
                else:
                    valid.append(decode_reading(msg.topic, msg.payload, msg.received_ns, limits))
            except Rejected as rej:
                self._dead_letter(msg, rej, lines, scorer.version, now)
        if valid:
            lines += self._score(valid, scorer, now)
        self._writer.submit(
            WriteBatch(lines, [(m.client, m.mid, m.qos) for m in batch], len(valid))
        )

    def _score(self, readings: list[Reading], scorer: Scorer, now: float) -> list[str]:
        started = time.perf_counter()
        x, index = self._features.build(readings, scorer)
        scores = np.full(len(readings), np.nan)
        flags = np.zeros(len(readings), dtype=bool)
        if index:
            scores[index] = scorer.score(x)
            flags[index] = scores[index] >= scorer.threshold
            self._shadow_score(x, flags[index])
            self._drift.observe(scorer, x, flags[index])
        self._metrics.observe_batch(len(readings), time.perf_counter() - started)
        n_anomalies = int(flags.sum())
        explain = None
        if n_anomalies:
            self._metrics.anomalies.inc(n_anomalies)
            rows = np.zeros(len(readings), dtype=np.intp)
            rows[index] = np.arange(len(index))
            explain = scorer.explain(x[rows[flags]])
        explained = 0
        version = scorer.version
        # Other fields, pre-formatted for the line protocol (see ReadingEncoder).
        gateway_tail = f",gateway={format_field(self._cfg.id)}" if self._cluster else ""
        encode = self._encoder.encode_reading
        check_faults = self._faults.on_reading if self._cfg.sensor_faults.enabled else None
        lines = []
        results = zip(readings, scores.tolist(), flags.tolist(), strict=True)
        for reading, score, is_anomaly in results:
            seq_tail = "" if reading.seq is None else f",seq={reading.seq}i"
            scored = not math.isnan(score)  # NaN: warming up or out of order
            if scored:
                flag = "true" if is_anomaly else "false"
                tail = f",score={score!r},is_anomaly={flag}{seq_tail}{gateway_tail}"
            else:
                tail = f",warming_up=true{seq_tail}{gateway_tail}"
            lines.append(
                encode(reading.line, reading.device, version, reading.values, tail, reading.ts_ns)
            )
            if scored:
                drivers = None
                if is_anomaly:
                    drivers = scorer.top_contributors(explain[explained])  # type: ignore[index]
                    explained += 1
                self._process_alert(reading, score, scorer, drivers)
            if check_faults is not None:
                for tr in check_faults(reading, now):
                    lines.append(self._notifier.sensor_fault(tr, version))
        return lines

    def _process_alert(self, reading: Reading, score: float, scorer: Scorer, drivers) -> None:
        state = self._alerts.update(
            reading.line, reading.device, PROCESS_ANOMALY, score, scorer.threshold, reading.ts_ns
        )
        if state is None:
            return
        self._notifier.process_alert(
            reading.line,
            reading.device,
            state,
            reading.ts_ns,
            score,
            scorer.threshold,
            reading.values,
            scorer.version,
            seq=reading.seq,
            drivers=[{"feature": name, "z": round(z, 2)} for name, z in drivers or []],
        )
        log.info("alert %s %s/%s score=%.3f", state, reading.line, reading.device, score)

    def _shadow_score(self, x: np.ndarray, flags: np.ndarray) -> None:
        """Score with the shadow model too; only count where it would decide otherwise."""
        shadow = self._shadow() if self._shadow is not None else None
        if shadow is None or shadow.features != self._scorer().features:
            return
        disagree = int(((shadow.score(x) >= shadow.threshold) != flags).sum())
        self._metrics.shadow_scored.inc(len(flags))
        if disagree:
            self._metrics.shadow_disagreements.inc(disagree)

    def _check_deadman(self) -> None:
        now = time.monotonic()
        if not self._cfg.sensor_faults.enabled or now < self._next_deadman:
            return
        self._next_deadman = now + 1.0
        transitions = self._faults.check_deadman(now, time.time_ns())
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
            line, device = UNKNOWN, UNKNOWN
        else:
            if self._cfg.sensor_faults.enabled:
                for tr in self._faults.on_rejected(
                    line, device, rej.reason, rej.detail, msg.received_ns, now
                ):
                    lines.append(self._notifier.sensor_fault(tr, version))
        payload = deadletter_payload(
            msg.topic, msg.payload, rej.reason, rej.detail, rej.field, msg.received_ns
        )
        self._publish(deadletter_topic(line, device), payload, False)
        self._metrics.count_rejected(rej.reason)
        self._ratelog.warning(rej.reason, "rejected message on %s: %s", msg.topic[:128], rej.detail)
