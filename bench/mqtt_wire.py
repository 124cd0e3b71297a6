"""A minimal MQTT 5 QoS 1 publisher on a plain socket, for the load generator only.

paho spends ~130 µs of CPU per QoS 1 publish on this machine (building the packet,
its bookkeeping, one ``send`` per message, one PUBACK callback per message): at
10,000 readings/s that is 1.3 of the box's 2 cores, taken from the gateway being
measured.  This client writes many pre-framed PUBLISH packets with one ``send`` and
parses PUBACKs straight from the receive buffer.  It does only what a sensor fleet
does — connect, publish QoS 1, count acknowledgements — and checks what the broker
answers: a refused CONNECT, a PUBACK for an id not in flight, a DISCONNECT or any
other unexpected packet raises ``ProtocolError``.
"""

from __future__ import annotations

import select
import socket
import time

_CONNECT, _CONNACK, _PUBACK, _PINGREQ, _PINGRESP, _DISCONNECT = 1, 2, 4, 12, 13, 14
# PUBLISH, QoS 1, no dup, no retain.
_PUBLISH_QOS1 = 0x32
_MAX_PACKET_ID = 65535
_RECV_BYTES = 1 << 16
# Property identifier in CONNACK: the broker's own in-flight limit for our publishes.
_PROP_RECEIVE_MAXIMUM = 0x21


class ProtocolError(RuntimeError):
    pass


def varint(n: int) -> bytes:
    """MQTT variable byte integer."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8_field(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: str, keepalive_s: int) -> bytes:
    # Protocol name, level 5, flags = clean start, keepalive, no properties.
    variable = b"\x00\x04MQTT\x05\x02" + keepalive_s.to_bytes(2, "big") + b"\x00"
    body = variable + utf8_field(client_id)
    return bytes([_CONNECT << 4]) + varint(len(body)) + body


def publish_packet(topic_field: bytes, packet_id: int, payload: bytes) -> bytes:
    """``topic_field`` is ``utf8_field(topic)``, built once per topic by the caller."""
    size = len(topic_field) + 3 + len(payload)  # + packet id + empty properties
    return b"".join(
        (
            bytes((_PUBLISH_QOS1,)),
            varint(size),
            topic_field,
            packet_id.to_bytes(2, "big"),
            b"\x00",
            payload,
        )
    )


def split_packets(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove every complete packet from ``buf``; return (packet type, body) pairs."""
    packets = []
    pos = 0
    end = len(buf)
    while pos + 2 <= end:
        size = shift = 0
        i = pos + 1
        while True:
            if i >= end:
                del buf[:pos]
                return packets  # length not complete yet
            byte = buf[i]
            size |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("malformed remaining length")
        if i + size > end:
            break
        packets.append((buf[pos] >> 4, bytes(buf[i : i + size])))
        pos = i + size
    del buf[:pos]
    return packets


def parse_connack(body: bytes) -> tuple[int, int | None]:
    """(reason code, the broker's Receive Maximum or None)."""
    if len(body) < 2:
        raise ProtocolError("short CONNACK")
    try:
        return _parse_connack(body)
    except IndexError:
        raise ProtocolError("truncated CONNACK properties") from None


def _parse_connack(body: bytes) -> tuple[int, int | None]:
    reason = body[1]
    receive_maximum = None
    if len(body) > 2:
        props, i = _read_varint(body, 2)
        end = i + props
        while i < end:
            ident = body[i]
            i += 1
            if ident == _PROP_RECEIVE_MAXIMUM:
                receive_maximum = int.from_bytes(body[i : i + 2], "big")
            i += _property_size(ident, body, i)
    return reason, receive_maximum


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _property_size(ident: int, data: bytes, i: int) -> int:
    """Bytes taken by the value of CONNACK property ``ident`` starting at ``i``."""
    if ident in (0x24, 0x25, 0x28, 0x29, 0x2A):  # single-byte flags and QoS
        return 1
    if ident in (0x13, 0x21, 0x22):  # two-byte integers
        return 2
    if ident in (0x11, 0x27):  # four-byte integers
        return 4
    if ident == 0x26:  # user property: two strings
        first = 2 + int.from_bytes(data[i : i + 2], "big")
        return first + 2 + int.from_bytes(data[i + first : i + first + 2], "big")
    # Strings and binary data: assigned client id, reason string, auth, ...
    return 2 + int.from_bytes(data[i : i + 2], "big")


