"""Gateway self-monitoring: Prometheus metrics plus a snapshot for InfluxDB.

Each gateway instance has its own registry, so several can live in one process
(tests) and the exposition only shows this gateway's series.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.metrics_http import MetricsEndpoint
from contract.reading import DEADLETTER_REASONS

_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass
class Snapshot:
    received: int = 0
    stored: int = 0
    rejected: int = 0
    alerts: int = 0
    write_errors: int = 0
    points_dropped: int = 0


class GatewayMetrics(MetricsEndpoint):
    def __init__(self, gateway_id: str):
        self.gateway_id = gateway_id
        super().__init__(CollectorRegistry())
        r = self.registry
        self.received = Counter("gateway_messages_received", "MQTT messages received", registry=r)
        self.stored = Counter("gateway_readings_stored", "Readings durably written", registry=r)
        self.rejected = Counter(
            "gateway_messages_rejected", "Messages dead-lettered", ["reason"], registry=r
        )
        for reason in DEADLETTER_REASONS:
            self.rejected.labels(reason)  # export zeros so rate() works from the start
        self.alerts = Counter(
            "gateway_alerts_published", "Alerts published", ["kind", "state"], registry=r
        )
        self.alerts_silenced = Counter(
            "gateway_alerts_silenced", "Alerts held back by a maintenance silence", registry=r
        )
        self.acks = Counter(
            "gateway_acks",
            "Acknowledgements: applied, or ignored (no such firing alert here, or already "
            "acknowledged)",
            ["result"],
            registry=r,
        )
        for result in ("applied", "unknown", "repeated"):
            self.acks.labels(result)
        self.alerts_restored = Counter(
            "gateway_alerts_restored",
            "Firing alerts taken over from the retained device state (after a restart)",
            registry=r,
        )
        self.reminders_held = Counter(
            "gateway_reminders_held", "Reminders not sent: the alert is acknowledged", registry=r
        )
        self.anomalies = Counter("gateway_anomalies", "Readings scored anomalous", registry=r)
        self.write_errors = Counter(
            "gateway_write_errors", "Failed InfluxDB writes", ["retryable"], registry=r
        )
        self.points_dropped = Counter(
            "gateway_points_dropped", "Points InfluxDB refused as invalid", registry=r
        )
        self.batch_size = Histogram(
            "gateway_batch_size", "Readings per scoring batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.score_seconds = Histogram(
            "gateway_score_seconds", "Model time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.write_seconds = Histogram(
            "gateway_write_seconds", "InfluxDB write latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.write_points = Histogram(
            "gateway_write_points", "Points per InfluxDB write", buckets=_BATCH_BUCKETS, registry=r
        )
        self.spool_points = Gauge(
            "gateway_spool_points", "Points waiting in the on-disk spool", registry=r
        )
        self.spool_bytes = Gauge("gateway_spool_bytes", "Size of the spooled data", registry=r)
        self.spooled = Counter("gateway_spooled_points", "Points written to the spool", registry=r)
        self.drained = Counter(
            "gateway_spool_drained_points", "Spooled points written to InfluxDB", registry=r
        )
        self.spool_expired = Counter(
            "gateway_spool_expired_points", "Spooled points dropped for age", registry=r
        )
        self.spool_full = Counter(
            "gateway_spool_full", "Times a batch did not fit in the spool", registry=r
        )
        self.routed = Counter(
            "gateway_cluster_routed", "Readings forwarded to their partition", registry=r
        )
        self.rescued = Counter(
            "gateway_cluster_rescued",
            "Readings forwarded from a dead gateway's session",
            registry=r,
        )
        self.partitions_owned = Gauge(
            "gateway_cluster_partitions_owned", "Partitions this gateway scores", registry=r
        )
        self.unscored = Counter(
            "gateway_readings_unscored",
            "Readings stored without a score",
            ["reason"],
            registry=r,
        )
        self.partial = Counter(
            "gateway_readings_partially_scored",
            "Readings scored while the model still learns their device (warm-up)",
            registry=r,
        )
        self.drift_psi = Gauge(
            "gateway_drift_psi",
            "Input drift (PSI) per feature vs training",
            ["feature"],
            registry=r,
        )
        self.anomaly_rate = Gauge(
            "gateway_anomaly_rate", "Share of recent readings scored anomalous", registry=r
        )
        self.shadow_scored = Counter(
            "gateway_shadow_scored", "Readings also scored by the shadow model", registry=r
        )
        self.shadow_disagreements = Counter(
            "gateway_shadow_disagreements", "Shadow and active model disagree", registry=r
        )
        self.intake_depth = Gauge(
            "gateway_intake_queue_depth", "Messages awaiting scoring", registry=r
        )
        self.write_depth = Gauge("gateway_write_queue_depth", "Batches awaiting write", registry=r)
        self.unacked = Gauge(
            "gateway_unacked_messages", "Received but not yet durable (not acked)", registry=r
        )
        # Read when scraped (set_function), from gateway.flow.HeldLimit.
        self.held = Gauge(
            "gateway_held_readings",
            "Readings in memory: waiting, being scored, or not yet durable",
            registry=r,
        )
        self.held_peak = Gauge(
            "gateway_held_readings_peak", "Most readings held in memory since start", registry=r
        )
        self.held_limit = Gauge(
            "gateway_held_readings_limit", "The gateway's bound on readings held", registry=r
        )
        self.connected = Gauge(
            "gateway_mqtt_connected", "1 when connected to the broker", registry=r
        )
        self.model_info = Gauge(
            "gateway_model_info", "Active model version", ["version"], registry=r
        )
        self.model_reloads = Counter(
            "gateway_model_reloads", "Successful model reloads", registry=r
        )
        self.model_reload_failures = Counter(
            "gateway_model_reload_failures",
            "Model reloads that failed (old model kept)",
            registry=r,
        )
        self.last_write = Gauge(
            "gateway_last_write_timestamp_seconds", "Time of the last successful write", registry=r
        )
        self._lock = threading.Lock()
        self._snap = Snapshot()
        self._write_latency_sum = 0.0
        self._write_count = 0
        self._batch_sum = 0
        self._batch_count = 0
        self._spool_depth = 0
        self._depths = {"intake_queue_depth": 0, "write_queue_depth": 0, "unacked": 0}

    # Counting helpers keep the Prometheus series and the snapshot in step.
    def count_received(self, n: int) -> None:
        self.received.inc(n)
        with self._lock:
            self._snap.received += n

    def count_rejected(self, reason: str) -> None:
        self.rejected.labels(reason).inc()
        with self._lock:
            self._snap.rejected += 1

    def count_alert(self, kind: str, state: str) -> None:
        self.alerts.labels(kind, state).inc()
        with self._lock:
            self._snap.alerts += 1

    def observe_batch(self, size: int, score_s: float) -> None:
        self.batch_size.observe(size)
        self.score_seconds.observe(score_s)
        with self._lock:
            self._batch_sum += size
            self._batch_count += 1

    def observe_write(self, points: int, readings: int, seconds: float) -> None:
        self.write_seconds.observe(seconds)
        self.write_points.observe(points)
        self.stored.inc(readings)
        self.last_write.set(time.time())
        with self._lock:
            self._snap.stored += readings
            self._write_latency_sum += seconds
            self._write_count += 1

    def count_write_error(self, retryable: bool) -> None:
        self.write_errors.labels(str(retryable).lower()).inc()
        with self._lock:
            self._snap.write_errors += 1

    def count_points_dropped(self, n: int) -> None:
        self.points_dropped.inc(n)
        with self._lock:
            self._snap.points_dropped += n

    def _spool_gauges(self, spool) -> None:
        self.spool_points.set(spool.points)
        self.spool_bytes.set(spool.bytes)
        self._spool_depth = spool.points

    def count_spooled(self, points: int, spool) -> None:
        self.spooled.inc(points)
        self._spool_gauges(spool)

    def count_drained(self, points: int, spool) -> None:
        self.drained.inc(points)
        self._spool_gauges(spool)

    def count_spool_expired(self, points: int, spool) -> None:
        self.spool_expired.inc(points)
        self._spool_gauges(spool)

    def count_spool_full(self) -> None:
        self.spool_full.inc()

    def set_model(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version).set(1)

    def health_fields(self) -> dict[str, float | int]:
        """Cumulative counters and interval averages for the `gateway` measurement."""
        with self._lock:
            s = self._snap
            fields: dict[str, float | int] = {
                "received": s.received,
                "stored": s.stored,
                "rejected": s.rejected,
                "alerts": s.alerts,
                "write_errors": s.write_errors,
                "points_dropped": s.points_dropped,
                "write_latency_ms": (
                    1000 * self._write_latency_sum / self._write_count if self._write_count else 0.0
                ),
                "batch_size_avg": self._batch_sum / self._batch_count if self._batch_count else 0.0,
            }
            self._write_latency_sum = 0.0
            self._write_count = 0
            self._batch_sum = 0
            self._batch_count = 0
        fields.update(self._depths)
        fields["spool_points"] = self._spool_depth
        return fields

    def set_depths(self, intake: int, write: int, unacked: int) -> None:
        self.intake_depth.set(intake)
        self.write_depth.set(write)
        self.unacked.set(unacked)
        self._depths = {
            "intake_queue_depth": intake,
            "write_queue_depth": write,
            "unacked": unacked,
        }
