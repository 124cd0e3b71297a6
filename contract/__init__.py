"""The wire contract shared by sensors, gateway and API.

Everything other tools and dashboards depend on lives here: MQTT topics, reading
field names with their units and accepted aliases, payload decoding/validation and
the alert / dead-letter payload shapes.  Keep it small and keep it exact.
"""

from contract.fields import (
    DEFAULT_FIELDS,
    FIELD_ALIASES,
    FieldSpec,
    canonical_field,
)
from contract.reading import (
    DecodeLimits,
    Reading,
    Rejected,
    decode_reading,
    encode_reading,
    normalise_record,
)
from contract.timestamps import (
    CsvTimeRules,
    EpochUnitError,
    TimestampError,
    parse_csv_ns,
    parse_wire_ns,
    timezone_named,
)
from contract.topics import (
    READING_SUBSCRIPTION,
    alert_topic,
    deadletter_topic,
    parse_reading_topic,
    reading_topic,
    status_topic,
)

__all__ = [
    "DEFAULT_FIELDS",
    "FIELD_ALIASES",
    "READING_SUBSCRIPTION",
    "CsvTimeRules",
    "DecodeLimits",
    "EpochUnitError",
    "FieldSpec",
    "Reading",
    "Rejected",
    "TimestampError",
    "alert_topic",
    "canonical_field",
    "deadletter_topic",
    "decode_reading",
    "encode_reading",
    "normalise_record",
    "parse_csv_ns",
    "parse_reading_topic",
    "parse_wire_ns",
    "reading_topic",
    "status_topic",
    "timezone_named",
]
