"""The notifier's decisions without a broker: routing, rate limit, backoff, parsing,
rendering, the outbox (a real SQLite file) and the intake, with an injected clock."""

from __future__ import annotations

import random
import tempfile

import orjson
import pytest

from common.config import ConfigError, load_config
from contract.alerting import idempotency_key
from notify.alerts import BadAlert, parse_alert
from notify.backoff import retry_delay
from notify.channels.base import Outcome
from notify.channels.email import build_message, message_id
from notify.channels.webhook import classify_status
from notify.config import NotifierConfig, RateLimitConfig, RetryConfig, load_notifier_config
from notify.intake import AlertIntake
from notify.metrics import NotifierMetrics
from notify.outbox import Outbox
from notify.ratelimit import RateLimiter
from notify.render import _with_link, alert_text, render
from notify.routing import Router
from tests.helpers import ROOT
from tests.notify_servers import alert_message


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(text: str) -> NotifierConfig:
    """The config a file with ``text`` gives, without environment overrides."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as fh:
        fh.write(text)
        fh.flush()
        return load_config(NotifierConfig, fh.name, "NO_ENV", env={})


ROUTES = """
[[webhook]]
name = "chat"
url = "http://127.0.0.1:1/hook"
[[webhook]]
name = "faults"
url = "http://127.0.0.1:1/faults"
[[webhook]]
name = "off"
url = "http://127.0.0.1:1/off"
enabled = false
[[email]]
name = "mail"
starttls = false
[[route]]
name = "presses"
line = "line1"
device = "press-*"
channels = ["chat", "mail", "off"]
to = ["a@x", "b@x"]
[[route]]
name = "faults"
kind = "sensor_fault"
channels = ["faults", "mail"]
to = ["b@x", "c@x"]
send_resolved = false
[[route]]
name = "acks"
events = ["acknowledged"]
channels = ["chat"]
"""


def alert(line="line1", device="press-01", event="firing", kind="process_anomaly", **kw):
    payload, _ = alert_message(line, device, event, kind=kind, **kw)
    return parse_alert(payload)


# --- routing --------------------------------------------------------------------------


def test_all_matching_routes_apply_once_per_channel_and_recipient():
    router = Router(config(ROUTES))
    targets = router.targets(alert(kind="sensor_fault", fault="stuck"))
    got = sorted((t.channel, t.recipient, t.route) for t in targets)
    assert got == [
        ("chat", "", "presses"),
        ("faults", "", "faults"),
        ("mail", "a@x", "presses"),
        ("mail", "b@x", "presses"),  # also on route "faults": first match keeps it
        ("mail", "c@x", "faults"),
    ]


def test_routes_filter_by_glob_event_and_send_resolved():
    router = Router(config(ROUTES))
    assert router.targets(alert(line="line2", device="press-01")) == []
    assert router.targets(alert(device="pump-01")) == []
    fault_resolved = router.targets(alert(device="pump-01", event="resolved", kind="sensor_fault"))
    assert fault_resolved == []  # send_resolved = false
    acked = router.targets(alert(line="line9", device="x", event="acknowledged"))
    assert [(t.channel, t.route) for t in acked] == [("chat", "acks")]


def test_config_refuses_unknown_channels_and_mail_routes_without_recipients():
    with pytest.raises(ConfigError, match="unknown channels"):
        config('[[route]]\nname = "r"\nchannels = ["nope"]\n')
    with pytest.raises(ConfigError, match="need `to`"):
        config('[[email]]\nname = "m"\n[[route]]\nname = "r"\nchannels = ["m"]\n')
    with pytest.raises(ConfigError, match="exactly one of url"):
        config('[[webhook]]\nname = "w"\n')
    with pytest.raises(ConfigError, match="without STARTTLS"):
        config('[[email]]\nname = "m"\nstarttls = false\nusername = "u"\npassword_file = "f"\n')


def test_shipped_config_loads_with_the_fixed_session_id():
    cfg = load_notifier_config(ROOT / "config" / "notifier.toml")
    assert cfg.mqtt.client_id == "factory-notifier"
    assert {r.name for r in cfg.route} and not cfg.enabled_channels()


# --- rate limit -----------------------------------------------------------------------


def test_rate_limit_per_device_then_plant_and_a_new_window_resets():
    clock = Clock(600.0 * 1000 + 1)
    limiter = RateLimiter(RateLimitConfig(window_s=600, per_device=2, plant=3), clock)
    decisions = []
    for device in ("a", "a", "a", "b", "c"):
        d = limiter.decide("l", device)
        decisions.append(d.reason)
        if not d.hold:
            limiter.record("l", device)
    assert decisions == ["", "", "device", "", "plant"]
    assert limiter.decide("l", "a").window_end == 600.0 * 1001
    clock.now += 600
    assert not limiter.decide("l", "a").hold


def test_rate_limit_seeded_from_what_was_sent_this_window():
    clock = Clock(10.0)
    limiter = RateLimiter(RateLimitConfig(window_s=60, per_device=2, plant=10), clock)
    limiter.seed([("l", "a", 2)])
    assert limiter.decide("l", "a").hold and not limiter.decide("l", "b").hold


# --- backoff --------------------------------------------------------------------------


def test_backoff_doubles_caps_and_jitters_downwards():
    cfg = RetryConfig(min_s=1, max_s=10, factor=2, jitter=0.0)
    assert [retry_delay(cfg, n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert retry_delay(cfg, 10_000) == 10  # no overflow
    jittered = RetryConfig(min_s=1, max_s=10, factor=2, jitter=0.2)
    rng = random.Random(1)
    draws = [retry_delay(jittered, 3, rng) for _ in range(200)]
    assert all(3.2 <= d <= 4.0 for d in draws) and len(set(draws)) > 100


# --- parsing and rendering --------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "not_json"),
        (b"[]", "not_object"),
        (b'{"event": "firing"}', "missing_field"),
        (b'{"alert_id": "0123", "event": "firing"}', "bad_field"),
        (b'{"alert_id": "0123456789abcdef", "event": "opened"}', "unsupported_event"),
        (b'{"alert_id": "0123456789abcdef", "event": "firing", "line": 3}', "bad_field"),
        (b"x" * 70_000, "too_large"),
    ],
)
def test_malformed_alerts_have_a_reason(payload, reason):
    with pytest.raises(BadAlert) as err:
        parse_alert(payload)
    assert err.value.reason == reason


def test_repeated_alerts_are_told_apart_by_their_reading_time():
    first = alert(event="repeated", ts_ns=1_796_551_300_000_000_000)
    second = alert(event="repeated", ts_ns=1_796_551_600_000_000_000)
    assert first.key != second.key
    assert first.key == idempotency_key(first.alert_id, "repeated", first.ts)


def test_webhook_status_classes():
    assert classify_status(204) is Outcome.DELIVERED
    for status in (408, 429, 500, 502, 503):
        assert classify_status(status) is Outcome.RETRY
    for status in (400, 401, 403, 404, 410, 413):
        assert classify_status(status) is Outcome.PERMANENT


# --- outbox and intake ------------------------------------------------------------------


@pytest.fixture
def intake_parts(tmp_path):
    cfg = config(ROUTES.replace('name = "mail"\nstarttls = false', 'name = "mail"'))
    clock = Clock(6_000.0)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    limiter = RateLimiter(RateLimitConfig(window_s=60, per_device=1, plant=10), clock)
    metrics = NotifierMetrics(["chat", "faults", "mail"])
    woken = []
    intake = AlertIntake(outbox, Router(cfg), limiter, metrics, lambda: woken.append(1), clock)
    yield intake, outbox, clock, woken
    outbox.close()


def test_intake_queues_once_holds_over_limit_and_folds_a_digest(intake_parts):
    intake, outbox, clock, woken = intake_parts
    first, _ = alert_message("line1", "press-01")
    intake.handle("t", first)
    intake.handle("t", first)  # redelivery: nothing new
    assert outbox.counts()["pending"] == 3 and outbox.open_count == 3 and len(woken) == 1
    later, _ = alert_message("line1", "press-01", started_ns=1_796_551_300_000_000_000)
    intake.handle("t", later)  # over per_device = 1: held
    resolved, _ = alert_message("line1", "press-01", "resolved")
    intake.handle("t", resolved)  # never limited
    counts = outbox.counts()
    assert counts["held"] == 3 and counts["pending"] == 6
    assert outbox.fold_held(clock.now) == []  # window not over yet
    clock.now += 60
    digests = outbox.fold_held(clock.now)
    assert sorted((d.channel, d.recipient) for d in digests) == [
        ("chat", ""),
        ("mail", "a@x"),
        ("mail", "b@x"),
    ]
    assert outbox.counts()["folded"] == 3 and outbox.open_count == 9
    rendered = render(digests[0], 60)
    assert rendered.webhook_body["digest"] is True and len(rendered.webhook_body["alerts"]) == 1
    assert rendered.text.startswith("[DIGEST] 1 more alerts (process_anomaly) from 1 device")


def test_the_end_of_an_alert_seen_only_in_a_digest_goes_to_a_digest_too(intake_parts):
    """A storm's resolutions and acknowledgements must not arrive one by one."""
    intake, outbox, clock, _ = intake_parts
    started = [1_796_551_200_000_000_000 + i for i in range(3)]
    for ns in started:  # per_device = 1: the first goes out, two are held
        intake.handle("t", alert_message("line1", "press-01", started_ns=ns)[0])
    held_resolved, _ = alert_message("line1", "press-01", "resolved", started_ns=started[1])
    intake.handle("t", held_resolved)  # its firing is held: held with it
    sent_resolved, _ = alert_message("line1", "press-01", "resolved", started_ns=started[0])
    intake.handle("t", sent_resolved)  # its firing went out alone: so does this
    counts = outbox.counts()
    assert counts["held"] == 9 and counts["pending"] == 6
    registry = intake._metrics.registry
    assert (
        registry.get_sample_value("notifier_rate_limited_total", {"reason": "follows_digest"}) == 1
    )
    clock.now += 60
    (digest, *_) = outbox.fold_held(clock.now)
    text = render(digest, 60).text
    assert text.startswith("[DIGEST] 2 more alerts (process_anomaly) from 1 device")
    assert text.endswith("; also 1 resolved of earlier ones")

    # Next window: the last held alert resolves; it reached people only in a digest.
    last, _ = alert_message("line1", "press-01", "acknowledged", started_ns=started[2],
                            acknowledged_by="ana")  # fmt: skip
    intake.handle("t", last)
    assert outbox.counts()["held"] == 3
    clock.now += 60
    (digest, *_) = outbox.fold_held(clock.now)
    rendered = render(digest, 60)
    assert rendered.quiet and rendered.webhook_body["quiet"] is True
    assert rendered.text.startswith("[DIGEST] 1 acknowledged (process_anomaly) on 1 device")
    assert (
        rendered.subject
        == "[DIGEST] 1 acknowledged (process_anomaly) on 1 device in the last 1 min"
    )


