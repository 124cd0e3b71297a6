"""Serial bridge units: line splitting, text checks, every format, scale/offset,
receipt timestamps, config; the read path through pyserial's ``loop://`` port."""

from __future__ import annotations

import argparse
import os
import threading
import time
from datetime import UTC, datetime

import orjson
import pytest
import serial

from common.config import ConfigError
from contract import Rejected
from sensors.serial_bridge.bridge import Backoff, SerialBridge, read_chunk
from sensors.serial_bridge.config import BridgeConfig, ParseSettings, add_arguments, build_config
from sensors.serial_bridge.lines import LineSplitter, NotText, TooLong, decode_line
from sensors.serial_bridge.parsers import LineParser, ReceiptClock, parse_kv, scalar
from tests.helpers import python_module

NOW_NS = time.time_ns()


class ListSink:
    """Collects what the bridge hands to its outbox; refuses beyond ``capacity``."""

    def __init__(self, capacity: int = 1_000_000):
        self.capacity = capacity
        self.sent: list[tuple[str, str, dict]] = []

    def publish(self, line: str, device: str, payload: bytes, *, block: bool = True) -> bool:
        assert block is False, "the bridge must never block on a full outbox"
        if len(self.sent) >= self.capacity:
            return False
        self.sent.append((line, device, orjson.loads(payload)))
        return True


def bridge_for(fmt: str = "json", **parse: object) -> tuple[SerialBridge, ListSink]:
    cfg = BridgeConfig(
        port="loop://", device="press-01", line="line1", parse=ParseSettings(format=fmt, **parse)
    )
    sink = ListSink()
    return SerialBridge(cfg, sink, threading.Event()), sink


# -- line splitting -------------------------------------------------------------------


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r", b"\n\r"])
def test_every_line_end_variant_gives_the_same_lines(end):
    data = end.join([b"a=1", b"b=2", b"c=3"]) + end
    assert LineSplitter().feed(data) == [b"a=1", b"b=2", b"c=3"]


def test_crlf_split_across_reads_gives_no_empty_line():
    splitter = LineSplitter()
    assert splitter.feed(b"one\r") == [b"one"]
    assert splitter.feed(b"\ntwo\r") == [b"two"]
    assert splitter.feed(b"\n") == []


def test_partial_lines_are_joined_across_reads():
    splitter = LineSplitter()
    out = [splitter.feed(bytes([b])) for b in b'{"a": 1}\nx']
    assert [line for chunk in out for line in chunk] == [b'{"a": 1}']
    assert splitter.reset() == 1  # the unfinished "x"
    assert splitter.reset() == 0


def test_over_long_line_is_reported_once_and_discarded_up_to_the_line_end():
    splitter = LineSplitter(max_line_bytes=64)
    out = splitter.feed(b"ok1\n" + b"x" * 50)
    out += splitter.feed(b"y" * 50)  # crosses the limit here
    out += splitter.feed(b"z" * 500)  # still the same line: discarded silently
    out += splitter.feed(b"zz\nok2\n")
    assert out == [b"ok1", TooLong(100), b"ok2"]


def test_over_long_complete_line_in_one_read():
    splitter = LineSplitter(max_line_bytes=64)
    assert splitter.feed(b"a" * 65 + b"\nok\n") == [TooLong(65), b"ok"]
    assert splitter.feed(b"a" * 64 + b"\n") == [b"a" * 64]  # exactly the limit is fine


def test_buffer_stays_bounded_whatever_arrives():
    splitter = LineSplitter(max_line_bytes=128)
    for _ in range(1000):
        splitter.feed(b"\x80" * 1000)
    assert splitter.reset() <= 128


# -- text checks ----------------------------------------------------------------------


def test_decode_line_strips_whitespace():
    assert decode_line(b"  temp=1 \t") == "temp=1"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe\x80garbage",  # invalid UTF-8
        bytes(range(0x80, 0xA0)),  # mojibake: wrong baud rate
        b"temp=1\x00\x00",  # NULs from a node resetting
        b"\x1b[2Jtemp=1",  # terminal escape
    ],
)
def test_binary_and_mojibake_are_not_text(raw):
    with pytest.raises(NotText):
        decode_line(raw)


# -- formats ------------------------------------------------------------------------------


def test_json_with_contract_names():
    parser = LineParser(ParseSettings())
    got = parser.parse('{"temperature_c": 21.5, "humidity_pct": 40, "sound_db": 55.5}', NOW_NS)
    assert got.values == {"temperature_c": 21.5, "humidity_pct": 40.0, "sound_db": 55.5}
    assert got.ts_ns == NOW_NS and got.seq is None and got.node_ts is None


