"""Contract <-> storage round trip: whatever the contract accepts is stored exactly as
sent and reads back identically.

Hypothesis draws readings from the contract's own accepted set (line and device
names with any character the contract allows, every field alias, values across the
whole float range of a field, ``seq`` up to 2^63-1, ``ts`` in the accepted window),
decodes them with the contract, encodes them with the gateway's own encoder, writes
them through the gateway's own sinks to a real InfluxDB 1.x and to the v2 write path
(VictoriaMetrics; no InfluxDB 2.x is installable here), and reads every point back.
"""

from __future__ import annotations

import itertools
import math
import shutil
import time

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from contract import DEFAULT_FIELDS, DecodeLimits, FieldSpec, Rejected, decode_reading
from contract.lineprotocol import ReadingEncoder
from contract.reading import MAX_SEQ, Reading
from contract.topics import parse_reading_topic, valid_name
from devstack.influxdb import query
from devstack.process import free_port, wait_until
from devstack.victoria import VictoriaMetrics
from gateway.config import InfluxConfig
from gateway.sinks import InfluxV1Sink, InfluxV2Sink

pytestmark = pytest.mark.integration

# An extra field a plant configures, unbounded: any finite float must round-trip.
EXTRA = FieldSpec("vibration_mm_s", "mm/s", -math.inf, math.inf, aliases=("vibration",))
LIMITS = DecodeLimits(fields=(*DEFAULT_FIELDS, EXTRA), required=())
NOW_NS = time.time_ns()
_examples = itertools.count()

# Characters with a meaning in line protocol, InfluxQL, JSON or MQTT come up often;
# the contract's own rule then keeps exactly the characters it accepts.
SPECIAL = ",= \"'\\{}()[]|*?$.:;-_#+/\t\u00e9\u2713\U0001f600"
names = (
    st.text(
        st.sampled_from(SPECIAL) | st.characters(codec="utf-8", exclude_categories=("Cs",)),
        min_size=1,
        max_size=64,
    )
    .map(lambda s: "".join(c for c in s if valid_name(c)))  # what the contract allows
    .filter(valid_name)
)


@st.composite
def accepted_reading(draw, line: str, device: str, index: int) -> tuple[bytes, Reading]:
    """One payload the contract accepts, and what the contract made of it."""
    body: dict[str, object] = {}
    for spec in LIMITS.fields:
        if draw(st.booleans()):
            key = draw(st.sampled_from((spec.name, *spec.aliases)))
            body[draw(st.sampled_from((key, key.upper())))] = draw(
                st.floats(spec.minimum, spec.maximum, allow_nan=False, allow_infinity=False)
                | st.integers(-50, 100).filter(lambda v, s=spec: s.minimum <= v <= s.maximum)
            )
    if draw(st.booleans()):
        body["seq"] = draw(st.integers(0, MAX_SEQ))
    # Distinct times (a reading per point); ms apart so the v2 store keeps each.
    base_s = NOW_NS / 1e9 - draw(st.integers(0, 29 * 86400))
    body["ts"] = draw(st.sampled_from((base_s + index / 100, _rfc3339(base_s + index / 100))))
    if not any(k.lower() in LIMITS.aliases for k in body):
        body["temperature_c"] = 20.0  # a reading carries at least one value
    payload = orjson.dumps(body)
    try:
        reading = decode_reading(f"factory/{line}/{device}/reading", payload, NOW_NS, LIMITS)
    except Rejected as exc:  # the draw stays inside the contract: a rejection is a bug
        raise AssertionError(f"contract refused {payload!r}: {exc}") from None
    return payload, reading


def _rfc3339(ts_s: float) -> str:
    whole = int(ts_s)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        + f".{int((ts_s - whole) * 1e6):06d}Z"
    )


