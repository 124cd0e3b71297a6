"""Encode stage: each reading's InfluxDB point (``ReadingEncoder.scored``), with its origin."""

from __future__ import annotations

from contract import Reading
from contract.lineprotocol import ReadingEncoder
from gateway.detection import Decisions
from gateway.intake import Message
from gateway.outbox import Outbox


class Encode:
    def __init__(self, gateway_id: str | None = None):
        """``gateway_id``: cluster mode, every point names the gateway that scored it."""
        self._encoder = ReadingEncoder()
        self._tail = ReadingEncoder.gateway_tail(gateway_id) if gateway_id is not None else ""

    def __call__(
        self,
        readings: list[Reading],
        messages: list[Message],
        decided: Decisions,
        version: str,
        out: Outbox,
    ) -> None:
        encode, tail = self._encoder.scored, self._tail
        lines = [
            encode(reading, version, score, is_anomaly, tail)
            for reading, score, is_anomaly in zip(
                readings, decided.scores, decided.flags, strict=True
            )
        ]
        out.reading_points(lines, messages)
