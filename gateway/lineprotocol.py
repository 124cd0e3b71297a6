"""InfluxDB line protocol encoding (shared by the v1 and v2 sinks).

Hand-written because it is the hot path and the format is tiny; the escaping rules
follow the InfluxDB line protocol reference.
"""

from __future__ import annotations

from collections.abc import Mapping

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
