"""common.mqtt.Client's receive path against paho's own, and its buffered socket.

The fast PUBLISH decoder must give exactly what paho gives for every packet, and hand
anything with properties (or malformed) back to paho.  The live paths (real Mosquitto,
reconnects, TLS) are exercised by the integration tests, which all use this client.
"""

from __future__ import annotations

import socket

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.mqtt import BufferedReads, Client


def _received(client_class: type[mqtt.Client], header: int, body: bytes) -> mqtt.MQTTMessage:
    client = client_class(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)  # no socket here to send a PUBACK on
    got: list[mqtt.MQTTMessage] = []
    client.on_message = lambda _c, _u, msg: got.append(msg)
    client._in_packet = {"command": header, "packet": body}
    assert client._handle_publish() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert len(got) == 1
    return got[0]


def _publish_packet(
    topic: bytes, payload: bytes, qos: int, mid: int, dup: bool, retain: bool, props: bytes
) -> tuple[int, bytes]:
    header = 0x30 | (dup << 3) | (qos << 1) | int(retain)
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    return header, body + props + payload


def _fields(msg: mqtt.MQTTMessage) -> tuple:
    return (msg.topic, msg.payload, msg.qos, msg.mid, msg.dup, msg.retain)


properties = st.one_of(
    st.none(),
    st.builds(lambda expiry, ctype: (expiry, ctype), st.integers(1, 2**31), st.text(max_size=20)),
)


@given(
    topic=st.text(min_size=1, max_size=80).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    mid=st.integers(1, 65535),
    dup=st.booleans(),
    retain=st.booleans(),
    props=properties,
)
def test_fast_publish_decoding_matches_paho(topic, payload, qos, mid, dup, retain, props):
    if props is None:
        packed = b"\x00"
    else:
        p = Properties(PacketTypes.PUBLISH)
        p.MessageExpiryInterval, p.ContentType = props
        packed = p.pack()
    header, body = _publish_packet(
        topic.encode(), payload, qos, mid if qos else 0, dup, retain, packed
    )
    ours = _received(Client, header, body)
    paho = _received(mqtt.Client, header, body)
    assert _fields(ours) == _fields(paho)
    if props is None:
        assert ours.properties is None  # decoded on the fast path
    else:
        assert ours.properties is not None  # paho's path, properties intact
        assert (ours.properties.MessageExpiryInterval, ours.properties.ContentType) == props


def test_a_truncated_packet_is_left_to_paho():
    header, body = _publish_packet(b"factory/l/d/reading", b"", 1, 7, False, False, b"")
    with pytest.raises(Exception):  # noqa: B017 - paho's own error, whichever it is
        _received(Client, header, body[:-1])


def test_buffered_reads_serve_exact_lengths_and_report_what_is_left():
    a, b = socket.socketpair()
    try:
        wrapped = BufferedReads(a)
        b.sendall(b"\x32\x05hello\x40\x02\x00\x01")
        assert wrapped.recv(1) == b"\x32"  # one real recv took everything sent
        assert wrapped.pending() == 10
        assert wrapped.recv(1) == b"\x05"
        assert wrapped.recv(5) == b"hello"
        assert wrapped.recv(100) == b"\x40\x02\x00\x01"  # never more than buffered
        assert wrapped.pending() == 0
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            wrapped.recv(1)  # empty buffer: the socket's own answer, for paho to handle
        assert wrapped.fileno() == a.fileno()  # everything else is the real socket's
        b.close()
        a.setblocking(True)
        assert wrapped.recv(1) == b""  # end of stream passes through
    finally:
        a.close()
        b.close()
