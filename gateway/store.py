"""Write one batch of points to InfluxDB, settling every point: stored or refused.

InfluxDB answers a batch with one status.  When it refuses points (a parse error, a
field type conflict, a partial write), the batch is split in halves and each half
written again until every refused point is found on its own; writes are idempotent
(same series and timestamp), so re-writing points already stored is harmless.  A
refused reading goes to the dead-letter topic with reason ``store_refused`` and
InfluxDB's message; the rest of the batch is stored.  Refusals are rare, so the
extra writes (about 2 log2(n) per refused point) cost nothing in normal operation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from contract.reading import STORE_REFUSED
from gateway.deadletters import DeadLetters
from gateway.metrics import GatewayMetrics
from gateway.sinks import Sink, WriteError

log = logging.getLogger(__name__)

# The MQTT message a point encodes: (topic, payload, received_ns).
Origin = tuple[str, bytes, int]


@dataclass(slots=True)
class Points:
    lines: list[str]
    # Line index -> the reading message it encodes (gateway points have none).
    origins: dict[int, Origin] = field(default_factory=dict)
    readings: int = 0

    @classmethod
    def merge(cls, parts: list[Points]) -> Points:
        if len(parts) == 1:
            return parts[0]
        out = cls([], {}, 0)
        for part in parts:
            offset = len(out.lines)
            out.lines += part.lines
            out.origins.update({offset + i: o for i, o in part.origins.items()})
            out.readings += part.readings
        return out


class Store:
    def __init__(self, sink: Sink, metrics: GatewayMetrics, dead_letters: DeadLetters):
        self._sink = sink
        self._metrics = metrics
        self._dead_letters = dead_letters

    def write(self, points: Points, timeout_s: float) -> None:
        """Store ``points`` or dead-letter the refused ones; raises :class:`WriteError`
        (retryable) when InfluxDB is unavailable, and then nothing is settled."""
        started = time.perf_counter()
        refused = self._write_isolating(points.lines, 0, len(points.lines), timeout_s)
        refused_readings = 0
        for index, reason in refused:
            origin = points.origins.get(index)
            if origin is None:
                log.error("InfluxDB refused a gateway point %r: %s", points.lines[index], reason)
                continue
            refused_readings += 1
            topic, payload, received_ns = origin
            self._dead_letters.send(topic, payload, STORE_REFUSED, reason, None, received_ns)
        if refused:
            log.error("InfluxDB refused %d of %d points", len(refused), len(points.lines))
            self._metrics.count_points_dropped(len(refused))
        self._metrics.observe_write(
            len(points.lines) - len(refused),
            points.readings - refused_readings,
            time.perf_counter() - started,
        )

    def _write_isolating(
        self, lines: list[str], lo: int, hi: int, timeout_s: float
    ) -> list[tuple[int, str]]:
        """Indices in [lo, hi) that InfluxDB refuses, with its message."""
        try:
            self._sink.write(lines[lo:hi], timeout_s)
            return []
        except WriteError as exc:
            self._metrics.count_write_error(exc.retryable)
            if exc.retryable:
                raise
            if hi - lo == 1:
                return [(lo, str(exc))]
        mid = (lo + hi) // 2
        return self._write_isolating(lines, lo, mid, timeout_s) + self._write_isolating(
            lines, mid, hi, timeout_s
        )
