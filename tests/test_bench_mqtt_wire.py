"""bench.mqtt_wire: the load generator's minimal MQTT 5 QoS 1 publisher.

The framing helpers are checked against the MQTT 5 spec and against paho's own
encoder and decoder.  ``WirePublisher`` is checked against a scripted broker on a
local socket (for the answers a real broker rarely gives: refusals, PUBACK reason
codes, stray packet ids, DISCONNECT) and against a real Mosquitto with the real
``mosquitto_sub`` on the other side.
"""

from __future__ import annotations

import itertools
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.mqtt_wire import (
    ProtocolError,
    WirePublisher,
    connect_packet,
    parse_connack,
    publish_packet,
    split_packets,
    utf8_field,
    varint,
)
from devstack.mosquitto import Mosquitto
from devstack.process import free_port
from tests.helpers import paho_receives, unique

TIMEOUT_S = 10.0
CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 2, 3, 4, 12, 13, 14
MAX_PACKET_ID = 65535

# MQTT strings: UTF-8 (no lone surrogates) without NUL (paho refuses to pack one).
mqtt_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


def frame(kind: int, body: bytes, flags: int = 0) -> bytes:
    return bytes(((kind << 4) | flags,)) + varint(len(body)) + body


def connack(reason: int = 0, props: bytes | None = b"\x00") -> bytes:
    """A CONNACK body: no session present, ``reason``, then ``props`` (None: omitted)."""
    return bytes((0, reason)) + (props if props is not None else b"")


def read_varint(data: bytes) -> tuple[int, int]:
    """Reference decoder straight from the spec (1.5.5): (value, bytes used)."""
    value = multiplier = 0
    for used, byte in enumerate(data, 1):
        value += (byte & 0x7F) << multiplier
        if not byte & 0x80:
            return value, used
        multiplier += 7
    raise AssertionError("unterminated")


# --- framing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_matches_the_spec_table(value, encoded):
    assert varint(value) == encoded


@given(st.integers(0, 268_435_455))
def test_varint_decodes_back_with_the_fewest_bytes(value):
    encoded = varint(value)
    assert read_varint(encoded) == (value, len(encoded))
    assert len(encoded) == 1 + (value > 127) + (value > 16_383) + (value > 2_097_151)


def test_utf8_field_is_length_prefixed_utf8():
    assert utf8_field("") == b"\x00\x00"
    assert utf8_field("a/b") == b"\x00\x03a/b"
    assert utf8_field("°C") == b"\x00\x03\xc2\xb0C"  # length in bytes, not characters


def test_connect_packet_is_an_mqtt5_clean_start_connect():
    packet = connect_packet("sensor-7", 45)
    (kind, body), *rest = split_packets(bytearray(packet))
    assert (kind, rest) == (1, [])
    assert body[:7] == b"\x00\x04MQTT\x05"  # protocol name, level 5
    assert body[7] == 0x02  # clean start only: no will, no username/password
    assert int.from_bytes(body[8:10], "big") == 45
    assert body[10] == 0  # no properties
    assert body[11:] == utf8_field("sensor-7")


def _paho_decodes(packet: bytes) -> mqtt.MQTTMessage:
    """Feed one framed PUBLISH to paho's own MQTT 5 decoder."""
    ((_, body),) = split_packets(bytearray(packet))
    return paho_receives(mqtt.Client, packet[0], body)


@given(
    topic=mqtt_text.filter(bool),
    payload=st.binary(max_size=300),
    packet_id=st.integers(1, MAX_PACKET_ID),
)
def test_publish_packet_is_what_paho_decodes(topic, payload, packet_id):
    packet = publish_packet(utf8_field(topic), packet_id, payload)
    msg = _paho_decodes(packet)
    assert (msg.topic, msg.payload, msg.qos, msg.mid) == (topic, payload, 1, packet_id)
    assert (msg.dup, msg.retain) == (False, False)


def test_publish_packet_with_a_multibyte_remaining_length():
    payload = bytes(range(256)) * 80  # 20 KiB: three length bytes
    packet = publish_packet(utf8_field("big"), 513, payload)
    assert packet[1:4] == varint(len(packet) - 4)
    msg = _paho_decodes(packet)
    assert (msg.topic, msg.payload, msg.mid) == ("big", payload, 513)


# --- split_packets -------------------------------------------------------------------


