"""The one timestamp parser: the wire contract's rules, plus explicit options for CSV files.

**Wire** (:func:`parse_wire_ns`, the ``ts`` of a reading; README "Wire contract"):

* a number is epoch **seconds**; beyond +-1e11 (year 5138) it is refused as
  "looks like milliseconds";
* a string is RFC 3339 with a UTC offset (``2026-11-22T06:00:00.250Z``,
  ``...+01:00``); without an offset it is refused.

The gateway's age and clock-skew limits are applied by :mod:`contract.reading`.

**CSV** (:func:`parse_csv_ns` with :class:`CsvTimeRules`): every cell is text, and
exports come as they come.

* A number is an epoch in ``epoch_unit`` (default ``s``; ``ms``, ``us``, ``ns``).
  Milliseconds are never guessed: with unit ``s`` a value beyond +-1e11 is refused
  with :class:`EpochUnitError`, whose message names ``--epoch-unit`` and the unit the
  magnitude suggests.  The CSV tools (``python -m model``, ``python -m sensors.replay``)
  all take that flag.
* A string with an offset is read as on the wire.
* A naive string (``2020-03-09 10:14:33``, ``2013-12-02 21:15:00.000000``) is wall
  time in ``timezone`` (the CSV tools' ``--timezone``, default UTC; ``None`` refuses
  naive times like the wire does).  In a zone with daylight saving, a wall time that
  occurs twice (autumn) is read as its first occurrence, and one that does not exist
  (inside the spring gap) with the offset in force before the gap.

Results are integer epoch nanoseconds.  Times in text are exact to the microsecond and
CSV epoch numbers to the nanosecond (read as decimals, not floats); a JSON float is
as exact as the float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Epoch values beyond this are almost certainly milliseconds (year 5138 in seconds).
EPOCH_SECONDS_MAX = 1e11
EPOCH_UNITS: dict[str, int] = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
# Header names that usually hold the time of a row, in order of preference.
TIME_COLUMNS = ("ts", "timestamp", "time", "datetime", "date_time")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class TimestampError(ValueError):
    """A time that does not satisfy the rules; the message says which rule."""


class EpochUnitError(TimestampError):
    """A CSV epoch number that is not in the unit given (seconds by default)."""


@dataclass(frozen=True, slots=True)
class CsvTimeRules:
    """How CSV tools read a timestamp cell (see the module docstring)."""

    timezone: tzinfo | None = UTC  # naive times are wall time here; None refuses them
    epoch_unit: str = "s"

    def __post_init__(self) -> None:
        if self.epoch_unit not in EPOCH_UNITS:
            raise ValueError(f"epoch_unit must be one of {list(EPOCH_UNITS)}")


CSV_DEFAULT = CsvTimeRules()  # naive = UTC, epoch seconds: the CSV tools' defaults


def timezone_named(name: str) -> tzinfo:
    """``UTC`` or an IANA zone name (``Europe/Berlin``) -> tzinfo."""
    name = name.strip()
    if name.upper() in {"UTC", "Z"}:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimestampError(
            f"unknown time zone {name!r}: give an IANA name such as UTC or Europe/Berlin"
        ) from None


def _aware_ns(parsed: datetime) -> int:
    # Exact: integer microseconds since the epoch, not a float timestamp.
    return (parsed - _EPOCH) // _MICROSECOND * 1000


def parse_wire_ns(raw: object, name: str = "ts") -> int:
    """A reading's ``ts`` (JSON number or string) -> epoch ns, by the wire contract."""
    if type(raw) is float or type(raw) is int:  # the usual case, checked first
        if not -EPOCH_SECONDS_MAX <= raw <= EPOCH_SECONDS_MAX:
            if not math.isfinite(raw):
                raise TimestampError(f"{name} is not finite")
            raise TimestampError(f"{name} must be epoch seconds (value looks like milliseconds)")
        return raw * 1_000_000_000 if type(raw) is int else round(raw * 1e9)
    if isinstance(raw, bool):
        raise TimestampError(f"{name} must be an RFC 3339 string or epoch seconds")
    if isinstance(raw, int | float):
        return parse_wire_ns(float(raw), name)  # a subclass: as its plain value
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise TimestampError(f"{name} is not RFC 3339: {raw[:40]!r}") from None
        if parsed.tzinfo is None:
            raise TimestampError(f"{name} needs a UTC offset, e.g. 2026-11-22T10:00:00Z")
        return _aware_ns(parsed)
    raise TimestampError(f"{name} must be an RFC 3339 string or epoch seconds")


def _suggested_unit(value: float) -> str:
    size = abs(value)
    for unit, factor in (("ms", 1e3), ("us", 1e6)):
        if size <= EPOCH_SECONDS_MAX * factor:
            return unit
    return "ns"


def parse_csv_ns(text: str, rules: CsvTimeRules = CSV_DEFAULT) -> int:
    """One CSV cell -> epoch ns under ``rules``; raises :class:`TimestampError`."""
    text = text.strip()
    if not text:
        raise TimestampError("is empty")
    try:
        # Decimal, not float: the cell's digits are exact, so is the result.
        number = Decimal(text)
    except InvalidOperation:
        number = None
    if number is not None:
        if not number.is_finite():
            raise TimestampError(f"{text[:40]!r} is not a finite number")
        if rules.epoch_unit == "s" and abs(number) > EPOCH_SECONDS_MAX:
            unit = _suggested_unit(float(number))
            raise EpochUnitError(
                f"{text[:40]!r} is too large for epoch seconds; "
                f"if the column holds epoch {unit}, pass --epoch-unit {unit}"
            )
        return int((number * EPOCH_UNITS[rules.epoch_unit]).to_integral_value())
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TimestampError(
            f"{text[:40]!r} is neither an ISO 8601 / RFC 3339 time nor an epoch number"
        ) from None
    if parsed.tzinfo is None:
        if rules.timezone is None:
            raise TimestampError(f"{text[:40]!r} has no UTC offset and no time zone was given")
        # fold=0: the first of two wall times in autumn, the pre-gap offset in spring.
        parsed = parsed.replace(tzinfo=rules.timezone)
    return _aware_ns(parsed)


def ns_to_rfc3339(ts_ns: int) -> str:
    """Epoch ns -> ``2026-11-22T06:00:00.250000Z`` (microseconds), for messages and metadata."""
    moment = _EPOCH + timedelta(microseconds=ts_ns // 1000)
    return moment.isoformat().replace("+00:00", "Z")
