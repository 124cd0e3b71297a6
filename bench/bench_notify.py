"""Notification service figures: ``python -m bench.bench_notify`` (about 1-2 minutes).

Runs the real notifier (``python -m notify``) against a Mosquitto, an HTTP endpoint
and an SMTP server (STARTTLS + AUTH) it starts itself, and prints:

1. latency from MQTT publish to the webhook / e-mail arriving, p50 and p99;
2. an endpoint outage: retries, and time to delivery once it is back;
3. an alert storm: how many messages people get, and how many digests.

Figures, not assertions (the tests assert).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from devstack.mosquitto import Mosquitto
from devstack.process import free_port, wait_until
from tests.notify_servers import (
    SMTP_PASSWORD,
    AlertPublisher,
    NotifierProcess,
    SmtpServer,
    WebhookServer,
    alert_message,
    email_channel,
    route,
    webhook_channel,
)

BASE_NS = 1_796_551_200_000_000_000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {1000 * pct(values, 0.5):7.1f} ms   p99 {1000 * pct(values, 0.99):7.1f} ms"


def latency(tmp: Path, broker: Mosquitto, n: int, rate: float) -> None:
    webhook, smtp = WebhookServer(), SmtpServer(tmp)
    password = tmp / "smtp-password"
    password.write_text(SMTP_PASSWORD)
    notifier = NotifierProcess(
        tmp,
        broker.port,
        webhook_channel("chat", webhook.url())
        + email_channel("mail", smtp, password)
        + route("all", ["chat", "mail"], to=["shift@bench.local"], line="lat"),
    )
    publisher = AlertPublisher(broker.port)
    sent: dict[str, float] = {}
    try:
        notifier.start()
        started = time.monotonic()
        for i in range(n):
            payload, ident = alert_message("lat", f"press-{i % 20}", started_ns=BASE_NS + i)
            sent[ident] = time.monotonic()
            publisher.publish(payload, "lat", f"press-{i % 20}")
            # Pacing, not synchronisation: alerts at a steady `rate`.
            time.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
        wait_until(lambda: len(webhook.posts) >= n and len(smtp.messages) >= n, 120, "all")
        hook = [p.at - sent[p.body["alert"]["alert_id"]] for p in webhook.posts]
        # The idempotency key is "<alert id>:firing".
        mail = [at - sent[m["X-Idempotency-Key"].split(":")[0]] for _, m, at in smtp.messages]
        print(f"1. latency, {n} alerts at {rate:g}/s (publish -> received), one notifier:")
        print(f"   webhook: {ms(hook)}   ({len(webhook.posts)} posts)")
        print(f"   e-mail:  {ms(mail)}   ({len(smtp.messages)} mails, STARTTLS + AUTH each)")
    finally:
        notifier.stop()
        publisher.close()
        webhook.stop()
        smtp.stop()


def outage(tmp: Path, broker: Mosquitto, n: int, down_s: float) -> None:
    webhook = WebhookServer()
    webhook.mode = 503
    notifier = NotifierProcess(
        tmp,
        broker.port,
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], line="out"),
        retry="min_s = 0.5\nmax_s = 4.0\nfactor = 2.0\njitter = 0.2\nmax_age_s = 3600.0",
    )
    publisher = AlertPublisher(broker.port)
    try:
        notifier.start()
        t0 = time.monotonic()
        for i in range(n):
            payload, _ = alert_message("out", f"press-{i}", started_ns=BASE_NS + i)
            publisher.publish(payload, "out", f"press-{i}")
        # The endpoint is down for down_s, then recovers.
        wait_until(lambda: time.monotonic() - t0 >= down_s, down_s + 1, "the outage to end")
        webhook.mode = "ok"
        back = time.monotonic()
        wait_until(lambda: len(webhook.delivered()) >= n, 60, "delivery after the outage")
        after = [p.at - back for p in webhook.delivered()]
        keys = [p.key for p in webhook.delivered()]
        retries = notifier.metric("notifier_retries_total", 'channel="chat"')
        print(f"2. endpoint down {down_s:g} s (HTTP 503), {n} alerts, backoff 0.5 s x2 .. 4 s:")
        print(
            f"   attempts {len(webhook.posts)} ({len(webhook.posts) - n} retried), "
            f"retries metric {retries:g}, "
            f"delivered {len(keys)} ({len(set(keys))} distinct keys)"
        )
        print(
            f"   after recovery: first {1000 * min(after):.0f} ms, "
            f"median {1000 * statistics.median(after):.0f} ms, last {1000 * max(after):.0f} ms"
        )
    finally:
        notifier.stop()
        publisher.close()
        webhook.stop()


def storm(tmp: Path, broker: Mosquitto, devices: int, each: int, window_s: float) -> None:
    webhook = WebhookServer()
    notifier = NotifierProcess(
        tmp,
        broker.port,
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], line="storm"),
        rate_limit=f"window_s = {window_s}\nper_device = 3\nplant = 20",
    )
    publisher = AlertPublisher(broker.port)
    try:
        notifier.start()
        # Start at a window boundary, so the storm is one window's.
        wait_until(lambda: time.time() % window_s < 0.5, window_s + 1, "a window start")
        t0 = time.monotonic()
        for repeat in range(each):
            for d in range(devices):
                payload, _ = alert_message(
                    "storm", f"m-{d:02d}", started_ns=BASE_NS + repeat * 1000 + d
                )
                publisher.publish(payload, "storm", f"m-{d:02d}")
        took = time.monotonic() - t0
        wait_until(
            lambda: webhook.matching(lambda p: p.body.get("digest") is True),
            window_s + 10,
            "the digest",
        )
        immediate = webhook.matching(lambda p: p.body.get("digest") is False)
        digests = webhook.matching(lambda p: p.body.get("digest") is True)
        folded = sum(len(p.body["alerts"]) for p in digests)
        print(
            f"3. storm: {devices} devices x {each} alerts = {devices * each} alerts in "
            f"{took:.1f} s (window {window_s:g} s, per_device 3, plant 20):"
        )
        print(
            f"   people get {len(immediate) + len(digests)} messages per channel: "
            f"{len(immediate)} immediate + {len(digests)} digest ({folded} alerts folded)"
        )
        print(f"   digest text: {digests[0].body['text'][:150]}...")

        # The storm ends: every alert resolves, in the next window.
        before = len(webhook.matching())
        wait_until(lambda: time.time() % window_s < 0.5, window_s + 1, "the next window")
        for repeat in range(each):
            for d in range(devices):
                payload, _ = alert_message(
                    "storm", f"m-{d:02d}", "resolved", started_ns=BASE_NS + repeat * 1000 + d
                )
                publisher.publish(payload, "storm", f"m-{d:02d}")
        wait_until(
            lambda: len(webhook.matching(lambda p: p.body.get("digest") is True)) > len(digests),
            window_s + 10,
            "the resolutions' digest",
        )
        after = webhook.matching()[before:]
        alone = [p for p in after if p.body.get("digest") is False]
        folded = [p for p in after if p.body.get("digest") is True]
        print(
            f"   the storm ends ({devices * each} resolutions): {len(alone)} quiet messages for "
            f"the alerts people got alone + {len(folded)} quiet digest of "
            f"{sum(len(p.body['alerts']) for p in folded)} (one by one: {devices * each})"
        )
        print(f"   digest text: {folded[0].body['text'][:150]}...")
    finally:
        notifier.stop()
        publisher.close()
        webhook.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_notify", description=__doc__)
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="alerts/s in the latency run")
    parser.add_argument("--down", type=float, default=5.0, help="outage length, seconds")
    parser.add_argument("--window", type=float, default=30.0, help="storm rate-limit window")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd deprecation chatter
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp_dir:
        tmp = Path(tmp_dir)
        broker = Mosquitto(tmp / "mosquitto", free_port()).start()
        try:
            latency(tmp, broker, args.alerts, args.rate)
            outage(tmp, broker, 20, args.down)
            storm(tmp, broker, 40, 10, args.window)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