def test_outbox_settles_rows_and_seeds_the_limiter_after_restart(tmp_path, intake_parts):
    intake, outbox, clock, _ = intake_parts
    payload, _ = alert_message("line1", "press-02")
    intake.handle("t", payload)
    (row, *_) = outbox.due("chat", clock.now)
    outbox.retry_later(row, clock.now + 5, "HTTP 500")
    assert outbox.due("chat", clock.now) == [] and outbox.next_due("chat") == clock.now + 5
    (row,) = outbox.due("chat", clock.now + 5)
    assert row.attempts == 1
    outbox.mark_delivered(row, clock.now + 5)
    assert outbox.counts()["delivered"] == 1 and outbox.open_count == 2
    assert outbox.sent_since(clock.now - 1) == [("line1", "press-02", 1)]
    assert outbox.drop_channels_except({"mail"}, clock.now) == 0
    assert outbox.drop_channels_except(set(), clock.now) == 2
    assert outbox.open_count == 0


def test_email_message_is_deterministic_and_quiet_when_resolved(tmp_path, intake_parts):
    intake, outbox, clock, _ = intake_parts
    payload, ident = alert_message("line1", "press-03", "resolved")
    intake.handle("t", payload)
    row = next(r for r in outbox.due("mail", clock.now) if r.recipient == "a@x")
    rendered = render(row, 600)
    msg = build_message(rendered, "a@x", "from@x", "example.test")
    again = build_message(render(row, 600), "a@x", "from@x", "example.test")
    assert msg["Message-ID"] == again["Message-ID"] == message_id(row.key, "a@x", "example.test")
    assert msg["Subject"] == "[RESOLVED] process_anomaly line1/press-03"
    assert msg["Importance"] == "low"
    assert orjson.loads(row.body)["alert_id"] == ident


