"""Acknowledging changes no state in the API: the contract's acknowledgement
(``contract.alerting.ack_payload``) is published on ``factory/ack/<line>/<device>`` at
QoS 1 over a short-lived MQTT connection, and the request returns once the broker has
PUBACKed it.  The gateway applies it (stops reminders, records the event).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import MQTTErrorCode

from api.alert_requests import AckRequest
from api.alert_store import Alert
from api.errors import ApiError
from common.mqtt import MqttSettings, disable_nagle, make_client
from contract.alerting import (
    ack_payload,
)
from contract.topics import ack_topic

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The broker did not accept the connection or did not PUBACK in time."""


class BrokerRefused(Exception):
    """The broker answered the publish with a failure reason code (e.g. not authorised)."""


def publish_ack(settings: MqttSettings, alert: Alert, req: AckRequest, timeout_s: float) -> str:
    """Publish the acknowledgement of ``alert`` at QoS 1 and wait for the PUBACK.

    A connection per call: acknowledgements are rare, and a clean session with no
    expiry leaves nothing behind on the broker.  Returns the topic.
    """
    topic = ack_topic(alert.line, alert.device)
    payload = ack_payload(alert.alert_id, req.by, req.note)
    where = f"{settings.host}:{settings.port}"
    client = make_client(
        dataclasses.replace(settings, client_id=""),
        f"api-ack-{os.getpid()}-{secrets.token_hex(4)}",
    )
    client.connect_timeout = timeout_s
    connected: list[Any] = []
    acked: list[Any] = []

    def on_connect(c, _userdata, _flags, reason_code, _props) -> None:
        disable_nagle(c)
        connected.append(reason_code)

    client.on_connect = on_connect
    client.on_publish = lambda _c, _u, _mid, reason_code, _p: acked.append(reason_code)
    deadline = time.monotonic() + timeout_s

    def run_until(done: Callable[[], bool]) -> None:
        while not done() and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # connection closed or refused: the callbacks said why, if anything

    try:
        try:
            client.connect(
                settings.host, settings.port, keepalive=max(5, round(timeout_s) * 2),
                clean_start=True,
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            raise BrokerUnavailable(f"MQTT broker at {where} is unreachable: {exc}") from None
        run_until(lambda: bool(connected))
        if not connected or connected[0].is_failure:
            why = f"refused the connection ({connected[0]})" if connected else "did not answer"
            raise BrokerUnavailable(f"MQTT broker at {where} {why}")
        info = client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"MQTT broker at {where}: publish failed ({info.rc.name})")
        run_until(lambda: bool(acked))
        if not acked:
            raise BrokerUnavailable(
                f"MQTT broker at {where} did not acknowledge the message within {timeout_s:g} s"
            )
        if getattr(acked[0], "is_failure", False):
            raise BrokerRefused(f"MQTT broker at {where} refused the message ({acked[0]})")
        client.disconnect()
    finally:
        sock = client.socket()  # the client is thrown away: release its socket
        if sock is not None:
            sock.close()
    log.info("acknowledgement of alert %s by %s published on %s", alert.alert_id, req.by, topic)
    return topic


def broker_answers(func: Callable[[], str]) -> str:
    """``func()``, with broker failures as 503 (unreachable) / 502 (refused)."""
    try:
        return func()
    except BrokerUnavailable as exc:
        raise ApiError(503, "broker_unavailable", str(exc)) from None
    except BrokerRefused as exc:
        raise ApiError(502, "broker_refused", str(exc)) from None
