"""The notifier end to end: ``python -m notify`` against real Mosquitto, a real HTTP
endpoint and a real SMTP server (STARTTLS + AUTH).  No mocks; waits on conditions."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest

from contract.alerting import idempotency_key
from devstack.process import wait_until
from tests.helpers import unique
from tests.notify_servers import (
    SMTP_PASSWORD,
    AlertPublisher,
    alert_message,
    email_channel,
    route,
    webhook_channel,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def publisher(mosquitto) -> Iterator[AlertPublisher]:
    pub = AlertPublisher(mosquitto.port)
    yield pub
    pub.close()


def only_line(line: str) -> dict:
    """Each test uses its own line: other tests' alerts on the shared broker stay out."""
    return {"line": line}


def outbox_keys(path) -> list[tuple[str, str, str, str]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(
            "SELECT key, channel, recipient, status FROM notifications ORDER BY id"
        ).fetchall()
    finally:
        db.close()


def test_webhook_and_email_delivered_once(tmp_path, webhook, smtp, publisher, start_notifier):
    line = unique("line")
    password = tmp_path / "smtp-password"
    password.write_text(SMTP_PASSWORD + "\n")
    notifier = start_notifier(
        webhook_channel("chat", webhook.url())
        + email_channel("mail", smtp, password)
        + route(
            "all", ["chat", "mail"], to=["shift@test.local", "boss@test.local"], **only_line(line)
        )
    )
    payload, ident = alert_message(line, "press-01")
    publisher.publish(payload, line, "press-01")

    (post,) = webhook.wait_for(lambda p: True)
    mails = smtp.wait_for(lambda m: True, count=2)
    notifier.wait_metric("notifier_delivered_total", lambda v: v == 2, 'channel="mail"')
    key = idempotency_key(ident, "firing")
    assert post.key == key
    assert post.headers["Content-Type"] == "application/json"
    assert post.body["event"] == "firing" and post.body["quiet"] is False
    assert post.body["idempotency_key"] == key and post.body["digest"] is False
    assert post.body["alert"]["alert_id"] == ident
    assert post.body["text"].startswith(f"[FIRING] process_anomaly {line}/press-01")
    assert sorted(m["To"] for m in mails) == ["boss@test.local", "shift@test.local"]
    for mail in mails:
        assert mail["Subject"] == f"[FIRING] process_anomaly {line}/press-01"
        assert mail["From"] == "factory@test.local"
        assert mail["X-Idempotency-Key"] == key and mail["Importance"] is None
        assert "score 3.2" in mail.get_payload()
    assert len({m["Message-ID"] for m in mails}) == 2
    assert smtp.logins, "the notifier logged in (after STARTTLS: the server requires it)"
    assert notifier.metric("notifier_delivered_total", 'channel="chat"') == 1
    assert SMTP_PASSWORD not in notifier.log.read_text()
    # Nothing else arrives.
    assert len(webhook.matching()) == 1 and len(smtp.matching()) == 2
    assert notifier.stop() == 0


def test_a_text_webhook_posts_the_message_alone_for_phone_push(webhook, publisher, start_notifier):
    """body = "text" (e.g. ntfy): the message as text/plain, the subject as Title."""
    line = unique("line")
    start_notifier(
        webhook_channel("phone", webhook.url("/factory-alerts"), extra='body = "text"')
        + route("all", ["phone"], **only_line(line))
    )
    payload, ident = alert_message(line, "press-01")
    publisher.publish(payload, line, "press-01")
    (post,) = webhook.wait_for(lambda p: True)
    assert post.path == "/factory-alerts"
    assert post.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert post.headers["Title"] == f"[FIRING] process_anomaly {line}/press-01"
    assert post.body.startswith(f"[FIRING] process_anomaly {line}/press-01: score 3.2")
    assert post.key == idempotency_key(ident, "firing")


def test_failing_endpoint_retries_with_backoff_then_delivers_once(
    webhook, publisher, start_notifier
):
    line = unique("line")
    webhook.mode = 500
    notifier = start_notifier(
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], **only_line(line)),
        retry="min_s = 0.2\nmax_s = 0.8\nfactor = 2.0\njitter = 0.0",
    )
    payload, ident = alert_message(line, "press-02")
    publisher.publish(payload, line, "press-02")
    webhook.wait_for(lambda p: True, count=3)
    notifier.wait_metric("notifier_retries_total", lambda v: v >= 3, 'channel="chat"')
    webhook.mode = "ok"
    notifier.wait_metric("notifier_delivered_total", lambda v: v == 1, 'channel="chat"')
    posts = webhook.matching()
    assert {p.key for p in posts} == {idempotency_key(ident, "firing")}
    assert len(webhook.delivered()) == 1
    assert notifier.metric("notifier_failures_total", 'channel="chat",outcome="retry"') >= 3
    notifier.wait_metric("notifier_outbox_pending", lambda v: v == 0)


