"""MQTT session settings and a paho-mqtt 2.x client factory used by every process.

This is the one module that touches paho's private internals (the receive fast path
and the gateway's receive gate in :class:`Client`).  They were tested with the paho
series in :data:`TESTED_PAHO`; requirements.txt pins it, a test fails on any other,
and :func:`make_client` logs a warning if run with another.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.config import read_secret

log = logging.getLogger(__name__)

# Packets read per network-loop wake-up before paho's loop runs its other work again
# (writes, keepalive): bounds how long acknowledgements wait behind a burst.
_READ_BATCH = 100
# paho-mqtt minor series the overrides below were tested with; keep requirements.txt in step.
TESTED_PAHO = ("2.2",)
# PUBACK fixed header: packet type 4, remaining length 2 (just the packet id).
_PUBACK_PREFIX = bytes((PacketTypes.PUBACK << 4, 2))


# While a receive gate has no room, the network thread re-checks it this often (and
# meanwhile writes acknowledgements and keeps the connection alive).
_GATE_WAIT_S = 0.05


class ReceiveGate(Protocol):
    def room(self, timeout_s: float) -> bool: ...


@dataclass(frozen=True)
class MqttSettings:
    host: str = "localhost"
    port: int = 1883
    # Empty: derived from the process's own id (gateway id, bridge port...).
    client_id: str = ""
    username: str = ""
    # Prefer password_file or the environment; never put secrets in the main config.
    password: str = ""
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    # Persistent session: the broker keeps our subscription and queues QoS 1
    # messages for this long while we are away.
    session_expiry_s: int = 7 * 86400
    # Flow control: at most this many unacknowledged QoS 1 messages in flight to us (what we
    # ask of the broker; the gateway's own memory bound is pipeline.max_held_readings).
    receive_maximum: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if not 0 < self.receive_maximum <= 65535:
            raise ValueError("receive_maximum must be 1..65535")
        if self.reconnect_min_s <= 0 or self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")


class Client(mqtt.Client):
    """paho's client with a cheaper receive path, for thousands of messages a second.

    For every MQTT 5 PUBLISH paho builds and clears a full ``Properties`` object: 17 %
    of the gateway's interpreter time (``bench.bench_gateway --profile gil``).  Sensors
    send no properties, so a PUBLISH whose property length is 0 is decoded here;
    anything else (QoS 2, properties, a malformed packet) takes paho's own path.  Such a
    message has ``properties = None``.

    ``on_plain_message(client, topic, payload, mid, qos)``, when set, receives those
    messages instead of ``on_message`` (which still gets the others): it skips paho's
    ``MQTTMessage``, its topic matcher and callback lock, another ~10 % per message.
    Per-topic callbacks (``message_callback_add``) do not see them.
    """

    on_plain_message: Callable[[mqtt.Client, str, bytes, int, int], None] | None = None
    # When set, no packet is read while it has no room (the gateway's memory bound);
    # the network loop goes on writing acknowledgements and pings.
    receive_gate: ReceiveGate | None = None

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        header: int = self._in_packet["command"]
        packet: bytes = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        if self._protocol != mqtt.MQTTv5 or qos == 2 or len(packet) < 2:
            return super()._handle_publish()
        end = 2 + int.from_bytes(packet[:2], "big")
        mid = int.from_bytes(packet[end : end + 2], "big") if qos else 0
        props_at = end + 2 if qos else end
        if len(packet) <= props_at or packet[props_at] != 0:
            return super()._handle_publish()  # properties (or a malformed packet)
        payload = bytes(packet[props_at + 1 :])
        plain = self.on_plain_message
        if plain is not None:
            try:
                topic = packet[2:end].decode()
            except UnicodeDecodeError:
                return super()._handle_publish()  # paho reports it its own way
            try:
                plain(self, topic, payload, mid, qos)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_plain_message: %s", err)
                if not self.suppress_exceptions:
                    raise
        else:
            message = mqtt.MQTTMessage(mid=mid, topic=bytes(packet[2:end]))
            message.dup = bool(header & 0x08)
            message.qos = qos
            message.retain = bool(header & 0x01)
            message.properties = None
            message.payload = payload
            message.timestamp = mqtt.time_func()
            self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """Read every complete packet the socket has, up to ``_READ_BATCH`` per wake-up.

        paho reads one packet per ``select()`` (its ``max_packets`` counts only our own
        QoS 1/2 messages in flight), so a stream of readings cost a ``select`` and a
        pass of its network loop per message.  The socket is non-blocking: reading
        stops when it has nothing more (``MQTT_ERR_AGAIN``), as paho's own loop does.
        """
        gate = self.receive_gate
        for _ in range(max(max_packets, _READ_BATCH)):
            if self._sock is None:
                return mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN
            # Not before CONNACK: the connection itself must always be read.
            if gate is not None and self.is_connected() and not gate.room(_GATE_WAIT_S):
                break
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == mqtt.MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages (manual acks) in order, as one write.

        paho's ``ack`` queues one packet per message and wakes the network thread
        through its socket pair each time: with thousands of acks a second that was
        ~10 % of the gateway's CPU.  The PUBACKs here (MQTT 5 allows the short form,
        no reason code = success) go out together in one queued packet.
        """
        if not mids or not self._manual_ack:
            return
        packet = b"".join([_PUBACK_PREFIX + mid.to_bytes(2, "big") for mid in mids])
        self._packet_queue(PacketTypes.PUBACK << 4, packet, mids[-1], 1)