@st.composite
def batches(draw) -> list[tuple[bytes, Reading, float, bool]]:
    line = draw(names)
    assume(_topic_ok(line))
    out = []
    for i in range(draw(st.integers(1, 6))):
        device = draw(names)
        payload, reading = draw(accepted_reading(line, device, i))
        score = draw(st.floats(0.0, 1.0) | st.just(math.nan))
        out.append((payload, reading, score, draw(st.booleans())))
    keys = [(r.device, r.ts_ns // 1_000_000) for _, r, _, _ in out]
    assume(len(set(keys)) == len(keys))
    return out


def _topic_ok(line: str) -> bool:
    try:
        parse_reading_topic(f"factory/{line}/d/reading")
    except ValueError:
        return False
    return True


def encode(batch, version: str) -> list[str]:
    encoder = ReadingEncoder()
    return [encoder.scored(r, version, score, flag) for _, r, score, flag in batch]


def expected_fields(reading: Reading, score: float, flag: bool) -> dict[str, object]:
    fields: dict[str, object] = dict(reading.values)
    if math.isnan(score):
        fields["warming_up"] = True
    else:
        fields["score"] = score
        fields["is_anomaly"] = flag
    if reading.seq is not None:
        fields["seq"] = reading.seq
    return fields


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def v1_sink(influxdb):
    database = f"roundtrip_{free_port()}"
    influxdb.create_database(database)
    sink = InfluxV1Sink(InfluxConfig(url=influxdb.url, database=database))
    yield influxdb.url, database, sink
    sink.close()


@SETTINGS
@given(batch=batches())
def test_every_accepted_reading_reads_back_identically_from_influxdb_1x(v1_sink, batch):
    url, database, sink = v1_sink
    version = f"rt{next(_examples)}"
    sink.write(encode(batch, version), timeout_s=10)
    rows = query(url, f"SELECT * FROM reading WHERE model_version = '{version}'", database)
    got = {}
    for series in rows:
        for row in series["values"]:
            record = dict(zip(series["columns"], row, strict=True))
            key = (record.pop("line"), record.pop("device"), record.pop("time"))
            del record["model_version"]
            got[key] = {k: v for k, v in record.items() if v is not None}
    assert len(got) == len(batch)
    for _payload, reading, score, flag in batch:
        stored = got[(reading.line, reading.device, reading.ts_ns)]
        expected = expected_fields(reading, score, flag)
        assert stored.keys() == expected.keys()
        for name, value in expected.items():
            if type(value) is float:  # the same float, bit for bit (InfluxDB's JSON may
                assert float(stored[name]) == value, name  # spell a large one as an int)
            else:
                assert stored[name] == value and type(stored[name]) is type(value), name


@pytest.fixture(scope="module")
def v2_sink(tmp_path_factory):
    if shutil.which("victoria-metrics") is None:
        pytest.fail("victoria-metrics is not installed; run `make test` (it installs it)")
    vm = VictoriaMetrics(tmp_path_factory.mktemp("vm-roundtrip"), free_port()).start()
    sink = InfluxV2Sink(InfluxConfig(api=2, url=vm.url, bucket="roundtrip", org="test"))
    yield vm, sink
    sink.close()
    vm.stop()


@SETTINGS
@given(batch=batches())
def test_every_accepted_reading_reads_back_through_the_v2_write_path(v2_sink, batch):
    vm, sink = v2_sink
    version = f"rt{next(_examples)}"
    sink.write(encode(batch, version), timeout_s=10)
    # VictoriaMetrics keeps one series per field (reading_<field>), time in milliseconds
    # and numbers as decimals: about 12 significant digits of the largest value stored
    # beside them, and magnitudes as small as 5e-324 become 0.  Names must come back
    # exactly, values to that precision (InfluxDB 1.x above shows them exact, bit for bit).
    expected = {}
    for _payload, reading, score, flag in batch:
        for field, value in expected_fields(reading, score, flag).items():
            key = (reading.line, reading.device, field, reading.ts_ns // 1_000_000)
            expected[key] = float(value)

    def stored() -> dict[tuple[str, str, str, int], float]:
        vm.flush()
        got = {}
        for series in vm.export(f'{{model_version="{version}"}}'):
            labels = series["metric"]
            field = labels["__name__"].removeprefix("reading_")
            for ts_ms, value in zip(series["timestamps"], series["values"], strict=True):
                got[(labels["line"], labels["device"], field, ts_ms)] = value
        return got

    # New series become searchable a moment after the write is acknowledged.
    wait_until(lambda: len(stored()) >= len(expected), 10, "the points in VictoriaMetrics")
    got = stored()
    assert got.keys() == expected.keys()
    largest: dict[tuple[str, str, str], float] = {}
    for (line, device, field, _), value in expected.items():
        largest[line, device, field] = max(largest.get((line, device, field), 0.0), abs(value))
    for key, value in expected.items():
        assert got[key] == pytest.approx(
            value, rel=1e-11, abs=max(1e-11 * largest[key[:3]], 1e-20)
        ), key