def test_hanging_endpoint_times_out_and_is_retried(webhook, publisher, start_notifier):
    line = unique("line")
    webhook.mode = "hang"
    notifier = start_notifier(
        webhook_channel("chat", webhook.url(), timeout_s=0.5)
        + route("all", ["chat"], **only_line(line)),
    )
    payload, _ = alert_message(line, "press-03")
    publisher.publish(payload, line, "press-03")
    webhook.wait_for(lambda p: True, count=2)  # the first attempt timed out
    assert notifier.metric("notifier_failures_total", 'channel="chat",outcome="retry"') >= 1
    webhook.mode = "ok"
    notifier.wait_metric("notifier_delivered_total", lambda v: v == 1, 'channel="chat"')
    assert len(webhook.delivered()) == 1
    assert "ReadTimeoutError" in notifier.log.read_text() or "timed out" in notifier.log.read_text()


def test_permanent_client_error_is_dead_not_retried(webhook, publisher, start_notifier):
    line = unique("line")
    webhook.mode = 404
    notifier = start_notifier(
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], **only_line(line))
    )
    payload, _ = alert_message(line, "press-04")
    publisher.publish(payload, line, "press-04")
    notifier.wait_metric("notifier_dead_total", lambda v: v == 1, 'channel="chat"')
    notifier.wait_metric("notifier_outbox_dead", lambda v: v == 1)
    assert len(webhook.matching()) == 1
    assert notifier.metric("notifier_failures_total", 'channel="chat",outcome="permanent"') == 1
    assert [row[3] for row in outbox_keys(notifier.outbox_path)] == ["dead"]


def test_sigkill_with_pending_rows_then_restart_delivers_each_once(
    webhook, publisher, start_notifier
):
    line = unique("line")
    webhook.mode = 503
    notifier = start_notifier(
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], **only_line(line))
    )
    idents = []
    for i in range(3):
        payload, ident = alert_message(line, f"press-{i}")
        publisher.publish(payload, line, f"press-{i}")
        idents.append(ident)
    notifier.wait_metric("notifier_outbox_pending", lambda v: v == 3)
    webhook.wait_for(lambda p: True, count=3)
    notifier.kill()
    webhook.mode = "ok"
    notifier.start()
    notifier.wait_metric("notifier_delivered_total", lambda v: v == 3, 'channel="chat"')
    delivered = [p.key for p in webhook.delivered()]
    assert sorted(delivered) == sorted(idempotency_key(i, "firing") for i in idents)
    keys = [row[0] for row in outbox_keys(notifier.outbox_path)]
    assert len(keys) == len(set(keys)) == 3


def test_crash_mid_send_resends_with_the_same_idempotency_key(webhook, publisher, start_notifier):
    """The receiver got the request, the notifier died before recording it: sent again
    after the restart, with the same key, so the receiver can tell."""
    line = unique("line")
    webhook.mode = "hold"
    notifier = start_notifier(
        webhook_channel("chat", webhook.url(), timeout_s=30)
        + route("all", ["chat"], **only_line(line))
    )
    payload, ident = alert_message(line, "press-05")
    publisher.publish(payload, line, "press-05")
    webhook.wait_for(lambda p: True)
    notifier.kill()
    webhook.mode = "ok"
    webhook.release()
    notifier.start()
    posts = webhook.wait_for(lambda p: p.status == 200, count=1)
    notifier.wait_metric("notifier_delivered_total", lambda v: v == 1, 'channel="chat"')
    all_posts = webhook.matching()
    assert len(all_posts) == 2
    assert {p.key for p in all_posts} == {idempotency_key(ident, "firing")}
    assert posts[0].body["idempotency_key"] == all_posts[0].body["idempotency_key"]


def test_redelivered_transition_is_not_sent_again(webhook, publisher, start_notifier):
    line = unique("line")
    notifier = start_notifier(
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], **only_line(line))
    )
    payload, _ = alert_message(line, "press-06")
    publisher.publish(payload, line, "press-06")
    notifier.wait_metric("notifier_delivered_total", lambda v: v == 1, 'channel="chat"')
    publisher.publish(payload, line, "press-06")  # what a broker redelivery looks like
    notifier.wait_metric("notifier_alerts_duplicate_total", lambda v: v == 1)
    # And after a restart (the transition is in the outbox, delivered).
    notifier.stop()
    notifier.start()
    publisher.publish(payload, line, "press-06")
    notifier.wait_metric("notifier_alerts_duplicate_total", lambda v: v == 1)
    assert len(webhook.matching()) == 1