def test_split_packets_returns_complete_packets_and_keeps_the_partial_one():
    big = frame(PUBLISH, b"x" * 300)  # two length bytes
    partial = frame(PUBACK, b"\x00\x07\x10")[:-1]
    buf = bytearray(frame(PUBACK, b"\x00\x01") + frame(PINGRESP, b"") + big + partial)
    assert split_packets(buf) == [(PUBACK, b"\x00\x01"), (PINGRESP, b""), (PUBLISH, b"x" * 300)]
    assert buf == partial
    buf += b"\x10"  # the rest arrives
    assert split_packets(buf) == [(PUBACK, b"\x00\x07\x10")]
    assert buf == b""


def test_split_packets_waits_when_split_inside_the_length_bytes():
    packet = frame(PUBLISH, b"y" * 20_000)  # three length bytes
    buf = bytearray(frame(PINGRESP, b"") + packet[:2])  # header + first length byte
    assert split_packets(buf) == [(PINGRESP, b"")]
    assert buf == packet[:2]
    buf += packet[2:3]
    assert split_packets(buf) == []
    assert buf == packet[:3]
    buf += packet[3:]
    assert split_packets(buf) == [(PUBLISH, b"y" * 20_000)]
    assert buf == b""


def test_split_packets_keeps_a_lone_header_byte():
    buf = bytearray(b"\xd0")
    assert split_packets(buf) == []
    assert buf == b"\xd0"
    assert split_packets(bytearray()) == []


def test_split_packets_waits_for_a_body_announced_at_the_maximum_length():
    buf = bytearray(b"\x30\xff\xff\xff\x7f" + b"z" * 10)  # 268,435,455 bytes announced
    assert split_packets(buf) == []
    assert len(buf) == 15


def test_split_packets_refuses_a_remaining_length_of_five_bytes():
    buf = bytearray(frame(PINGRESP, b"") + b"\x30\xff\xff\xff\xff\x01" + b"z" * 10)
    with pytest.raises(ProtocolError, match="remaining length"):
        split_packets(buf)


packets = st.lists(st.tuples(st.integers(1, 15), st.binary(max_size=400)), max_size=8)


@given(packets=packets, cuts=st.lists(st.integers(0, 4000), max_size=10))
def test_split_packets_reassembles_any_chunking(packets, cuts):
    stream = b"".join(frame(kind, body) for kind, body in packets)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    buf = bytearray()
    got = []
    for start, end in itertools.pairwise(bounds):
        buf += stream[start:end]
        got += split_packets(buf)
    assert got == packets
    assert buf == b""


# --- parse_connack -------------------------------------------------------------------


def test_parse_connack_without_properties():
    assert parse_connack(connack(0, props=None)) == (0, None)
    assert parse_connack(connack(0x87, props=None)) == (0x87, None)
    assert parse_connack(connack(0)) == (0, None)  # empty property list


def test_parse_connack_finds_receive_maximum_after_other_properties():
    props = (
        b"\x12" + utf8_field("auto-1234")  # assigned client identifier
        + b"\x26" + utf8_field("region") + utf8_field("eu-west")  # user property
        + b"\x27" + (1 << 20).to_bytes(4, "big")  # maximum packet size
        + b"\x24\x01"  # maximum QoS
        + b"\x21" + (20).to_bytes(2, "big")  # receive maximum
        + b"\x22" + (10).to_bytes(2, "big")  # topic alias maximum
        + b"\x1f" + utf8_field("welcome")  # reason string
    )  # fmt: skip
    assert parse_connack(connack(0, varint(len(props)) + props)) == (0, 20)


def test_parse_connack_refuses_a_short_packet():
    with pytest.raises(ProtocolError, match="short"):
        parse_connack(b"\x00")


def test_parse_connack_refuses_truncated_properties():
    with pytest.raises(ProtocolError, match="truncated"):
        parse_connack(b"\x00\x00\x05")


@given(
    reason=st.sampled_from([0x00, 0x80, 0x84, 0x86, 0x87, 0x97]),
    receive_maximum=st.none() | st.integers(1, 65535),
    client_id=st.none() | mqtt_text,
    user=st.lists(st.tuples(mqtt_text, mqtt_text), max_size=3),
    expiry=st.none() | st.integers(0, 2**32 - 1),
    alias_max=st.none() | st.integers(0, 65535),
    flags=st.lists(st.integers(0, 1), min_size=3, max_size=3),
    reason_string=st.none() | mqtt_text,
    auth_data=st.none() | st.binary(max_size=50),
)
def test_parse_connack_reads_what_paho_packs(
    reason, receive_maximum, client_id, user, expiry, alias_max, flags, reason_string, auth_data
):
    props = Properties(PacketTypes.CONNACK)
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    if client_id is not None:
        props.AssignedClientIdentifier = client_id
    for pair in user:
        props.UserProperty = pair
    if expiry is not None:
        props.SessionExpiryInterval = expiry
    if alias_max is not None:
        props.TopicAliasMaximum = alias_max
    props.MaximumQoS, props.RetainAvailable, props.SharedSubscriptionAvailable = flags
    if reason_string is not None:
        props.ReasonString = reason_string
    if auth_data is not None:
        props.AuthenticationMethod = "SCRAM-SHA-1"
        props.AuthenticationData = auth_data
    assert parse_connack(connack(reason, props.pack())) == (reason, receive_maximum)