def test_json_with_aliases_seq_and_node_ts():
    parser = LineParser(ParseSettings())
    ts = datetime.fromtimestamp(NOW_NS / 1e9 - 5, tz=UTC).isoformat().replace("+00:00", "Z")
    line = orjson.dumps(
        {"Temperature_C": 21.5, "Humidity_%": 40, "Sound_Volume_dB": 55, "SEQ": 9, "ts": ts}
    ).decode()
    got = parser.parse(line, NOW_NS)
    assert got.values == {"temperature_c": 21.5, "humidity_pct": 40.0, "sound_db": 55.0}
    assert got.seq == 9 and got.node_ts == ts
    assert abs(got.ts_ns - (NOW_NS - 5e9)) < 1e6


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"temperature_c": 21.5, "humidity_pct": 40', "not_json"),
        ("[21.5, 40, 55]", "not_object"),
        ('{"temperature_c": NaN, "humidity_pct": 40, "sound_db": 55}', "not_json"),
        ('{"temperature_c": "21.5", "humidity_pct": 40, "sound_db": 55}', "wrong_type"),
        ('{"temperature_c": 21.5, "humidity_pct": 40}', "missing_field"),
        ('{"temperature_c": 21.5, "humidity_pct": 140, "sound_db": 55}', "out_of_range"),
        (
            '{"temperature_c": 21.5, "humidity_pct": 40, "sound_db": 55, "ts": 123456}',
            "bad_timestamp",
        ),
        ('{"temperature_c": 21.5, "humidity_pct": 40, "sound_db": 55, "seq": -1}', "bad_seq"),
    ],
)
def test_json_rejections_carry_the_contract_reason(line, reason):
    with pytest.raises(Rejected) as info:
        LineParser(ParseSettings()).parse(line, NOW_NS)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "line",
    [
        "temp=21.5,humidity=40,noise=55,seq=3",
        "temp=21.5 humidity=40 noise=55 seq=3",
        "temp=21.5, humidity=40  noise=55;seq=3",
        "TEMPERATURE=21.5 RH=40 loudness=55 seq=3 uptime_ms=1234",
    ],
)
def test_key_value_separators_and_aliases(line):
    got = LineParser(ParseSettings(format="kv")).parse(line, NOW_NS)
    assert got.values == {"temperature_c": 21.5, "humidity_pct": 40.0, "sound_db": 55.0}
    assert got.seq == 3


def test_key_value_epoch_ts_passes_through():
    ts = int(NOW_NS / 1e9) - 2
    got = LineParser(ParseSettings(format="kv")).parse(
        f"temp=21.5 humidity=40 noise=55 ts={ts}", NOW_NS
    )
    assert got.node_ts == ts and got.ts_ns == ts * 1_000_000_000


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("temp=21.5 humidity 40 noise=55", "bad_kv"),
        ("temp=21.5 humidity= noise=55", "bad_kv"),
        ("temp=hot humidity=40 noise=55", "wrong_type"),
        ("temp=nan humidity=40 noise=55", "not_finite"),
        ("temp=21.5 humidity=40", "missing_field"),
    ],
)
def test_key_value_rejections(line, reason):
    with pytest.raises(Rejected) as info:
        LineParser(ParseSettings(format="kv")).parse(line, NOW_NS)
    assert info.value.reason == reason


def test_csv_with_configured_columns_and_skipped_column():
    settings = ParseSettings(
        format="csv", csv_columns=("seq", "temp", "_", "humidity", "noise"), csv_delimiter=";"
    )
    got = LineParser(settings).parse("17;21.5;ignored;40;55", NOW_NS)
    assert got.values == {"temperature_c": 21.5, "humidity_pct": 40.0, "sound_db": 55.0}
    assert got.seq == 17


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("21.5,40", "bad_csv"),
        ("21.5,40,55,1", "bad_csv"),
        ("temperature,humidity,sound", "wrong_type"),  # a header line
        ("21.5,40,-3", "out_of_range"),
    ],
)
def test_csv_rejections(line, reason):
    with pytest.raises(Rejected) as info:
        LineParser(ParseSettings(format="csv")).parse(line, NOW_NS)
    assert info.value.reason == reason


def test_scalar_cells():
    assert scalar(" 12 ") == 12 and isinstance(scalar("12"), int)
    assert scalar("-1.5e1") == -15.0
    assert scalar('"2026-01-01T00:00:00Z"') == "2026-01-01T00:00:00Z"
    assert parse_kv("a=1") == {"a": 1}