def make_client(
    settings: MqttSettings,
    client_id: str,
    *,
    will: tuple[str, bytes] | None = None,
) -> Client:
    """Create an MQTT v5 client with auth, TLS, last will and capped reconnect backoff."""
    _warn_if_untested_paho()
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=settings.client_id or client_id,
        protocol=mqtt.MQTTv5,
    )
    password = read_secret(settings.password, settings.password_file, "mqtt.password")
    if settings.username:
        client.username_pw_set(settings.username, password or None)
    if settings.tls:
        client.tls_set(
            ca_certs=settings.ca_file or None,
            certfile=settings.cert_file or None,
            keyfile=settings.key_file or None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(
        min_delay=max(1, round(settings.reconnect_min_s)), max_delay=round(settings.reconnect_max_s)
    )
    return client


def paho_series() -> str:
    return ".".join(paho.mqtt.__version__.split(".")[:2])


@functools.cache
def _warn_if_untested_paho() -> None:
    """Once per process."""
    if paho_series() not in TESTED_PAHO:
        log.warning(
            "paho-mqtt %s is not a series common.mqtt was tested with (%s): its receive "
            "path overrides paho internals; install the pinned version",
            paho.mqtt.__version__,
            ", ".join(TESTED_PAHO),
        )


def connect_properties(settings: MqttSettings) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = settings.session_expiry_s
    props.ReceiveMaximum = settings.receive_maximum
    return props


def start(client: mqtt.Client, settings: MqttSettings, *, clean_start: bool) -> None:
    """Connect asynchronously and start the network thread (which also reconnects)."""
    client.connect_async(
        settings.host,
        settings.port,
        keepalive=settings.keepalive_s,
        clean_start=clean_start,
        properties=connect_properties(settings),
    )
    client.loop_start()


def session_up(client: mqtt.Client, settings: MqttSettings, flags, reason_code) -> bool:
    """On CONNACK of a persistent session: log it, and True (Nagle off) if it is up."""
    if reason_code.is_failure:
        log.error("broker refused connection: %s", reason_code)
        return False
    log.info(
        "connected to %s:%d (session present: %s)",
        settings.host,
        settings.port,
        flags.session_present,
    )
    disable_nagle(client)
    return True


def disable_nagle(client: mqtt.Client) -> None:
    """Send small packets (alerts, PUBACKs) at once instead of waiting up to ~40 ms for
    more data to coalesce (measured: alert latency p50 44 ms -> 14 ms).  Call it from
    on_connect, when the socket exists; paho does not set it."""
    sock = client.socket()
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.debug("cannot set TCP_NODELAY: %s", exc)