# --- WirePublisher against a scripted broker -----------------------------------------


class ScriptedBroker:
    """A local listening socket that answers the CONNECT with ``connack_body``; the
    test then plays the broker's side of the connection by hand."""

    def __init__(self, connack_body: bytes | None):
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(TIMEOUT_S)
        self.port = self._server.getsockname()[1]
        self._connack = connack_body
        self.conn: socket.socket | None = None
        self.connect_packet: tuple[int, bytes] | None = None
        self.clients: list[WirePublisher] = []  # closed with the broker
        self._buf = bytearray()
        self._handshake = threading.Thread(target=self._answer_connect, daemon=True)
        self._handshake.start()

    def _answer_connect(self) -> None:
        conn, _ = self._server.accept()
        conn.settimeout(TIMEOUT_S)
        self.conn = conn
        (self.connect_packet,) = self.receive(1)
        if self._connack is None:
            conn.shutdown(socket.SHUT_WR)  # hang up instead of answering
        else:
            conn.sendall(frame(CONNACK, self._connack))

    def connected(self) -> socket.socket:
        self._handshake.join(TIMEOUT_S)
        assert self.conn is not None and self.connect_packet is not None
        return self.conn

    def receive(self, n: int) -> list[tuple[int, bytes]]:
        """Block until ``n`` more packets arrived from the client."""
        got: list[tuple[int, bytes]] = []
        while len(got) < n:
            if not (chunk := self.conn.recv(1 << 16)):
                raise AssertionError(f"client hung up after {len(got)} of {n} packets")
            self._buf += chunk
            got += split_packets(self._buf)
        assert len(got) == n
        return got

    def has_data(self) -> bool:
        return bool(select.select([self.conn], [], [], 0)[0])

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.conn is not None:
            self.conn.close()
        self._server.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedBroker]]:
    brokers: list[ScriptedBroker] = []

    def _start(connack_body: bytes | None = connack(0)) -> ScriptedBroker:
        brokers.append(ScriptedBroker(connack_body))
        return brokers[-1]

    yield _start
    for broker in brokers:
        broker.close()


def _connected(broker: ScriptedBroker, inflight: int = 50, **kwargs) -> WirePublisher:
    pub = WirePublisher("127.0.0.1", broker.port, "wire-test", inflight, **kwargs)
    broker.clients.append(pub)
    pub.connect(TIMEOUT_S)
    broker.connected()
    return pub