def test_the_demo_notifier_config_loads_and_routes_everything_to_the_inbox(tmp_path):
    from devstack.demo import INBOX_PORT, notifier_config
    from notify.config import load_notifier_config

    cfg = load_notifier_config(notifier_config(tmp_path / "notifier.toml"))
    (hook,) = cfg.webhook
    assert hook.url == f"http://127.0.0.1:{INBOX_PORT}/hook"
    (everything,) = cfg.route
    assert everything.channels == ("demo-inbox",)


def test_firing_and_reminders_link_to_the_page_where_people_acknowledge():
    page = "http://gateway-pi:5000/"
    firing, _ = alert_message("line1", "press-01")
    alert = orjson.loads(firing)
    text = _with_link(alert_text(alert), alert, page)
    assert text.endswith(f"; since {alert['started']}. Acknowledge or label it: {page}")
    resolved = {**alert, "event": "resolved"}
    assert page not in _with_link(alert_text(resolved), resolved, page)
    assert _with_link("x", alert, "") == "x"


def test_a_webhook_body_is_json_or_text():
    from notify.config import WebhookChannel

    assert WebhookChannel("a", url="http://x/", body="text").body == "text"
    with pytest.raises(ValueError, match="body must be 'json' or 'text'"):
        WebhookChannel("a", url="http://x/", body="xml")
