"""The notifier's Prometheus metrics (own registry, served on metrics.port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from common.metrics_http import MetricsEndpoint
from notify.alerts import BAD_INPUT_REASONS

_SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class NotifierMetrics(MetricsEndpoint):
    def __init__(self, channels: list[str]):
        super().__init__(CollectorRegistry())
        r = self.registry
        self.received = Counter("notifier_alerts_received", "Alert messages received", registry=r)
        self.duplicates = Counter(
            "notifier_alerts_duplicate",
            "Alert transitions received again (redelivery): not queued twice",
            registry=r,
        )
        self.unrouted = Counter(
            "notifier_alerts_unrouted", "Alert messages no route matched", registry=r
        )
        self.bad_input = Counter(
            "notifier_bad_input", "Malformed alert messages (dropped)", ["reason"], registry=r
        )
        for reason in BAD_INPUT_REASONS:
            self.bad_input.labels(reason)
        self.queued = Counter(
            "notifier_notifications_queued", "Notifications committed to the outbox", registry=r
        )
        self.rate_limited = Counter(
            "notifier_rate_limited",
            "Notifications held for a digest (device over its limit, a plant storm, or the"
            " resolution / acknowledgement of an alert its person got only in a digest)",
            ["reason"],
            registry=r,
        )
        for reason in ("device", "plant", "follows_digest"):
            self.rate_limited.labels(reason)
        self.delivered = Counter(
            "notifier_delivered", "Notifications delivered", ["channel"], registry=r
        )
        self.retries = Counter(
            "notifier_retries", "Failed attempts that will be retried", ["channel"], registry=r
        )
        self.failures = Counter(
            "notifier_failures",
            "Failed attempts (retryable or permanent)",
            ["channel", "outcome"],
            registry=r,
        )
        self.dead = Counter(
            "notifier_dead",
            "Notifications given up (permanent failure or older than retry.max_age_s)",
            ["channel"],
            registry=r,
        )
        self.digests = Counter(
            "notifier_digests", "Digest notifications made", ["channel"], registry=r
        )
        for channel in channels:
            for counter in (self.delivered, self.retries, self.dead, self.digests):
                counter.labels(channel)
        self.send_seconds = Histogram(
            "notifier_send_seconds", "Time of one send attempt", ["channel"],
            buckets=_SEND_BUCKETS, registry=r,
        )  # fmt: skip
        self.pending = Gauge(
            "notifier_outbox_pending", "Notifications waiting to be sent", registry=r
        )
        self.held = Gauge("notifier_outbox_held", "Notifications held for a digest", registry=r)
        self.dead_rows = Gauge("notifier_outbox_dead", "Dead notifications kept", registry=r)
        self.intake_paused = Gauge(
            "notifier_intake_paused", "1 while the outbox is full and intake waits", registry=r
        )
        self.connected = Gauge("notifier_mqtt_connected", "1 when connected", registry=r)
        self.ready = Gauge("notifier_ready", "1 once subscribed to the alerts", registry=r)