# -- scale and offset ---------------------------------------------------------------------


def test_scale_and_offset_turn_adc_counts_into_db_before_validation():
    settings = ParseSettings(format="csv", scale={"noise": 0.1}, offset={"sound_db": -5})
    got = LineParser(settings).parse("21.5,40,812", NOW_NS)
    assert got.values["sound_db"] == pytest.approx(812 * 0.1 - 5)
    assert got.values["temperature_c"] == 21.5  # other fields untouched
    # 2500 counts -> 245 dB: outside the sound_db range after scaling, so rejected.
    with pytest.raises(Rejected) as info:
        LineParser(settings).parse("21.5,40,2500", NOW_NS)
    assert info.value.reason == "out_of_range"


def test_scale_applies_to_json_and_leaves_bad_types_to_the_contract():
    parser = LineParser(ParseSettings(scale={"temperature_c": 0.01}))
    got = parser.parse('{"temp": 2150, "humidity_pct": 40, "sound_db": 55}', NOW_NS)
    assert got.values["temperature_c"] == pytest.approx(21.5)
    with pytest.raises(Rejected) as info:
        parser.parse('{"temp": "2150", "humidity_pct": 40, "sound_db": 55}', NOW_NS)
    assert info.value.reason == "wrong_type"


# -- receipt timestamps -----------------------------------------------------------------


def test_receipt_clock_is_strictly_increasing_in_whole_ms():
    clock = ReceiptClock()
    t = 1_763_800_000_123_456_789
    stamps = [clock.stamp(t) for _ in range(3)] + [clock.stamp(t + 10_000_000)]
    assert stamps == [
        "2025-11-22T08:26:40.123Z",
        "2025-11-22T08:26:40.124Z",
        "2025-11-22T08:26:40.125Z",
        "2025-11-22T08:26:40.133Z",
    ]


def test_receipt_clock_follows_a_clock_stepped_back():
    clock = ReceiptClock()
    t = 1_763_800_000_000_000_000
    clock.stamp(t)
    assert clock.stamp(t - 30 * 10**9) == "2025-11-22T08:26:40.001Z"  # jitter: stay monotonic
    assert clock.stamp(t - 120 * 10**9) == "2025-11-22T08:24:40.000Z"  # NTP stepped back


# -- config ---------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_config_file_then_env_then_flags(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_text(
        'port = "/dev/ttyACM0"\ndevice = "from-file"\nline = "line1"\nbaud = 9600\n'
        '[parse]\nformat = "kv"\n[parse.scale]\nnoise = 0.5\n[reader]\nreopen_max_s = 5\n'
    )
    env = {"SERIAL_DEVICE": "from-env", "SERIAL_BAUD": "115200", "SERIAL_MQTT_HOST": "broker"}
    cfg = build_config(_args("--config", str(path), "--line", "line9", "--offset", "rh=1"), env)
    assert (cfg.port, cfg.device, cfg.line, cfg.baud) == (
        "/dev/ttyACM0",
        "from-env",
        "line9",
        115200,
    )
    assert cfg.parse.format == "kv" and cfg.parse.scale == {"sound_db": 0.5}
    assert cfg.parse.offset == {"humidity_pct": 1.0}
    assert cfg.reader.reopen_max_s == 5 and cfg.mqtt.host == "broker"
    assert cfg.client_id.startswith("serial-") and cfg.client_id.endswith("-ttyACM0")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "d", "--line", "l"], "SERIAL_PORT"),
        (["--port", "p", "--device", "a b", "--line", "l"], "line/device"),
        (["--port", "p", "--device", "d", "--line", "alerts"], "reserved"),
        (["--port", "p", "--device", "d", "--line", "l", "--scale", "vibration=2"], "vibration"),
        (["--port", "p", "--device", "d", "--line", "l", "--csv-columns", "temp,temp"], "twice"),
        (["--port", "p", "--device", "d", "--line", "l", "--baud", "0"], "baud"),
        (["--port", "p", "--device", "d", "--line", "l", "--max-line-bytes", "10"], "max_line"),
    ],
)
def test_bad_config_is_a_clear_error(argv, message):
    with pytest.raises(ConfigError, match=message):
        build_config(_args(*argv), {})


def test_unknown_config_key_is_an_error(tmp_path):
    path = tmp_path / "bridge.toml"
    path.write_text('[parse]\nfromat = "kv"\n')
    with pytest.raises(ConfigError, match="fromat"):
        build_config(_args("--config", str(path)), {})


