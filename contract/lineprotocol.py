"""The InfluxDB schema's one encoder: line protocol for the points the gateway writes.

Beside :mod:`contract.schema` (the names), so everything written to InfluxDB is encoded
in one place; what the contract accepts round-trips through it exactly
(``tests/test_storage_roundtrip.py``).  Hand-written because it is the hot path and the
format is tiny; the escaping rules follow the InfluxDB line protocol reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from contract.reading import Reading
from contract.schema import (
    DEVICE,
    GATEWAY,
    IS_ANOMALY,
    LINE,
    MODEL_VERSION,
    READING,
    SCORE,
    SEQ,
    WARMING_UP,
)

_TAG_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\\": "\\\\"})
_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\\": "\\\\"})


def escape_tag(value: str) -> str:
    return value.translate(_TAG_ESCAPES)


def escape_measurement(value: str) -> str:
    return value.translate(_MEASUREMENT_ESCAPES)


def format_field(value: float | int | bool | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def encode_point(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, float | int | bool | str],
    ts_ns: int,
) -> str:
    """One point; tags are sorted (InfluxDB's preferred order), empty tag values dropped."""
    tag_part = "".join(
        f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v != ""
    )
    field_part = ",".join(f"{escape_tag(k)}={format_field(v)}" for k, v in fields.items())
    return f"{escape_measurement(measurement)}{tag_part} {field_part} {ts_ns}"


class ReadingEncoder:
    """Fast path for the ``reading`` measurement: the escaped tag prefix is cached per
    (line, device, model version) and field keys are escaped once, so each reading
    costs one join instead of a dozen escapes (the scorer thread's largest cost)."""

    def __init__(self, max_cached: int = 100_000):
        self._prefixes: dict[tuple[str, str, str], str] = {}
        self._keys: dict[str, str] = {}
        self._max = max_cached

    def _prefix(self, line: str, device: str, version: str) -> str:
        key = (line, device, version)
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) >= self._max:
                self._prefixes.clear()  # bounded: devices come and go, versions change
            prefix = (
                encode_point(
                    READING,
                    {LINE: line, DEVICE: device, MODEL_VERSION: version},
                    {"x": 0},
                    0,
                ).rsplit(" ", 2)[0]
                + " "
            )
            self._prefixes[key] = prefix
        return prefix

    def _field_part(self, fields: Mapping[str, object], fmt: Callable[[object], str]) -> str:
        keys = self._keys
        parts = []
        for name, value in fields.items():
            k = keys.get(name)
            if k is None:
                k = keys[name] = escape_tag(name)
            parts.append(f"{k}={fmt(value)}")
        return ",".join(parts)

    def encode(
        self,
        line: str,
        device: str,
        version: str,
        fields: dict[str, float | int | bool | str],
        ts_ns: int,
    ) -> str:
        body = self._field_part(fields, format_field)  # type: ignore[arg-type]
        return f"{self._prefix(line, device, version)}{body} {ts_ns}"

    def encode_reading(
        self, line: str, device: str, version: str, values: dict[str, float], tail: str, ts_ns: int
    ) -> str:
        """The scorer's form: ``values`` are floats (the contract makes them so) and
        ``tail`` holds the other fields already formatted, each with a leading comma."""
        body = self._field_part(values, repr) + tail if values else tail[1:]
        return f"{self._prefix(line, device, version)}{body} {ts_ns}"

    def scored(
        self,
        reading: Reading,
        version: str,
        score: float,
        is_anomaly: bool,
        gateway_tail: str = "",
    ) -> str:
        """A scored reading's point: its values, ``score`` and ``is_anomaly`` (or
        ``warming_up`` when the score is NaN: warming up or out of order), its ``seq``;
        ``gateway_tail`` is :meth:`gateway_tail` in cluster mode."""
        seq_tail = "" if reading.seq is None else f",{SEQ}={reading.seq}i"
        if not math.isnan(score):
            flag = "true" if is_anomaly else "false"
            tail = f",{SCORE}={score!r},{IS_ANOMALY}={flag}{seq_tail}{gateway_tail}"
        else:
            tail = f",{WARMING_UP}=true{seq_tail}{gateway_tail}"
        return self.encode_reading(
            reading.line, reading.device, version, reading.values, tail, reading.ts_ns
        )

    @staticmethod
    def gateway_tail(gateway_id: str) -> str:
        return f",{GATEWAY}={format_field(gateway_id)}"
