"""Text line -> validated contract reading, for the formats nodes print.

- ``json``: ``{"temperature_c": 21.5, "humidity_pct": 40.1, "sound_db": 55.0, "seq": 7}``
- ``kv``:   ``temp=21.5, humidity=40.1 noise=550 seq=7`` (commas, semicolons or spaces)
- ``csv``:  ``7,21.5,40.1,550`` with the column order from the config

Keys go through the contract's alias table; per-field scale and offset are applied
(raw ADC counts -> dB) and the result is validated by ``contract.normalise_record``,
exactly as the gateway will validate it, so a reading the gateway would dead-letter
is counted here with the same reason instead of being sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from contract import DecodeLimits, Rejected, canonical_field, normalise_record
from contract.reading import DEFAULT_LIMITS
from sensors.serial_bridge.config import ParseSettings

# Reasons found before the contract check; the contract's own reasons follow.
PARSE_REASONS = ("not_json", "not_object", "bad_kv", "bad_csv")
_KV_SEPARATORS = re.compile(r"[,;\s]+")
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True, slots=True)
class ParsedReading:
    values: dict[str, float]
    ts_ns: int
    seq: int | None
    # The node's own ``ts`` exactly as it sent it (validated), or None.
    node_ts: float | str | None


def scalar(text: str) -> int | float | str:
    """A kv/csv cell: an int, a float, or the text itself (the contract rejects it)."""
    text = text.strip().strip('"')
    if _INT.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _record_key(key: str) -> str:
    """Canonical field name; ``ts``/``seq`` lower-cased; other keys kept (ignored later)."""
    canonical = canonical_field(key)
    if canonical is not None:
        return canonical
    lowered = key.lower()
    return lowered if lowered in ("ts", "seq") else key


def parse_json(text: str) -> dict[str, object]:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Rejected("not_json", f"invalid JSON: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise Rejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return {_record_key(k): v for k, v in obj.items()}


def parse_kv(text: str) -> dict[str, object]:
    record: dict[str, object] = {}
    for token in _KV_SEPARATORS.split(text):
        if not token:
            continue
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise Rejected("bad_kv", f"expected key=value, got {token[:40]!r}")
        record[_record_key(key)] = scalar(value)
    return record


def parse_csv(text: str, columns: tuple[str, ...], delimiter: str) -> dict[str, object]:
    cells = text.split(delimiter)
    if len(cells) != len(columns):
        raise Rejected("bad_csv", f"expected {len(columns)} columns, got {len(cells)}")
    return {name: scalar(cell) for name, cell in zip(columns, cells, strict=True) if name != "_"}


class LineParser:
    def __init__(self, settings: ParseSettings, limits: DecodeLimits = DEFAULT_LIMITS):
        self.settings = settings
        self._limits = limits

    def to_record(self, text: str) -> dict[str, object]:
        fmt = self.settings.format
        if fmt == "json":
            record = parse_json(text)
        elif fmt == "kv":
            record = parse_kv(text)
        else:
            record = parse_csv(text, self.settings.csv_columns, self.settings.csv_delimiter)
        self._calibrate(record)
        return record

    def _calibrate(self, record: dict[str, object]) -> None:
        scale, offset = self.settings.scale, self.settings.offset
        for name in scale.keys() | offset.keys():
            raw = record.get(name)
            # Non-numbers are left alone: the contract check names the bad field.
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                record[name] = raw * scale.get(name, 1.0) + offset.get(name, 0.0)

    def parse(self, text: str, received_ns: int) -> ParsedReading:
        """Raises :class:`contract.Rejected` with a reason for anything invalid."""
        record = self.to_record(text)
        values, ts_ns, seq = normalise_record(record, received_ns, self._limits)
        node_ts = record.get("ts")
        return ParsedReading(values, ts_ns, seq, node_ts)  # type: ignore[arg-type]


class ReceiptClock:
    """Readings without a node timestamp get the Pi's receive time, in whole ms and
    strictly increasing: lines that arrive in one read (same instant) must not share a
    timestamp, or InfluxDB would keep only the last of them."""

    # A serial line cannot deliver a burst that runs this far ahead of the clock, so a
    # larger gap means the clock itself was stepped back (NTP): follow it.
    CLOCK_STEP_MS = 60_000

    def __init__(self) -> None:
        self._last_ms = 0

    def stamp(self, received_ns: int) -> str:
        ms = received_ns // 1_000_000
        if self._last_ms - self.CLOCK_STEP_MS <= ms <= self._last_ms:
            ms = self._last_ms + 1
        self._last_ms = ms
        seconds, millis = divmod(ms, 1000)  # integer maths: no float rounding of the ms
        day_time = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{day_time}.{millis:03d}Z"
