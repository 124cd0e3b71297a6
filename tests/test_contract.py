"""The wire contract: topics, aliases, validation and the reasons for rejection."""

from __future__ import annotations

import contextlib
import math
import re
import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contract import (
    FIELD_ALIASES,
    DecodeLimits,
    Rejected,
    TimestampError,
    decode_reading,
    encode_reading,
    parse_reading_topic,
    parse_wire_ns,
)
from contract.payloads import deadletter_payload

TOPIC = "factory/line1/press-01/reading"
NOW_NS = time.time_ns()


def decode(body: object, topic: str = TOPIC, limits: DecodeLimits | None = None):
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return decode_reading(topic, payload, NOW_NS, limits or DecodeLimits())


def reason(body: object, topic: str = TOPIC) -> tuple[str, str | None]:
    with pytest.raises(Rejected) as exc:
        decode(body, topic)
    return exc.value.reason, exc.value.field


def test_minimal_body_from_mosquitto_pub():
    r = decode(b'{"temperature_c": 71.2, "humidity_pct": 41.0, "sound_db": 68.5}')
    assert (r.line, r.device) == ("line1", "press-01")
    assert r.values == {"temperature_c": 71.2, "humidity_pct": 41.0, "sound_db": 68.5}
    assert r.ts_ns == NOW_NS  # missing ts -> receive time
    assert r.seq is None


@pytest.mark.parametrize(
    ("temp", "hum", "sound"),
    [
        ("temperature", "humidity", "noise"),
        ("Temperature_C", "Humidity_%", "Sound_Volume_dB"),
        ("TEMPERATURE", "HUMIDITY", "sound"),
        ("temperature", "humidity", "sound_volume"),
        ("temperature", "humidity", "loudness"),
    ],
)
def test_aliases_map_case_insensitively(temp, hum, sound):
    r = decode({temp: 20, hum: 50, sound: 60})
    assert r.values == {"temperature_c": 20.0, "humidity_pct": 50.0, "sound_db": 60.0}


def test_every_documented_alias_is_in_the_table():
    for alias in (
        "temperature",
        "humidity",
        "noise",
        "sound",
        "sound_volume",
        "loudness",
        "Temperature_C",
        "Humidity_%",
        "Sound_Volume_dB",
    ):
        assert alias.lower() in FIELD_ALIASES


def test_timestamps_rfc3339_and_epoch():
    r = decode(
        {
            "temperature_c": 1,
            "humidity_pct": 2,
            "sound_db": 3,
            "ts": "2026-11-22T06:00:00.250Z",
            "seq": 9,
        }
    )
    assert r.ts_ns == 1795327200_250_000_000 and r.seq == 9
    r = decode({"temperature_c": 1, "humidity_pct": 2, "sound_db": 3, "ts": 1795327200.5})
    assert r.ts_ns == 1795327200_500_000_000
    r = decode(
        {"temperature_c": 1, "humidity_pct": 2, "sound_db": 3, "ts": "2026-11-22T07:00:00+01:00"}
    )
    assert r.ts_ns == 1795327200_000_000_000