def test_shipped_config_file_loads():
    cfg = build_config(
        _args("--config", "config/serial_bridge.toml", "--port", "/dev/ttyUSB0"),
        {"SERIAL_DEVICE": "press-01", "SERIAL_LINE": "line1"},
    )
    assert cfg.parse.format == "json" and cfg.stats.metrics_port == 0


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


# -- the read path through pyserial's loop:// port --------------------------------------


def _through_loop(bridge: SerialBridge, chunks: list[bytes]) -> None:
    port = serial.serial_for_url("loop://", timeout=0.5)
    try:
        for chunk in chunks:
            port.write(chunk)
            data = b""
            while len(data) < len(chunk):
                data += read_chunk(port)
            bridge.handle_chunk(data, time.time_ns())
    finally:
        port.close()


def test_loop_port_mixed_stream_every_valid_line_published_every_bad_one_counted():
    bridge, sink = bridge_for("kv", scale={"sound_db": 0.1})
    _through_loop(
        bridge,
        [
            b"# node booted, fw 1.2\r\n",
            b"temp=21.5 humidity=40 noise=550 seq=0\r\n",
            b"temp=21.6 humidity=40 no",  # a line split over two reads
            b"ise=560 seq=1\r\n\r\n",
            b"\xfe\xfe\x81\x93\x00\xff\n",  # wrong baud rate
            b"temp=21.7 humidity=40\n",
            b"x" * 3000 + b"\n",
            b"temp=21.8,humidity=41,noise=570,seq=2\r",
        ],
    )
    stats = bridge.stats
    assert [r[2]["seq"] for r in sink.sent] == [0, 1, 2]
    assert [r[2]["sound_db"] for r in sink.sent] == [55.0, 56.0, 57.0]
    assert all(r[:2] == ("line1", "press-01") for r in sink.sent)
    assert dict(stats.invalid) == {"not_text": 1, "missing_field": 1, "too_long": 1}
    assert (stats.lines, stats.readings, stats.queued, stats.comments) == (7, 3, 3, 1)


def test_loop_port_readings_without_ts_get_distinct_receipt_times():
    bridge, sink = bridge_for()
    line = b'{"temperature_c": 21.5, "humidity_pct": 40, "sound_db": 55}\n'
    before = datetime.now(UTC)
    _through_loop(bridge, [line * 20])  # one read, one receive instant
    stamps = [datetime.fromisoformat(r[2]["ts"]) for r in sink.sent]
    assert len(sink.sent) == 20 and len(set(stamps)) == 20 and stamps == sorted(stamps)
    assert (stamps[0] - before).total_seconds() < 1.0
    assert all("seq" not in r[2] for r in sink.sent)


def test_node_ts_and_seq_pass_through_unchanged():
    bridge, sink = bridge_for()
    ts = int(time.time()) - 3
    _through_loop(bridge, [b'{"temp": 21.5, "rh": 40, "noise": 55, "seq": 41, "ts": %d}\n' % ts])
    assert sink.sent[0][2] == {
        "temperature_c": 21.5,
        "humidity_pct": 40.0,
        "sound_db": 55.0,
        "ts": ts,
        "seq": 41,
    }


def test_full_outbox_drops_the_newest_readings_and_counts_them():
    bridge, sink = bridge_for()
    sink.capacity = 2
    lines = b"".join(
        b'{"temperature_c": 21.5, "humidity_pct": 40, "sound_db": 55, "seq": %d}\n' % i
        for i in range(5)
    )
    bridge.handle_chunk(lines, time.time_ns())
    assert [r[2]["seq"] for r in sink.sent] == [0, 1]
    assert (bridge.stats.readings, bridge.stats.queued, bridge.stats.dropped) == (5, 2, 3)


def test_cli_reports_missing_settings_and_exits_2():
    result = python_module("sensors.serial_bridge", "--device", "press-01")
    assert result.returncode == 2
    assert "missing setting(s): --port / SERIAL_PORT, --line / SERIAL_LINE" in result.stderr


def test_cli_check_config_shows_the_effective_settings():
    env = {**os.environ, "SERIAL_LINE": "line7", "SERIAL_PARSE_FORMAT": "kv"}
    result = python_module(
        "sensors.serial_bridge",
        "--config",
        "config/serial_bridge.toml",
        "--port",
        "/dev/ttyUSB3",
        "--device",
        "press-01",
        "--scale",
        "noise=0.1",
        "--check-config",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    shown = result.stdout
    assert "'port': '/dev/ttyUSB3'" in shown and "'line': 'line7'" in shown
    assert "'format': 'kv'" in shown and "'scale': {'sound_db': 0.1}" in shown
