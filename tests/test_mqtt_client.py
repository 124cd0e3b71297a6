"""common.mqtt.Client's PUBLISH decoding against paho's own.

The fast decoder must give exactly what paho gives for every packet, and hand anything
with properties (or malformed) back to paho.  The live paths (real Mosquitto,
reconnects, TLS) are exercised by the integration tests, which all use this client.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.mqtt import Client
from tests.helpers import paho_receives


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


# MQTT strings: UTF-8 (no lone surrogates) without NUL (paho refuses to pack one).
mqtt_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80
)
properties = st.one_of(
    st.none(),
    st.builds(lambda expiry, ctype: (expiry, ctype), st.integers(1, 2**31), mqtt_text),
)


# topic, payload, qos and packet id of a PUBLISH, for the decoding tests.
PUBLISH_FIELDS = {
    "topic": mqtt_text.filter(bool),
    "payload": st.binary(max_size=300),
    "qos": st.sampled_from([0, 1]),
    "mid": st.integers(1, 65535),
}


@given(
    **PUBLISH_FIELDS,
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
    ours = paho_receives(Client, header, body)
    paho = paho_receives(mqtt.Client, header, body)
    assert _fields(ours) == _fields(paho)
    if props is None:
        assert ours.properties is None  # decoded on the fast path
    else:
        assert ours.properties is not None  # paho's path, properties intact
        assert (ours.properties.MessageExpiryInterval, ours.properties.ContentType) == props


def test_a_truncated_packet_is_left_to_paho():
    header, body = _publish_packet(b"factory/l/d/reading", b"", 1, 7, False, False, b"")
    with pytest.raises(Exception):  # noqa: B017 - paho's own error, whichever it is
        paho_receives(Client, header, body[:-1])


def _plain_received(header: int, body: bytes) -> tuple[list[tuple], list[mqtt.MQTTMessage]]:
    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)
    plain: list[tuple] = []
    full: list[mqtt.MQTTMessage] = []
    client.on_plain_message = lambda _c, topic, payload, mid, qos: plain.append(
        (topic, payload, qos, mid)
    )
    client.on_message = lambda _c, _u, msg: full.append(msg)
    client._in_packet = {"command": header, "packet": body}
    assert client._handle_publish() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert len(plain) + len(full) == 1
    return plain, full


@given(**PUBLISH_FIELDS, with_props=st.booleans())
def test_plain_hook_gets_what_paho_decodes_and_on_message_the_rest(
    topic, payload, qos, mid, with_props
):
    packed = b"\x00"
    if with_props:
        p = Properties(PacketTypes.PUBLISH)
        p.ContentType = "application/json"
        packed = p.pack()
    header, body = _publish_packet(
        topic.encode(), payload, qos, mid if qos else 0, False, False, packed
    )
    paho = paho_receives(mqtt.Client, header, body)
    plain, full = _plain_received(header, body)
    if with_props:
        assert not plain and _fields(full[0]) == _fields(paho)
    else:
        assert not full and plain[0] == (paho.topic, paho.payload, paho.qos, paho.mid)


def test_plain_hook_leaves_a_topic_that_is_not_utf8_to_paho():
    header, body = _publish_packet(b"factory/\xff/d/reading", b"{}", 1, 9, False, False, b"\x00")
    plain, full = _plain_received(header, body)
    assert not plain and full[0].payload == b"{}"


def test_ack_many_queues_the_same_bytes_as_one_ack_per_message():
    def queued(client: mqtt.Client) -> bytes:
        return b"".join(bytes(p["packet"]) for p in client._out_packet)

    ours = Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    one_by_one = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    mids = [1, 2, 300, 65535, 7]
    for client in (ours, one_by_one):
        client.manual_ack_set(True)
    ours.ack_many(mids)
    for mid in mids:
        one_by_one.ack(mid, 1)
    assert len(ours._out_packet) == 1  # one write for all of them
    assert queued(ours) == queued(one_by_one)
    ours.ack_many([])
    assert len(ours._out_packet) == 1


def test_loop_read_takes_every_packet_waiting_not_one_per_wake_up():
    import socket

    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)
    got: list[tuple] = []
    client.on_plain_message = lambda _c, topic, payload, mid, qos: got.append((payload, mid))
    ours, broker = socket.socketpair()
    ours.setblocking(False)  # as paho's own connected socket is
    client._sock = ours
    try:
        frames = []
        for mid in range(1, 151):
            header, body = _publish_packet(
                b"factory/l1/d1/reading", b"m%d" % mid, 1, mid, False, False, b"\x00"
            )
            frames.append(bytes([header, len(body)]) + body)
        broker.sendall(b"".join(frames[:120]) + frames[120][:5])  # the last one cut short
        assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert [mid for _, mid in got] == list(range(1, 101))  # one batch per wake-up
        assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert len(got) == 120  # the partial packet waits for the rest of its bytes
        broker.sendall(frames[120][5:] + b"".join(frames[121:]))
        assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        assert got == [(b"m%d" % mid, mid) for mid in range(1, 151)]
        broker.close()
        assert client.loop_read() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS  # connection lost
    finally:
        client._sock = None
        ours.close()


def test_paho_is_the_series_the_overrides_were_tested_with():
    """CI fails loudly on another paho: Client overrides its private internals."""
    import re

    from common.mqtt import TESTED_PAHO, paho_series
    from tests.helpers import ROOT

    assert paho_series() in TESTED_PAHO
    pin = re.search(
        r"^paho-mqtt>=(\d+\.\d+),<(\d+\.\d+)", (ROOT / "requirements.txt").read_text(), re.M
    )
    assert pin is not None and pin.group(1) in TESTED_PAHO


def test_no_packet_is_read_while_the_receive_gate_has_no_room():
    import socket

    from paho.mqtt.client import _ConnectionState

    class Gate:
        def __init__(self, room: int):
            self.left = room

        def room(self, timeout_s: float) -> bool:
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)
    got: list[int] = []
    client.on_plain_message = lambda _c, topic, payload, mid, qos: got.append(mid)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client._sock = ours
    client.receive_gate = gate = Gate(3)
    try:
        frames = b""
        for mid in range(1, 11):
            header, body = _publish_packet(
                b"factory/l/d/reading", b"x", 1, mid, False, False, b"\x00"
            )
            frames += bytes([header, len(body)]) + body
        broker.sendall(frames)
        client._state = _ConnectionState.MQTT_CS_CONNECTING
        client.loop_read()  # before CONNACK the gate does not apply
        assert got == list(range(1, 11))
        got.clear()
        broker.sendall(frames)
        client._state = _ConnectionState.MQTT_CS_CONNECTED
        client.loop_read()
        assert got == [1, 2, 3]  # then it stops where the gate says
        client.loop_read()
        assert got == [1, 2, 3]
        gate.left = 100
        client.loop_read()
        assert got == list(range(1, 11))
    finally:
        client._sock = None
        ours.close()
        broker.close()