def test_routing_by_line_device_and_kind_globs(webhook, publisher, start_notifier):
    line = unique("line")
    other = unique("other")
    notifier = start_notifier(
        webhook_channel("presses", webhook.url("/presses"))
        + webhook_channel("faults", webhook.url("/faults"))
        + route("presses", ["presses"], line=line, device="press-*")
        + route("faults", ["faults"], line=f"{line}*", kind="sensor_fault")
        + route("overlap", ["presses"], line=line, device="press-0?")  # overlaps: still one post
    )
    sends = [
        (line, "press-01", "process_anomaly"),  # presses
        (line, "pump-01", "sensor_fault"),  # faults
        (line, "press-02", "sensor_fault"),  # presses + faults
        (other, "press-01", "process_anomaly"),  # no route
    ]
    for where, device, kind in sends:
        extra = (
            {"fault": "stuck", "detail": "temperature_c unchanged"}
            if kind == "sensor_fault"
            else {}
        )
        payload, _ = alert_message(where, device, kind=kind, **extra)
        publisher.publish(payload, where, device)
    notifier.wait_metric("notifier_alerts_unrouted_total", lambda v: v == 1)
    webhook.wait_for(lambda p: True, count=4)
    notifier.wait_metric("notifier_outbox_pending", lambda v: v == 0)
    got = sorted((p.path, p.body["alert"]["device"]) for p in webhook.matching())
    assert got == [
        ("/faults", "press-02"),
        ("/faults", "pump-01"),
        ("/presses", "press-01"),
        ("/presses", "press-02"),
    ]
    fault = webhook.matching(lambda p: p.body["alert"]["device"] == "pump-01")[0]
    assert "[FIRING] sensor_fault (stuck)" in fault.body["text"]
    assert "temperature_c unchanged" in fault.body["text"]


def test_rate_limit_and_storm_fold_into_one_digest(webhook, publisher, start_notifier):
    line = unique("line")
    window = 4.0
    notifier = start_notifier(
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], **only_line(line)),
        rate_limit=f"window_s = {window}\nper_device = 2\nplant = 5",
    )
    # Start right after a window boundary so the whole burst falls in one window.
    wait_until(lambda: time.time() % window < 0.3, window + 1, "a window start")
    sent = []
    for i in range(4):  # one device over its limit: 2 go out, 2 held
        payload, ident = alert_message(line, "press-hot", started_ns=1_796_551_200_000_000_000 + i)
        publisher.publish(payload, line, "press-hot")
        sent.append(ident)
    for d in range(6):  # a storm: plant limit 5 reached after 3 more
        payload, ident = alert_message(line, f"press-{d}")
        publisher.publish(payload, line, f"press-{d}")
        sent.append(ident)
    digest = webhook.wait_for(lambda p: p.body.get("digest") is True, timeout_s=window + 10)[0]
    immediate = webhook.matching(lambda p: p.body.get("digest") is False)
    assert len(immediate) == 5
    assert len(digest.body["alerts"]) == 5
    assert {a["alert_id"] for a in digest.body["alerts"]} | {
        p.body["alert"]["alert_id"] for p in immediate
    } == set(sent)
    assert digest.body["text"].startswith("[DIGEST] 5 more alerts (process_anomaly) from 4 devices")
    assert digest.key.startswith("digest:")
    assert notifier.metric("notifier_rate_limited_total", 'reason="device"') == 2
    assert notifier.metric("notifier_rate_limited_total", 'reason="plant"') == 3
    assert notifier.metric("notifier_digests_total", 'channel="chat"') == 1
    assert len(webhook.matching(lambda p: p.body.get("digest") is True)) == 1