class WirePublisher:
    """One MQTT 5 session that publishes QoS 1 with a bounded window of packet ids."""

    def __init__(self, host: str, port: int, client_id: str, inflight: int, keepalive_s: int = 60):
        self.host, self.port, self.client_id = host, port, client_id
        self.inflight_limit = inflight
        self.keepalive_s = keepalive_s
        self.acked = 0
        self.refused = 0
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._out = bytearray()  # framed packets the socket has not taken yet
        self._inflight = bytearray(_MAX_PACKET_ID + 1)  # 1 = packet id awaiting PUBACK
        self.pending = 0
        self._next_id = 1
        self._last_io = time.monotonic()

    def connect(self, timeout_s: float) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        try:
            self._handshake(sock, timeout_s)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock

    def _handshake(self, sock: socket.socket, timeout_s: float) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(connect_packet(self.client_id, self.keepalive_s))
        deadline = time.monotonic() + timeout_s
        while True:
            chunk = sock.recv(_RECV_BYTES)
            if not chunk:
                raise ProtocolError("broker closed the connection before CONNACK")
            self._buf += chunk
            packets = split_packets(self._buf)
            if packets:
                break
            if time.monotonic() > deadline:
                raise ProtocolError("no CONNACK")
        kind, body = packets[0]
        if kind != _CONNACK:
            raise ProtocolError(f"expected CONNACK, got packet type {kind}")
        reason, receive_maximum = parse_connack(body)
        if reason >= 0x80:
            raise ProtocolError(f"broker refused the connection (reason code 0x{reason:02x})")
        if receive_maximum:
            self.inflight_limit = min(self.inflight_limit, receive_maximum)

    @property
    def window(self) -> int:
        """How many more publishes may be sent now."""
        return self.inflight_limit - self.pending

    def publish(self, topic_field: bytes, payload: bytes) -> None:
        """Queue one QoS 1 PUBLISH; ``send`` writes it.  Caller keeps within ``window``."""
        pid = self._next_id
        while self._inflight[pid]:  # id still awaiting its PUBACK: take the next free one
            pid = pid % _MAX_PACKET_ID + 1
        self._next_id = pid % _MAX_PACKET_ID + 1
        self._inflight[pid] = 1
        self.pending += 1
        self._out += publish_packet(topic_field, pid, payload)

    def send(self) -> None:
        """Write as much of the queued packets as the socket takes without blocking."""
        if not self._out:
            return
        try:
            n = self._sock.send(self._out)
        except BlockingIOError:
            return
        del self._out[:n]
        self._last_io = time.monotonic()

    def service(self, timeout_s: float = 0.0) -> None:
        """Send what is queued, read what arrived (PUBACKs), ping when idle."""
        self.send()
        wants_write = [self._sock] if self._out else []
        readable, _, _ = select.select([self._sock], wants_write, [], timeout_s)
        if readable:
            self._read()
        if self._out:
            self.send()
        elif self.keepalive_s and time.monotonic() - self._last_io > self.keepalive_s / 2:
            self._sock.send(bytes((_PINGREQ << 4, 0)))
            self._last_io = time.monotonic()

    def _read(self) -> None:
        try:
            chunk = self._sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        if not chunk:
            raise ProtocolError("broker closed the connection")
        self._buf += chunk
        for kind, body in split_packets(self._buf):
            if kind == _PUBACK:
                self._on_puback(body)
            elif kind == _DISCONNECT:
                reason = body[0] if body else 0
                raise ProtocolError(f"broker disconnected us (reason code 0x{reason:02x})")
            elif kind != _PINGRESP:
                raise ProtocolError(f"unexpected packet type {kind}")

    def _on_puback(self, body: bytes) -> None:
        pid = int.from_bytes(body[:2], "big")
        if not self._inflight[pid]:
            raise ProtocolError(f"PUBACK for packet id {pid}, which is not in flight")
        self._inflight[pid] = 0
        self.pending -= 1
        # No reason code means success (MQTT 5, 3.4.2.1); >= 0x80 is a refusal.
        if len(body) > 2 and body[2] >= 0x80:
            self.refused += 1
        else:
            self.acked += 1

    def flush(self, timeout_s: float) -> None:
        """Wait until every publish is acknowledged (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while (self.pending or self._out) and time.monotonic() < deadline:
            self.service(0.1)

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.setblocking(True)
            self._sock.sendall(bytes((_DISCONNECT << 4, 0)))
        except OSError:
            pass
        self._sock.close()
        self._sock = None