@pytest.mark.parametrize(
    ("ts", "detail"),
    [
        ("2026-11-22T06:00:00", "ts needs a UTC offset, e.g. 2026-11-22T10:00:00Z"),
        (1795327200000, "ts must be epoch seconds (value looks like milliseconds)"),
        ("1795327200", "ts is not RFC 3339: '1795327200'"),
        (True, "ts must be an RFC 3339 string or epoch seconds"),
    ],
)
def test_the_wire_keeps_its_timestamp_rules(ts, detail):
    """CSV options (naive times in a zone, --epoch-unit) never reach the wire."""
    with pytest.raises(Rejected) as caught:
        decode({"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "ts": ts})
    assert (caught.value.reason, caught.value.detail, caught.value.field) == (
        "bad_timestamp",
        detail,
        "ts",
    )
    # The same rules, by the same parser, as contract.timestamps.parse_wire_ns.
    with pytest.raises(TimestampError, match=re.escape(detail)):
        parse_wire_ns(ts)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", ("not_json", None)),
        (b'{"temperature_c": NaN, "humidity_pct": 1, "sound_db": 1}', ("not_json", None)),
        (b'{"temperature_c": Infinity, "humidity_pct": 1, "sound_db": 1}', ("not_json", None)),
        (b"[1, 2, 3]", ("not_object", None)),
        (b'"text"', ("not_object", None)),
        (
            {"temperature_c": "71", "humidity_pct": 1, "sound_db": 1},
            ("wrong_type", "temperature_c"),
        ),
        (
            {"temperature_c": True, "humidity_pct": 1, "sound_db": 1},
            ("wrong_type", "temperature_c"),
        ),
        (
            {"temperature_c": None, "humidity_pct": 1, "sound_db": 1},
            ("wrong_type", "temperature_c"),
        ),
        ({"temperature_c": 1, "humidity_pct": 1}, ("missing_field", "sound_db")),
        (
            {"temperature_c": 1, "humidity_pct": 101, "sound_db": 1},
            ("out_of_range", "humidity_pct"),
        ),
        # Valid JSON grammar that no float holds: not_finite, as the README says.
        (
            {"temperature_c": 1e308 * 10, "humidity_pct": 1, "sound_db": 1},
            ("not_finite", "temperature_c"),
        ),
        (b'{"temperature_c": NaN, "humidity_pct": 1, "sound_db": 1}', ("not_json", None)),
        (b'{"temperature_c": 1, "humidity_pct": 1, "sound_db": 1e999', ("not_json", None)),
        (
            {"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "ts": "yesterday"},
            ("bad_timestamp", "ts"),
        ),
        (
            {"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "ts": "2026-11-22T06:00:00"},
            ("bad_timestamp", "ts"),
        ),
        (
            {"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "ts": 1795327200000},
            ("bad_timestamp", "ts"),
        ),
        ({"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "ts": 0}, ("bad_timestamp", "ts")),
        (
            {"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "ts": NOW_NS / 1e9 + 3600},
            ("bad_timestamp", "ts"),
        ),
        ({"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "seq": -1}, ("bad_seq", "seq")),
        ({"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "seq": 1.5}, ("bad_seq", "seq")),
        # seq is stored as a signed 64-bit integer.
        ({"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "seq": 2**63}, ("bad_seq", "seq")),
    ],
)
def test_rejections_name_reason_and_field(body, expected):
    if isinstance(body, dict) and any(
        isinstance(v, float) and not math.isfinite(v) for v in body.values()
    ):
        body = b'{"temperature_c": 1e400, "humidity_pct": 1, "sound_db": 1}'
    assert reason(body) == expected


def test_too_large_is_rejected_before_parsing():
    body = (
        b'{"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "pad": "'
        + b"x" * 1_000_000
        + b'"}'
    )
    assert reason(body) == ("too_large", None)


@pytest.mark.parametrize(
    "topic",
    [
        "factory/line1/reading",
        "factory/alerts/x/reading",
        "plant/l/d/reading",
        "factory/l/d/status",
        "factory/l/d e v/reading",
        # A backslash cannot be stored exactly as an InfluxDB 1.x tag.
        "factory/l/dev\\/reading",
        "factory/l\\x/d/reading",
        "factory/cluster/d/reading",
        "factory/_part/d/reading",
    ],
)
def test_bad_topics(topic):
    assert reason({"temperature_c": 1, "humidity_pct": 1, "sound_db": 1}, topic)[0] == "bad_topic"


def test_seq_up_to_the_int64_limit_is_accepted():
    r = decode({"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "seq": 2**63 - 1})
    assert r.seq == 2**63 - 1


@pytest.mark.parametrize("name", ["score", "device", "time", "Temp", "1x", "a-b", "x" * 65])
def test_field_names_that_collide_with_the_schema_are_refused(name):
    from contract.fields import FieldSpec

    with pytest.raises(ValueError, match="field name"):
        FieldSpec(name, "", 0, 1)


def test_unknown_fields_are_ignored_not_stored():
    r = decode({"temperature_c": 1, "humidity_pct": 1, "sound_db": 1, "firmware": "1.2"})
    assert set(r.values) == {"temperature_c", "humidity_pct", "sound_db"}


def test_required_fields_follow_the_model():
    from contract.fields import DEFAULT_FIELDS, FieldSpec

    vib = FieldSpec("vibration_mm_s", "mm/s", 0, 100, aliases=("vibration",))
    limits = DecodeLimits(
        fields=(*DEFAULT_FIELDS, vib), required=("temperature_c", "vibration_mm_s")
    )
    r = decode({"temperature_c": 1, "vibration": 3.5}, limits=limits)
    assert r.values == {"temperature_c": 1.0, "vibration_mm_s": 3.5}
    with pytest.raises(Rejected, match="vibration_mm_s"):
        decode({"temperature_c": 1}, limits=limits)


def test_encode_round_trip():
    payload = encode_reading(
        {"temperature_c": 70.5, "humidity_pct": 40.0, "sound_db": 80.0}, ts=NOW_NS / 1e9, seq=4
    )
    r = decode(payload)
    assert r.values["temperature_c"] == 70.5 and r.seq == 4


def test_parse_topic():
    assert parse_reading_topic("factory/line-2/mill_07/reading") == ("line-2", "mill_07")


def test_deadletter_payload_keeps_a_prefix():
    body = deadletter_payload(TOPIC, b"\xff" * 5000, "not_json", "bad", None, NOW_NS)
    out = orjson.loads(body)
    assert out["truncated"] is True and out["payload_bytes"] == 5000
    assert out["reason"] == "not_json" and out["topic"] == TOPIC


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_rejected(data):
    with contextlib.suppress(Rejected):
        decode(data)


@given(
    st.dictionaries(
        st.text(max_size=20),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=True),
            st.text(max_size=10),
            st.lists(st.integers(), max_size=3),
        ),
        max_size=8,
    )
)
def test_arbitrary_objects_are_valid_or_rejected(obj):
    try:
        r = decode(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) if obj else b"{}")
    except (Rejected, TypeError):
        return
    assert all(math.isfinite(v) for v in r.values.values())


def test_every_topic_keeps_its_wire_string():
    import contract as c

    assert c.READING_SUBSCRIPTION == "factory/+/+/reading"
    assert c.reading_topic("l1", "d1") == "factory/l1/d1/reading"
    assert c.alert_topic("l1", "d1") == "factory/alerts/l1/d1"
    assert c.ALERTS_SUBSCRIPTION == "factory/alerts/#"
    assert c.alert_topic("l1", "d1").startswith(c.ALERTS_PREFIX)
    assert c.deadletter_topic("l1", "d1") == "factory/deadletter/l1/d1"
    assert c.DEADLETTER_SUBSCRIPTION == "factory/deadletter/#"
    assert c.state_topic("l1", "d1") == "factory/state/l1/d1"
    assert c.STATE_SUBSCRIPTION == "factory/state/#"
    assert c.silence_topic("l1", "_all") == "factory/silence/l1/_all"
    assert c.SILENCE_PREFIX == "factory/silence/"
    assert c.SILENCE_SUBSCRIPTION == "factory/silence/#"
    assert c.status_topic("gw-1") == "factory/gateway/gw-1/status"
    assert c.STATUS_SUBSCRIPTION == "factory/gateway/+/status"
    assert c.shared_reading_subscription("g") == "$share/g/factory/+/+/reading"
    assert c.partition_topic(3, "l1", "d1") == "factory/_part/3/l1/d1"
    assert c.partition_subscription(3) == "factory/_part/3/+/+"
    assert c.partition_ready_topic("g", 3) == "factory/cluster/g/partition/3"
    assert c.partition_ready_subscription("g") == "factory/cluster/g/partition/+"


def test_silence_topics_parse_to_line_and_device():
    from contract import SILENCE_ALL_DEVICES, TopicError, parse_silence_topic, silence_topic

    assert parse_silence_topic("factory/silence/line1/press-01") == ("line1", "press-01")
    assert parse_silence_topic(silence_topic("l", SILENCE_ALL_DEVICES)) == ("l", "_all")
    for bad in (
        "factory/silence/line1",
        "factory/silence/line1/",
        "factory/silence//d",
        "factory/silence/l/d/x",
        "factory/state/l/d",
    ):
        with pytest.raises(TopicError, match="silence topic is factory/silence/"):
            parse_silence_topic(bad)


def test_status_topics_parse_to_the_gateway_id():
    from contract import parse_status_topic, status_topic

    assert parse_status_topic(status_topic("gw-1")) == "gw-1"
    for other in (
        "factory/gateway/gw-1",
        "factory/gateway/gw-1/status/x",
        "factory/alerts/gw-1/status",
        "plant/gateway/gw-1/status",
        "factory/cluster/g/partition/1",
    ):
        assert parse_status_topic(other) is None


def test_partition_ready_topics_parse_to_the_partition_of_the_group():
    from contract import parse_partition_ready_topic, partition_ready_topic

    assert parse_partition_ready_topic(partition_ready_topic("g", 12), "g") == 12
    assert parse_partition_ready_topic(partition_ready_topic("g", 12), "other") is None
    assert parse_partition_ready_topic(partition_ready_topic("g2", 1), "g") is None
    for bad in ("", "x", "-1", "1/2", "\u00b2", "\u0663"):
        assert parse_partition_ready_topic(partition_ready_topic("g", bad), "g") is None
    assert parse_partition_ready_topic("factory/gateway/gw-1/status", "g") is None


def test_partition_topics_map_to_reading_topics_and_back():
    from contract import (
        parse_reading_topic,
        partition_topic,
        reading_topic,
        reading_topic_of_partition,
        split_reading_topic,
    )
    from contract.topics import UNKNOWN

    reading = reading_topic("line-2", "mill_07")
    line, device = split_reading_topic(reading)
    assert (line, device) == ("line-2", "mill_07")
    routed = partition_topic(5, line, device)
    assert reading_topic_of_partition(routed) == reading
    assert parse_reading_topic(reading_topic_of_partition(routed)) == ("line-2", "mill_07")
    # Unchecked on the hot path: the scorer's parse rejects what routing let through.
    assert split_reading_topic("factory/alerts/d/reading") == ("alerts", "d")
    assert split_reading_topic("factory/l/reading") == (UNKNOWN, UNKNOWN)
    assert reading_topic_of_partition("factory/_part/5") == "factory/_part/5"


@given(
    st.text(st.characters(exclude_characters="+#/ \\"), min_size=1, max_size=20),
    st.text(st.characters(exclude_characters="+#/ \\"), min_size=1, max_size=20),
    st.integers(min_value=0, max_value=4095),
)
def test_topic_builders_and_parsers_round_trip(line, device, p):
    from contract import (
        parse_silence_topic,
        partition_topic,
        reading_topic,
        reading_topic_of_partition,
        silence_topic,
        split_reading_topic,
    )

    assert split_reading_topic(reading_topic(line, device)) == (line, device)
    assert reading_topic_of_partition(partition_topic(p, line, device)) == reading_topic(
        line, device
    )
    assert parse_silence_topic(silence_topic(line, device)) == (line, device)


def test_the_readme_documents_every_dead_letter_reason():
    """README and behaviour agree: its table lists exactly the reasons the gateway uses."""
    import re

    from contract.reading import DEADLETTER_REASONS
    from tests.helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| reason | meaning |") :].split("\n\n", 1)[0]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    assert sorted(documented) == sorted(DEADLETTER_REASONS)