def test_resolutions_are_quiet_unlimited_and_acknowledgements_say_who(
    tmp_path, webhook, smtp, publisher, start_notifier
):
    line = unique("line")
    password = tmp_path / "smtp-password"
    password.write_text(SMTP_PASSWORD)
    notifier = start_notifier(
        webhook_channel("chat", webhook.url())
        + email_channel("mail", smtp, password)
        + route("chat", ["chat"], **only_line(line))
        + route("mail", ["mail"], to=["shift@test.local"], send_resolved=False, **only_line(line)),
        rate_limit="window_s = 600.0\nper_device = 1\nplant = 100",
    )
    firing, ident = alert_message(line, "press-07")
    acked, _ = alert_message(
        line, "press-07", "acknowledged", acknowledged_by="anna",
        acknowledged_at="2026-12-06T10:05:00.000Z", note="checking the heater",
    )  # fmt: skip
    resolved, _ = alert_message(line, "press-07", "resolved")
    for payload in (firing, acked, resolved):
        publisher.publish(payload, line, "press-07")
    posts = webhook.wait_for(lambda p: True, count=3)
    mails = smtp.wait_for(lambda m: True, count=2)
    notifier.wait_metric("notifier_outbox_pending", lambda v: v == 0)
    by_event = {p.body["event"]: p for p in posts}
    assert by_event["firing"].body["quiet"] is False
    assert by_event["resolved"].body["quiet"] is True
    assert by_event["resolved"].body["text"].startswith(f"[RESOLVED] process_anomaly {line}/")
    assert by_event["acknowledged"].body["quiet"] is True
    assert (
        by_event["acknowledged"]
        .body["text"]
        .endswith("acknowledged by anna at 2026-12-06T10:05:00.000Z (checking the heater)")
    )
    assert by_event["resolved"].key == idempotency_key(ident, "resolved")
    # Not limited (per_device = 1): nothing was held.
    assert notifier.metric("notifier_rate_limited_total", 'reason="device"') == 0
    # The mail route does not send resolutions; the acknowledgement is low priority.
    assert sorted(m["X-Factory-Event"] for m in smtp.matching()) == ["acknowledged", "firing"]
    ack_mail = next(m for m in mails if m["X-Factory-Event"] == "acknowledged")
    assert ack_mail["Importance"] == "low" and ack_mail["X-Priority"] == "5"


def test_malformed_messages_are_counted_and_dropped(webhook, publisher, start_notifier):
    line = unique("line")
    notifier = start_notifier(
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], **only_line(line))
    )
    topic = f"factory/alerts/{line}/press-08"
    publisher.publish_raw(topic, b"not json")
    publisher.publish_raw(topic, b"[1, 2]")
    publisher.publish_raw(topic, b'{"event": "firing", "line": "x"}')
    publisher.publish_raw(topic, b'{"alert_id": "XYZ", "event": "firing"}')
    silenced, _ = alert_message(line, "press-08", "silenced")
    publisher.publish_raw(topic, silenced)
    valid, _ = alert_message(line, "press-08")
    publisher.publish_raw(topic, valid)
    webhook.wait_for(lambda p: True)
    for reason in ("not_json", "not_object", "missing_field", "bad_field", "unsupported_event"):
        assert notifier.metric("notifier_bad_input_total", f'reason="{reason}"') == 1, reason
    log = notifier.log.read_text()
    assert "dropped alert message" in log and "no 'alert_id'" in log
    assert len(webhook.matching()) == 1


def test_outbox_bound_pauses_intake_and_loses_nothing(webhook, publisher, start_notifier):
    line = unique("line")
    webhook.mode = 500
    notifier = start_notifier(
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], **only_line(line)),
        outbox="max_pending = 3",
        retry="min_s = 0.2\nmax_s = 0.5\nmax_age_s = 3600.0",
    )
    idents = []
    for i in range(10):
        payload, ident = alert_message(line, f"press-{i}")
        publisher.publish(payload, line, f"press-{i}")
        idents.append(ident)
    notifier.wait_metric("notifier_intake_paused", lambda v: v == 1)
    notifier.wait_metric("notifier_outbox_pending", lambda v: v == 3)
    assert notifier.metric("notifier_alerts_received_total") == 3
    assert len(outbox_keys(notifier.outbox_path)) == 3
    webhook.mode = "ok"
    notifier.wait_metric(
        "notifier_delivered_total", lambda v: v == 10, 'channel="chat"', timeout_s=30
    )
    assert sorted(p.key for p in webhook.delivered()) == sorted(
        idempotency_key(i, "firing") for i in idents
    )
    notifier.wait_metric("notifier_intake_paused", lambda v: v == 0)
    assert "intake paused" in notifier.log.read_text()


def test_systemd_ready_watchdog_and_ordered_stop(fake_systemd, webhook, start_notifier):
    socket_path, messages = fake_systemd
    notifier = start_notifier(
        webhook_channel("chat", webhook.url()) + route("all", ["chat"], line=unique("line")),
        env={"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "400000"},
    )
    wait_until(lambda: any("READY=1" in m for m in messages), 10, "READY=1")
    wait_until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 2, 10, "watchdog pings")
    assert notifier.stop() == 0
    assert any("STOPPING=1" in m for m in messages)
    log = notifier.log.read_text()
    assert "received SIGTERM" in log and log.rstrip().endswith("stopped")
