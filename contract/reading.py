"""Decode and validate reading payloads; encode them for publishers.

``decode_reading`` is the gateway's hot path: one call per MQTT message, so it
avoids per-call allocation beyond the result.  Every rejection raises
:class:`Rejected` with a short machine-readable ``reason`` (used as a metrics label
and in the dead-letter payload) and a human ``detail`` that names the field.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import orjson

from contract.fields import DEFAULT_FIELDS, FieldSpec, build_alias_table
from contract.timestamps import TimestampError, parse_wire_ns
from contract.topics import TopicError, parse_reading_topic

# Reasons are a closed set so they can be metric labels.
REASONS = (
    "bad_topic",
    "too_large",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "not_finite",
    "out_of_range",
    "bad_timestamp",
    "bad_seq",
    "bad_field",  # an acknowledgement's alert_id, by or note
)
# Accepted by the contract, then refused by InfluxDB (the gateway dead-letters it).
STORE_REFUSED = "store_refused"
DEADLETTER_REASONS = (*REASONS, STORE_REFUSED)

# ``seq`` is stored as a signed 64-bit integer field: larger values cannot be stored.
MAX_SEQ = 2**63 - 1

# Valid reading topics already parsed: the same few hundred devices send all day,
# and splitting and checking the names was ~5 % of the gateway's scorer thread.
_TOPICS: dict[str, tuple[str, str]] = {}
_MAX_CACHED_TOPICS = 100_000


class Rejected(ValueError):
    """A message that does not satisfy the contract."""

    def __init__(self, reason: str, detail: str, field_name: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field_name


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    fields: tuple[FieldSpec, ...] = DEFAULT_FIELDS
    # Fields a message must carry; by default all known fields (the model's inputs).
    required: tuple[str, ...] | None = None
    max_payload_bytes: int = 64 * 1024
    max_future_s: float = 300.0
    max_age_s: float = 30 * 86400.0
    _aliases: dict[str, str] = field(init=False, repr=False, compare=False)
    _specs: dict[str, FieldSpec] = field(init=False, repr=False, compare=False)
    # Hot-path forms of the above: name -> (min, max, bounds are finite), the
    # required names as a set, and the clock limits in ns.
    _ranges: dict[str, tuple[float, float, bool]] = field(init=False, repr=False, compare=False)
    _required_set: frozenset[str] = field(init=False, repr=False, compare=False)
    _future_ns: float = field(init=False, repr=False, compare=False)
    _age_ns: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_aliases", build_alias_table(self.fields))
        object.__setattr__(self, "_specs", {f.name: f for f in self.fields})
        if self.required is None:
            object.__setattr__(self, "required", tuple(f.name for f in self.fields))
        unknown = set(self.required or ()) - set(self._specs)
        if unknown:
            raise ValueError(f"required fields not defined: {sorted(unknown)}")
        ranges = {
            f.name: (f.minimum, f.maximum, math.isfinite(f.minimum) and math.isfinite(f.maximum))
            for f in self.fields
        }
        object.__setattr__(self, "_ranges", ranges)
        object.__setattr__(self, "_required_set", frozenset(self.required or ()))
        object.__setattr__(self, "_future_ns", self.max_future_s * 1e9)
        object.__setattr__(self, "_age_ns", self.max_age_s * 1e9)

    @property
    def aliases(self) -> dict[str, str]:
        return self._aliases

    @property
    def specs(self) -> dict[str, FieldSpec]:
        return self._specs


DEFAULT_LIMITS = DecodeLimits()


@dataclass(slots=True)
class Reading:
    line: str
    device: str
    ts_ns: int
    values: dict[str, float]
    seq: int | None = None
    received_ns: int = 0


def parse_ts(raw: object, now_ns: int, limits: DecodeLimits) -> int:
    """The wire's ``ts`` (see :mod:`contract.timestamps`) within the limits' clock window."""
    try:
        ts_ns = parse_wire_ns(raw)
    except TimestampError as exc:
        raise Rejected("bad_timestamp", str(exc), "ts") from None
    if ts_ns - now_ns > limits._future_ns:
        raise Rejected("bad_timestamp", "ts is in the future beyond the allowed clock skew", "ts")
    if now_ns - ts_ns > limits._age_ns:
        raise Rejected("bad_timestamp", "ts is older than the accepted age", "ts")
    return ts_ns


def normalise_record(
    obj: object, received_ns: int | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> tuple[dict[str, float], int, int | None]:
    """Validate one decoded JSON record: returns (values, ts_ns, seq).

    Keys are mapped through the alias table; keys that are not reading fields (and
    not ``ts``/``seq``) are ignored so that newer clients can add metadata.
    """
    if not isinstance(obj, dict):
        raise Rejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
    now_ns = received_ns if received_ns is not None else time.time_ns()
    aliases = limits.aliases
    ranges = limits._ranges
    values: dict[str, float] = {}
    ts_ns = now_ns
    seq: int | None = None
    for key, raw in obj.items():
        # Canonical names are lower case: most keys hit without lower-casing.
        name = aliases.get(key)
        if name is None:
            lowered = key.lower()
            name = aliases.get(lowered)
            if name is None:
                if lowered == "ts":
                    ts_ns = parse_ts(raw, now_ns, limits)
                elif lowered == "seq":
                    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_SEQ:
                        raise Rejected("bad_seq", "seq must be an integer from 0 to 2^63-1", "seq")
                    seq = raw
                continue
        if type(raw) is float:
            value = raw
        elif isinstance(raw, bool) or not isinstance(raw, int | float):
            raise Rejected("wrong_type", f"{name} must be a number, got {type(raw).__name__}", name)
        else:
            try:
                value = float(raw)
            except OverflowError:  # an integer literal beyond any float
                value = math.inf if raw > 0 else -math.inf
        low, high, bounded = ranges[name]
        # NaN fails any comparison, so with finite bounds one test covers both cases.
        if not low <= value <= high or not bounded:
            if not math.isfinite(value):
                raise Rejected("not_finite", f"{name} is not a finite number", name)
            if not low <= value <= high:
                spec = limits.specs[name]
                raise Rejected(
                    "out_of_range",
                    f"{name}={value:g} outside physical range "
                    f"[{spec.minimum:g}, {spec.maximum:g}] {spec.unit}",
                    name,
                )
        values[name] = value
    if not limits._required_set <= values.keys():
        for name in limits.required or ():
            if name not in values:
                raise Rejected("missing_field", f"{name} is required", name)
    return values, ts_ns, seq


def decode_reading(
    topic: str,
    payload: bytes,
    received_ns: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> Reading:
    """Decode one MQTT reading message; raises :class:`Rejected` if it breaks the contract."""
    parsed = _TOPICS.get(topic)
    if parsed is None:
        try:
            parsed = parse_reading_topic(topic)
        except TopicError as exc:
            raise Rejected("bad_topic", str(exc)) from None
        if len(_TOPICS) >= _MAX_CACHED_TOPICS:
            _TOPICS.clear()  # bounded: devices come and go
        _TOPICS[topic] = parsed
    line, device = parsed
    if len(payload) > limits.max_payload_bytes:
        raise Rejected(
            "too_large", f"payload is {len(payload)} bytes, limit {limits.max_payload_bytes}"
        )
    now_ns = received_ns if received_ns is not None else time.time_ns()
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # orjson also refuses NaN/Infinity literals here, which is what we want.
        _explain_refused_json(payload, now_ns, limits)
        raise Rejected("not_json", f"invalid JSON: {str(exc)[:120]}") from None
    values, ts_ns, seq = normalise_record(obj, now_ns, limits)
    return Reading(line, device, ts_ns, values, seq, now_ns)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _explain_refused_json(payload: bytes, now_ns: int, limits: DecodeLimits) -> None:
    """Give a better reason than ``not_json`` where there is one: a number such as
    ``1e999`` is valid JSON grammar that no float holds (``not_finite``).  Off the hot
    path; what orjson refuses is never accepted."""
    try:
        obj = json.loads(payload, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return
    normalise_record(obj, now_ns, limits)  # raises the precise Rejected, if any


def encode_reading(
    values: dict[str, float], ts: float | str | None = None, seq: int | None = None
) -> bytes:
    """Build a contract payload; ``ts`` is epoch seconds or an RFC 3339 string."""
    body: dict[str, object] = dict(values)
    if ts is not None:
        body["ts"] = ts
    if seq is not None:
        body["seq"] = seq
    return orjson.dumps(body)
