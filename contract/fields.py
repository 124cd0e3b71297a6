"""Reading fields: canonical names, units, physical ranges and accepted aliases.

The alias table is the single place where names used by existing clients are mapped
onto the contract.  Matching is case-insensitive.  A plant that adds a sensor (say
vibration) adds a FieldSpec through config; the model metadata says which fields a
model needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.schema import check_field_name


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    unit: str
    # Physically possible range for the sensor class; outside it the value is a
    # sensor/transport error, not a machine state, and the message is rejected.
    minimum: float
    maximum: float
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_field_name(self.name)


DEFAULT_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "temperature_c",
        "°C",
        -50.0,
        250.0,
        aliases=("temperature", "temp", "temperature_c", "Temperature_C"),
    ),
    FieldSpec(
        "humidity_pct",
        "%",
        0.0,
        100.0,
        aliases=("humidity", "humidity_pct", "Humidity_%", "rh"),
    ),
    FieldSpec(
        "sound_db",
        "dB",
        0.0,
        200.0,
        aliases=("sound", "sound_db", "noise", "sound_volume", "loudness", "Sound_Volume_dB"),
    ),
)


def build_alias_table(fields: tuple[FieldSpec, ...]) -> dict[str, str]:
    table: dict[str, str] = {}
    for spec in fields:
        for name in (spec.name, *spec.aliases):
            key = name.lower()
            other = table.get(key)
            if other is not None and other != spec.name:
                raise ValueError(f"alias {name!r} maps to both {other!r} and {spec.name!r}")
            table[key] = spec.name
    return table


FIELD_ALIASES: dict[str, str] = build_alias_table(DEFAULT_FIELDS)


def canonical_field(key: str, table: dict[str, str] = FIELD_ALIASES) -> str | None:
    """Canonical field name for a payload key, or None if the key is not a reading field."""
    return table.get(key.lower())
