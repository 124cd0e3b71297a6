"""The gateway core in process, without a broker or a database: fake MQTT messages in,
the outbox (publishes, points, origins, acks) out, with the real trained model."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import orjson
import pytest

from contract import Rejected
from gateway.config import DriftConfig, GatewayConfig, SensorFaultConfig
from gateway.deadletters import DeadLetters
from gateway.drift_watch import DriftTransition
from gateway.inbox import Inbox
from gateway.intake import Message
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, Sender
from gateway.pipeline import Processor
from gateway.stages.chain import Chain, build_chain
from gateway.writer import WriteBatch
from model.scorer import Scorer, load_scorer

GATEWAY = "gw-stages"
ANOMALOUS = b'{"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}'
NORMAL = b'{"temperature_c": 60, "humidity_pct": 45, "sound_db": 75}'
OUT_OF_RANGE = b'{"temperature_c": 60, "humidity_pct": 140, "sound_db": 75}'
SESSION = object()  # stands for the MQTT session that acknowledges a message


@pytest.fixture(scope="module")
def scorer(models_dir: Path) -> Scorer:
    return load_scorer(models_dir / "current")


class FakeWriter:
    """Records write batches in the same list as the publishes, to check their order."""

    depth = 0
    unacked = 0

    def __init__(self, events: list):
        self._events = events

    def submit(self, batch: WriteBatch) -> None:
        self._events.append(("write", batch))


class Rig:
    """A processor with the app's stages, a recording publish and a fake writer."""

    def __init__(self, scorer: Scorer, **changes):
        self.cfg = dataclasses.replace(GatewayConfig(id=GATEWAY), **changes)
        self.metrics = GatewayMetrics(GATEWAY)
        self.events: list = []
        self.fatal: list[BaseException] = []
        self.inbox: Inbox[Message] = Inbox(capacity=100)
        self.chain: Chain = build_chain(self.cfg, self.metrics)
        publish = lambda topic, payload, retain: self.events.append(  # noqa: E731
            ("publish", topic, payload, retain)
        )
        self.sender = Sender(publish, DeadLetters(publish, self.metrics), FakeWriter(self.events))
        self.model = lambda: scorer  # the model holder's current model
        self.processor = Processor(
            self.cfg.pipeline,
            self.inbox,
            self.current,
            self.chain,
            self.sender,
            self.metrics,
            on_fatal=self.fatal.append,
        )

    def current(self) -> Scorer:
        return self.model()

    def process(self, *messages: Message) -> Outbox:
        return self.processor.process(list(messages))

    def published(self, prefix: str = "factory/") -> list[tuple[str, dict, bool]]:
        """(topic, JSON body, retain) of what was published under ``prefix``, in order."""
        return [
            (e[1], orjson.loads(e[2]), e[3])
            for e in self.events
            if e[0] == "publish" and e[1].startswith(prefix)
        ]

    def writes(self) -> list[WriteBatch]:
        return [e[1] for e in self.events if e[0] == "write"]

    def metric(self, name: str, labels: dict | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


_mids = iter(range(1, 1_000_000))


def message(topic: str, payload: bytes, qos: int = 1) -> Message:
    return Message(topic, payload, next(_mids), qos, time.time_ns(), SESSION)


def reading(device: str, payload: bytes, line: str = "line1") -> Message:
    return message(f"factory/{line}/{device}/reading", payload)


def silence(line: str, device: str, hours: float = 1.0) -> Message:
    until = time.time() + hours * 3600
    return message(f"factory/silence/{line}/{device}", orjson.dumps({"until": until}))


def origin(msg: Message) -> tuple[str, bytes, int]:
    return (msg.topic, msg.payload, msg.received_ns)


def ack(msg: Message) -> tuple[object, int, int]:
    return (SESSION, msg.mid, msg.qos)


def test_a_valid_reading_is_one_point_with_its_origin(scorer):
    rig = Rig(scorer)
    msg = reading("press-01", NORMAL)
    out = rig.process(msg)
    assert len(out.points) == 1 and out.points[0].startswith("reading,device=press-01,line=line1")
    assert "score=" in out.points[0] and "is_anomaly=false" in out.points[0]
    assert out.origins == {0: origin(msg)} and out.readings == 1
    assert out.acks == [ack(msg)] and out.publishes == [] and out.dead_letters == []
    (batch,) = rig.writes()
    assert (batch.lines, batch.acks, batch.readings, batch.origins) == (
        out.points,
        out.acks,
        1,
        out.origins,
    )
    assert rig.published() == []


def test_a_rejected_message_is_dead_lettered_and_acknowledged(scorer):
    rig = Rig(scorer)
    bad = reading("press-01", b"garbage")
    out = rig.process(bad)
    assert out.points == [] and out.origins == {} and out.acks == [ack(bad)]
    ((topic, body, retain),) = rig.published()
    assert topic == "factory/deadletter/line1/press-01" and not retain
    assert body["reason"] == "not_json" and body["topic"] == bad.topic
    (batch,) = rig.writes()
    assert batch.lines == [] and batch.acks == [ack(bad)] and batch.readings == 0
    assert rig.metric("gateway_messages_rejected_total", {"reason": "not_json"}) == 1


def test_origins_follow_the_readings_points_behind_the_fault_points(scorer):
    """A rejected out-of-range reading fires a sensor fault whose points (its alert
    history and its fault period) come first: the readings' points still map to their
    own messages, in order."""
    rig = Rig(scorer)
    first, bad, second = (
        reading("press-01", NORMAL),
        reading("press-02", OUT_OF_RANGE),
        reading("press-03", NORMAL),
    )
    out = rig.process(first, bad, second)
    history, fault = out.points[:2]
    assert history.startswith(
        "alert_event,device=press-02,event=firing,fault=out_of_range,kind=sensor_fault,line=line1"
    )
    assert fault.startswith("sensor_fault,device=press-02,kind=out_of_range")
    assert out.origins == {2: origin(first), 3: origin(second)} and out.readings == 2
    assert [ack(m) for m in (first, bad, second)] == out.acks
    topics = [t for t, _, _ in rig.published()]
    # Dead letters first, then the alert (with the device's retained state).
    assert topics == [
        "factory/deadletter/line1/press-02",
        "factory/alerts/line1/press-02",
        "factory/state/line1/press-02",
    ]


def test_an_anomaly_is_an_alert_and_retained_state_before_the_write(scorer):
    rig = Rig(scorer)
    msg = reading("press-01", ANOMALOUS)
    out = rig.process(msg)
    assert "is_anomaly=true" in out.points[0] and out.origins == {0: origin(msg)}
    (alert, state) = rig.published()
    assert alert[0] == "factory/alerts/line1/press-01" and not alert[2]
    assert alert[1]["kind"] == "process_anomaly" and alert[1]["state"] == "firing"
    assert alert[1]["model_version"] == scorer.version and alert[1]["drivers"]
    assert state[0] == "factory/state/line1/press-01" and state[2]  # retained
    assert state[1]["firing"][0]["kind"] == "process_anomaly"
    assert state[1]["silenced_until"] is None
    assert [e[0] for e in rig.events] == ["publish", "publish", "write"]
    labels = {"kind": "process_anomaly", "state": "firing"}
    assert rig.metric("gateway_alerts_published_total", labels) == 1
    assert rig.metric("gateway_anomalies_total") == 1


def test_a_silence_then_an_anomaly_holds_the_alert_back_but_counts_it(scorer):
    rig = Rig(scorer)
    mute = silence("line1", "press-01")
    out = rig.process(mute, reading("press-01", ANOMALOUS), reading("press-02", ANOMALOUS))
    assert out.acks[0] == ack(mute) and out.readings == 2  # the silence is acked, not stored
    topics = [t for t, _, _ in rig.published()]
    assert "factory/alerts/line1/press-01" not in topics
    assert "factory/alerts/line1/press-02" in topics
    (state,) = [b for t, b, _ in rig.published("factory/state/line1/press-01")]
    assert state["firing"] and state["silenced_until"] is not None
    assert rig.metric("gateway_alerts_silenced_total") == 1
    # A later batch: still silenced; then the silence is lifted (empty payload).
    rig.events.clear()
    rig.process(message("factory/silence/line1/press-01", b""))
    assert rig.published() == []


def test_a_line_silence_covers_sensor_faults_too(scorer):
    rig = Rig(scorer)
    rig.process(silence("line1", "_all"))
    out = rig.process(reading("press-07", OUT_OF_RANGE))
    # Still stored: in the alert history as held back, and as a fault period.
    assert out.points[0].startswith("alert_event,device=press-07,event=silenced,")
    assert 'held="firing"' in out.points[0]
    assert out.points[1].startswith("sensor_fault,")
    topics = [t for t, _, _ in rig.published()]
    assert topics == ["factory/deadletter/line1/press-07", "factory/state/line1/press-07"]
    assert rig.metric("gateway_alerts_silenced_total") == 1


def test_a_malformed_silence_is_dead_lettered(scorer):
    rig = Rig(scorer)
    out = rig.process(
        message("factory/silence/line1/press-01", b'{"reason": "no end"}'),
        message("factory/silence/too/many/levels", b""),
    )
    assert out.points == [] and len(out.acks) == 2
    reasons = [(t, b["reason"]) for t, b, _ in rig.published()]
    assert reasons == [
        ("factory/deadletter/_unknown/_unknown", "missing_field"),
        ("factory/deadletter/_unknown/_unknown", "bad_topic"),
    ]


def test_decode_splits_readings_silences_and_rejections(scorer):
    rig = Rig(scorer)
    msgs = [
        reading("press-01", NORMAL),
        silence("line1", "press-01"),
        reading("press-02", b"[1]"),
        reading("press-03", NORMAL),
    ]
    decoded = rig.chain.decode(msgs, scorer)
    assert [r.device for r in decoded.readings] == ["press-01", "press-03"]
    assert decoded.messages == [msgs[0], msgs[3]]
    assert [(c.line, c.device) for c in decoded.silences] == [("line1", "press-01")]
    ((msg, rej),) = decoded.rejected
    assert msg is msgs[2] and isinstance(rej, Rejected) and rej.reason == "not_object"


def test_deadman_faults_go_out_through_the_notify_stage(scorer):
    faults = SensorFaultConfig(deadman_s=5.0)
    rig = Rig(scorer, sensor_faults=faults)
    rig.chain.batch([reading("press-01", NORMAL)], scorer, now=100.0)
    out = Outbox()
    rig.chain.deadman(scorer.version, 106.0, out)
    assert out.points[1].startswith("sensor_fault,device=press-01,kind=dropout")
    assert out.acks == [] and out.origins == {}
    (alert, state) = out.publishes
    assert orjson.loads(alert[1])["fault"] == "dropout"
    assert state[0] == "factory/state/line1/press-01" and state[2]


def _drift_rig(scorer: Scorer) -> Rig:
    # Every scored reading anomalous over a window of one: the alert rate drifts.
    drift = DriftConfig(alert_rate_window=1, alert_rate_min=0.5, check_interval_s=0.0)
    return Rig(scorer, drift=drift)


def test_a_drift_alert_goes_out_through_the_same_notify_path(scorer):
    rig = _drift_rig(scorer)
    rig.process(reading("press-01", ANOMALOUS))
    drift = [b for t, b, _ in rig.published(f"factory/alerts/_gateway/{GATEWAY}")]
    assert [(b["kind"], b["state"], b["line"], b["device"]) for b in drift] == [
        ("model_drift", "firing", "_gateway", GATEWAY)
    ]
    assert drift[0]["alert_rate"] == 1.0 and "retrain" in drift[0]["hint"]
    assert rig.published("factory/state/_gateway/") == []  # not a device: no retained state
    assert rig.metric("gateway_alerts_published_total", {"kind": "model_drift", "state": "firing"})


def test_a_silence_on_the_gateway_line_holds_drift_alerts_back(scorer):
    rig = _drift_rig(scorer)
    rig.process(silence("_gateway", GATEWAY))
    rig.process(reading("press-01", ANOMALOUS))
    assert rig.published("factory/alerts/_gateway/") == []
    assert rig.metric("gateway_alerts_silenced_total") == 1
    # The notify stage directly: a resolved drift transition, the silence lifted.
    rig.process(message(f"factory/silence/_gateway/{GATEWAY}", b""))
    out = Outbox()
    resolved = DriftTransition(GATEWAY, "resolved", time.time_ns(), "v1", {}, [], 0.0, 0.5)
    rig.chain.notify.drift(resolved, out)
    ((topic, payload, retain),) = out.publishes
    assert topic == f"factory/alerts/_gateway/{GATEWAY}" and not retain
    assert orjson.loads(payload)["state"] == "resolved" and orjson.loads(payload)["hint"] == ""


def test_the_processor_thread_hands_every_message_to_the_writer(scorer):
    rig = Rig(scorer)
    msgs = [reading(f"press-{i}", NORMAL) for i in range(5)]
    rig.processor.start()
    for msg in msgs:
        rig.inbox.put(msg)
    rig.processor.stop(10.0)
    assert not rig.processor.is_alive() and rig.processor.in_hand == 0
    assert [a for b in rig.writes() for a in b.acks] == [ack(m) for m in msgs]
    assert sum(b.readings for b in rig.writes()) == 5 and not rig.fatal


def test_a_failing_batch_stops_the_gateway_and_keeps_it_unacknowledged(scorer):
    rig = Rig(scorer)
    broken = threading.Event()

    def scorer_that_breaks() -> Scorer:
        broken.set()
        raise RuntimeError("boom")

    rig.model = scorer_that_breaks
    rig.inbox.put(reading("press-01", NORMAL))
    rig.processor.start()
    rig.processor.join(10.0)
    assert broken.is_set() and not rig.processor.is_alive()
    assert [str(e) for e in rig.fatal] == ["boom"]
    assert rig.processor.in_hand == 1 and rig.writes() == []


# --- alert identity, acknowledgement, history ---------------------------------------


def acknowledgement(device: str, body: dict | bytes, line: str = "line1") -> Message:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return message(f"factory/ack/{line}/{device}", payload)


def history(out: Outbox) -> list[str]:
    return [p for p in out.points if p.startswith("alert_event,")]


def test_an_alert_keeps_its_id_through_repeat_acknowledgement_and_resolution(scorer):
    alerts = dataclasses.replace(GatewayConfig().alerts, renotify_s=1e-9, resolve_after=1)
    rig = Rig(scorer, alerts=alerts)
    out = rig.process(reading("press-01", ANOMALOUS))
    ((_, first, _),) = rig.published("factory/alerts/")
    assert first["event"] == "firing" and first["state"] == "firing"
    alert_id = first["alert_id"]
    assert len(alert_id) == 16 and first["started"] == first["ts"]
    (point,) = history(out)
    assert point.startswith("alert_event,device=press-01,event=firing,kind=process_anomaly,")
    assert f'alert_id="{alert_id}"' in point

    rig.events.clear()
    rig.process(reading("press-01", ANOMALOUS))
    ((_, repeat, _),) = rig.published("factory/alerts/")
    assert (repeat["event"], repeat["alert_id"], repeat["state"]) == (
        "repeated",
        alert_id,
        "firing",
    )

    rig.events.clear()
    out = rig.process(
        acknowledgement("press-01", {"alert_id": alert_id, "by": "anna", "note": "on it"})
    )
    ((_, acked, _),) = rig.published("factory/alerts/")
    assert (acked["event"], acked["state"], acked["alert_id"]) == (
        "acknowledged",
        "firing",
        alert_id,
    )
    assert acked["acknowledged_by"] == "anna" and acked["note"] == "on it"
    assert acked["values"] == repeat["values"]  # the latest figures of the alert
    ((_, state, retained),) = rig.published("factory/state/")
    assert retained and state["firing"][0]["alert_id"] == alert_id
    assert state["firing"][0]["acknowledged_by"] == "anna"
    assert state["firing"][0]["acknowledged_at"] == acked["acknowledged_at"]
    (point,) = history(out)
    assert ",event=acknowledged," in point and 'by="anna"' in point and 'note="on it"' in point
    assert rig.metric("gateway_acks_total", {"result": "applied"}) == 1

    # Reminders stop; acknowledging again changes nothing.
    rig.events.clear()
    out = rig.process(
        reading("press-01", ANOMALOUS),
        acknowledgement("press-01", {"alert_id": alert_id, "by": "bo"}),
    )
    assert rig.published("factory/alerts/") == [] and history(out) == []
    assert rig.metric("gateway_reminders_held_total") >= 1
    assert rig.metric("gateway_acks_total", {"result": "repeated"}) == 1

    # It resolves with the same id, and the device state empties.
    rig.events.clear()
    for _ in range(50):
        out = rig.process(reading("press-01", NORMAL))
        resolved = rig.published("factory/alerts/")
        if resolved:
            break
    (end,) = [b for _, b, _ in resolved if b["kind"] == "process_anomaly"]
    assert (end["event"], end["state"], end["alert_id"]) == ("resolved", "resolved", alert_id)
    state = [b for _, b, _ in rig.published("factory/state/")][-1]
    assert all(f["kind"] != "process_anomaly" for f in state["firing"])


def test_acknowledgements_that_match_nothing_are_counted_and_bad_ones_dead_lettered(scorer):
    rig = Rig(scorer)
    out = rig.process(
        acknowledgement("press-01", {"alert_id": "0123456789abcdef", "by": "anna"}),
        acknowledgement("press-01", {"alert_id": "nope", "by": "anna"}),
        acknowledgement("press-01", {"alert_id": "0123456789abcdef"}),
        acknowledgement("press-01", b"{"),
        message("factory/ack/line1", b"{}"),
    )
    assert rig.metric("gateway_acks_total", {"result": "unknown"}) == 1
    reasons = [b["reason"] for _, b, _ in rig.published("factory/deadletter/")]
    assert reasons == ["bad_field", "missing_field", "not_json", "bad_topic"]
    assert len(out.acks) == 5 and out.points == []  # every message is settled


def test_a_restarted_gateway_takes_firing_alerts_over_from_the_retained_state(scorer):
    """The alert keeps its id and its acknowledgement across a restart, and resolves
    under that id instead of firing again as a new alert."""
    alerts = dataclasses.replace(GatewayConfig().alerts, renotify_s=1e-9, resolve_after=1)
    before = Rig(scorer, alerts=alerts)
    before.process(reading("press-01", ANOMALOUS))
    ((_, fired, _),) = before.published("factory/alerts/")
    alert_id = fired["alert_id"]
    before.process(acknowledgement("press-01", {"alert_id": alert_id, "by": "anna"}))
    (retained,) = [e[2] for e in before.events if e[0] == "publish" and "/state/" in e[1]][-1:]

    after = Rig(scorer, alerts=alerts)  # a new process: nothing in memory
    out = after.process(message("factory/state/line1/press-01", retained))
    assert after.metric("gateway_alerts_restored_total") == 1 and out.points == []
    # Still acknowledged: no reminder.
    after.process(reading("press-01", ANOMALOUS))
    assert (
        after.published("factory/alerts/") == []
        and after.metric("gateway_reminders_held_total") >= 1
    )
    for _ in range(50):
        after.process(reading("press-01", NORMAL))
        ends = [
            b for _, b, _ in after.published("factory/alerts/") if b["kind"] == "process_anomaly"
        ]
        if ends:
            break
    (end,) = ends
    assert (end["event"], end["alert_id"], end["started"]) == (
        "resolved",
        alert_id,
        fired["started"],
    )
    # A state message for an alert already open here changes nothing.
    again = Rig(scorer, alerts=alerts)
    again.process(reading("press-02", ANOMALOUS))
    ((_, other, _),) = again.published("factory/alerts/")
    state = orjson.dumps({"firing": [{"kind": "process_anomaly", "alert_id": "0" * 16,
                                      "since": other["started"]}]})  # fmt: skip
    again.process(message("factory/state/line1/press-02", state))
    assert again.metric("gateway_alerts_restored_total") == 0


def test_malformed_device_states_are_dead_lettered(scorer):
    rig = Rig(scorer)
    rig.process(
        message("factory/state/line1/press-01", b"{"),
        message("factory/state/line1/press-01", b'{"firing": [{"kind": "x"}]}'),
        message("factory/state/line1/press-01", b'{"line": "line1"}'),
        message("factory/state/line1/press-01", b""),  # a cleared state: fine
    )
    reasons = [b["reason"] for _, b, _ in rig.published("factory/deadletter/")]
    assert reasons == ["not_json", "bad_field", "missing_field"]