def _service_until(pub: WirePublisher, condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        pub.service(0.05)


def test_connect_sends_our_client_id_and_keepalive(scripted):
    broker = scripted()
    pub = _connected(broker, keepalive_s=30)
    kind, body = broker.connect_packet
    assert kind == 1
    assert body == connect_packet("wire-test", 30)[2:]
    assert pub.window == 50
    pub.close()
    assert broker.receive(1) == [(DISCONNECT, b"")]


@pytest.mark.parametrize(("receive_maximum", "window"), [(7, 7), (50, 50), (500, 50)])
def test_the_brokers_receive_maximum_caps_the_window(scripted, receive_maximum, window):
    props = b"\x21" + receive_maximum.to_bytes(2, "big")
    pub = _connected(scripted(connack(0, varint(len(props)) + props)), inflight=50)
    assert (pub.inflight_limit, pub.window) == (window, window)


def test_a_refused_connect_raises_with_the_reason_code(scripted):
    pub = WirePublisher("127.0.0.1", scripted(connack(0x86)).port, "wire-test", 10)
    with pytest.raises(ProtocolError, match="0x86"):
        pub.connect(TIMEOUT_S)


def test_a_broker_hanging_up_before_connack_raises(scripted):
    pub = WirePublisher("127.0.0.1", scripted(None).port, "wire-test", 10)
    with pytest.raises(ProtocolError, match="before CONNACK"):
        pub.connect(TIMEOUT_S)


def test_connect_with_nothing_listening_raises_connection_refused():
    pub = WirePublisher("127.0.0.1", free_port(), "wire-test", 10)
    with pytest.raises(ConnectionRefusedError):
        pub.connect(TIMEOUT_S)


def test_pubacks_are_counted_by_reason_code(scripted):
    broker = scripted()
    pub = _connected(broker, inflight=5)
    topic = utf8_field("line-1/press-2")
    for payload in (b"one", b"two", b"three"):
        pub.publish(topic, payload)
    assert (pub.pending, pub.window) == (3, 2)
    pub.service()
    sent = broker.receive(3)
    assert [kind for kind, _ in sent] == [PUBLISH] * 3
    assert [_paho_decodes(frame(PUBLISH, body, 0x2)).mid for _, body in sent] == [1, 2, 3]
    assert [_paho_decodes(frame(PUBLISH, body, 0x2)).payload for _, body in sent] == [
        b"one",
        b"two",
        b"three",
    ]
    broker.conn.sendall(
        frame(PUBACK, b"\x00\x02")  # success, reason code omitted
        + frame(PUBACK, b"\x00\x01\x10\x00")  # "no matching subscribers": still success
        + frame(PUBACK, b"\x00\x03\x87")  # not authorized
    )
    _service_until(pub, lambda: pub.pending == 0, "three PUBACKs")
    assert (pub.acked, pub.refused, pub.window) == (2, 1, 5)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (frame(PUBACK, b"\x00\x09"), "packet id 9, which is not in flight"),
        (frame(PUBACK, b"\x00\x00"), "packet id 0, which is not in flight"),
        (frame(DISCONNECT, b"\x8e"), r"disconnected us \(reason code 0x8e\)"),
        (frame(DISCONNECT, b""), r"disconnected us \(reason code 0x00\)"),
        (frame(PUBLISH, b"\x00\x01t\x00\x05"), "unexpected packet type 3"),
    ],
)
def test_unexpected_answers_raise(scripted, answer, error):
    broker = scripted()
    pub = _connected(broker)
    pub.publish(utf8_field("t"), b"x")  # packet id 1 in flight
    pub.service()
    broker.receive(1)
    broker.conn.sendall(answer)
    with pytest.raises(ProtocolError, match=error):
        _service_until(pub, lambda: False, "a ProtocolError")


def test_a_broker_closing_the_connection_raises(scripted):
    broker = scripted()
    pub = _connected(broker)
    broker.conn.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match="closed the connection"):
        _service_until(pub, lambda: False, "a ProtocolError")


def test_an_idle_session_pings_and_accepts_the_pingresp(scripted):
    broker = scripted()
    pub = _connected(broker, keepalive_s=1)
    _service_until(pub, broker.has_data, "a PINGREQ")  # after keepalive / 2 idle
    assert broker.receive(1) == [(PINGREQ, b"")]
    pub.publish(utf8_field("t"), b"after ping")
    pub.service()
    # Only PINGREQs may come before it, should the machine stall for half a second.
    while (packet := broker.receive(1)[0])[0] == PINGREQ:
        pass
    assert _paho_decodes(frame(PUBLISH, packet[1], 0x2)).payload == b"after ping"
    # A PINGRESP is read and passed over: the PUBACK behind it is still counted.
    broker.conn.sendall(frame(PINGRESP, b"") + frame(PUBACK, b"\x00\x01"))
    _service_until(pub, lambda: pub.pending == 0, "the PUBACK after the PINGRESP")
    assert (pub.acked, pub.refused) == (1, 0)


def test_packet_ids_wrap_after_65535_and_skip_ids_still_in_flight(scripted):
    broker = scripted()
    pub = _connected(broker, inflight=MAX_PACKET_ID)
    topic = utf8_field("w")
    for _ in range(MAX_PACKET_ID):
        pub.publish(topic, b"")
    assert pub.window == 0
    received: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=lambda: received.extend(broker.receive(MAX_PACKET_ID)))
    reader.start()
    _service_until(pub, lambda: not reader.is_alive(), "the broker to read every PUBLISH")
    ids = [int.from_bytes(body[3:5], "big") for _, body in received]  # after topic "w"
    assert ids == list(range(1, MAX_PACKET_ID + 1))

    # Acknowledge all but 1 and 3; the next ids must wrap to 1 and skip those two.
    acks = b"".join(frame(PUBACK, pid.to_bytes(2, "big")) for pid in ids if pid not in (1, 3))
    writer = threading.Thread(target=broker.conn.sendall, args=(acks,))
    writer.start()
    _service_until(pub, lambda: pub.pending == 2, "65,533 PUBACKs")
    writer.join(TIMEOUT_S)
    for _ in range(3):
        pub.publish(topic, b"")
    pub.service()
    assert [int.from_bytes(body[3:5], "big") for _, body in broker.receive(3)] == [2, 4, 5]
    assert (pub.acked, pub.pending) == (MAX_PACKET_ID - 2, 5)


# --- WirePublisher against a real Mosquitto ------------------------------------------


class Subscription:
    """The real ``mosquitto_sub`` (MQTT 5, QoS 1) on ``topic`` and a control topic.

    Ready once a probe on the control topic came back (the two topics are in one
    SUBSCRIBE, so the data subscription is active too); ``end`` sends a marker on
    the control topic after the data, so the data before it is everything."""

    def __init__(self, port: int, topic: str):
        self.topic, self.control = topic, f"{topic}/control"
        self._control = WirePublisher("127.0.0.1", port, unique("wire-control"), 10)
        self._control.connect(TIMEOUT_S)
        binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        connection = ["-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1"]
        self.proc = subprocess.Popen(
            [binary, *connection, "-t", self.topic, "-t", self.control, "-F", "%t %p"],
            stdout=subprocess.PIPE,
        )
        self.lines: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            topic, _, payload = line.rstrip(b"\n").partition(b" ")
            with self._changed:
                self.lines.append((topic.decode(), payload))
                self._changed.notify_all()

    def _send_control(self, payload: bytes, timeout_s: float) -> bool:
        self._control.publish(utf8_field(self.control), payload)
        self._control.flush(TIMEOUT_S)
        with self._changed:
            return self._changed.wait_for(lambda: (self.control, payload) in self.lines, timeout_s)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not self._send_control(b"probe", 0.25):
            assert self.proc.poll() is None, "mosquitto_sub exited"
            assert time.monotonic() < deadline, "mosquitto_sub did not subscribe"

    def end(self) -> list[bytes]:
        """Payloads received on the data topic, once everything sent before is in."""
        assert self._send_control(b"end", TIMEOUT_S), "end marker not received"
        with self._changed:
            return [payload for topic, payload in self.lines if topic == self.topic]

    def close(self) -> None:
        self._control.close()
        self.proc.terminate()
        self.proc.wait(TIMEOUT_S)
        self._reader.join(TIMEOUT_S)
        self.proc.stdout.close()


@pytest.fixture
def subscription(mosquitto) -> Iterator[Subscription]:
    sub = Subscription(mosquitto.port, f"bench-wire/{unique('data')}")
    try:
        sub.wait_ready()
        yield sub
    finally:
        sub.close()


@pytest.mark.integration
@pytest.mark.parametrize(("count", "inflight"), [(500, 50), (2000, 7)])
def test_every_publish_reaches_a_real_subscriber_in_order(mosquitto, subscription, count, inflight):
    pub = WirePublisher("127.0.0.1", mosquitto.port, unique("wire"), inflight)
    pub.connect(TIMEOUT_S)
    topic = utf8_field(subscription.topic)
    expected = [f"reading-{i:05d}".encode() for i in range(count)]
    most_pending = 0
    deadline = time.monotonic() + 3 * TIMEOUT_S
    try:
        sent = 0
        while sent < count:
            assert time.monotonic() < deadline, f"only {sent} of {count} sent"
            for _ in range(min(pub.window, count - sent)):
                pub.publish(topic, expected[sent])
                sent += 1
            most_pending = max(most_pending, pub.pending)
            pub.service(0.05)
        pub.flush(TIMEOUT_S)
    finally:
        pub.close()
    assert pub.inflight_limit == inflight  # this Mosquitto sets no lower Receive Maximum
    assert most_pending == inflight  # the window was used, never exceeded
    assert (pub.acked, pub.pending, pub.refused) == (count, 0, 0)
    assert subscription.end() == expected


@pytest.mark.integration
def test_a_broker_refusing_anonymous_clients_gives_the_reason_code(tmp_path):
    port = free_port()
    broker = Mosquitto(
        tmp_path,
        port,
        persistence=False,
        listener_config=f"listener {port} 127.0.0.1\nallow_anonymous false\n",
    ).start()
    try:
        pub = WirePublisher("127.0.0.1", port, unique("wire"), 10)
        with pytest.raises(ProtocolError, match=r"refused the connection \(reason code 0x87\)"):
            pub.connect(TIMEOUT_S)  # 0x87: Not authorized
    finally:
        broker.stop()
