"""Read any CSV of sensor readings as contract readings, counting the bad rows.

Columns become contract fields through an explicit map or, by default, the
contract's alias table (``Temperature_C``, ``Humidity_%``, ``Sound_Volume_dB``...).
Line and device come from columns or are fixed for the whole file.  A ``seq``
column, if present, is passed through as each reading's ``seq``.  A bad row
(non-numeric value, out of physical range, unparseable timestamp, bad name, a ``seq``
that is not an integer >= 0) is counted and skipped; it never stops a replay.

Timestamps follow :func:`contract.timestamps.parse_csv_ns`: RFC 3339 with an offset,
naive times in ``time_rules.timezone`` (default UTC), epoch numbers in
``time_rules.epoch_unit`` (default seconds; milliseconds are not guessed: a file whose
first row's epoch is too large for seconds is refused naming ``--epoch-unit``).

The file itself (encoding, header, finding columns, aliases) is read by
:class:`common.csv_readings.CsvFile`, the reader the model tools use too.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.csv_readings import (
    SEQ_COLUMN,
    CsvError,
    CsvFile,
    field_columns,
    find_column,
    first_column,
)
from common.logs import RateLimitedLog
from contract import DEFAULT_FIELDS, canonical_field
from contract.timestamps import (
    CSV_DEFAULT,
    TIME_COLUMNS,
    CsvTimeRules,
    TimestampError,
    parse_csv_ns,
)
from contract.topics import valid_name

log = logging.getLogger(__name__)

_SPECS = {spec.name: spec for spec in DEFAULT_FIELDS}


class SourceError(CsvError):
    """The file cannot be replayed at all (missing column, no reading fields...)."""


class BadRow(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def parse_field_map(spec: str) -> dict[str, str]:
    """``"Temperature_C=temperature_c,Humidity_%=humidity_pct"`` -> {column: field}."""
    mapping: dict[str, str] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        column, sep, target = item.rpartition("=")
        if not sep or not column.strip():
            raise SourceError(f"--map entry {item!r} is not COLUMN=FIELD")
        name = canonical_field(target.strip())
        if name is None:
            raise SourceError(
                f"--map target {target.strip()!r} is not a reading field "
                f"({', '.join(_SPECS)} or an alias)"
            )
        mapping[column.strip()] = name
    if not mapping:
        raise SourceError("--map is empty")
    return mapping


def _column(header: Sequence[str], wanted: str) -> str:
    """The header's spelling of ``wanted`` (exact match first, then any case)."""
    index = find_column(header, wanted, error=SourceError)
    if index is None:
        raise SourceError(f"column {wanted!r} not in the header {list(header)}")
    return header[index]


def _find(header: Sequence[str], wanted: str | None, candidates: Sequence[str]) -> str | None:
    """Column named ``wanted`` (must exist), else the first candidate present."""
    if wanted is not None:
        return _column(header, wanted)
    return first_column(header, candidates, SourceError)


@dataclass(frozen=True)
class ColumnPlan:
    fields: dict[str, str]  # CSV column -> contract field
    ts_column: str | None
    line_column: str | None
    device_column: str | None
    line: str | None  # fixed names when there is no column
    device: str | None
    seq_column: str | None = None

    @property
    def missing_fields(self) -> list[str]:
        return [name for name in _SPECS if name not in self.fields.values()]


def plan_columns(
    header: Sequence[str],
    *,
    field_map: dict[str, str] | None = None,
    ts_column: str | None = None,
    line_column: str | None = None,
    device_column: str | None = None,
    line: str | None = None,
    device: str | None = None,
) -> ColumnPlan:
    """Decide which column is what; raises :class:`SourceError` naming the problem."""
    if line is not None and line_column is not None:
        raise SourceError("give either --line or --line-column, not both")
    if device is not None and device_column is not None:
        raise SourceError("give either --device or --device-column, not both")
    ts_col = _find(header, ts_column, TIME_COLUMNS)
    seq_col = first_column(header, (SEQ_COLUMN,), SourceError)
    line_col = None if line is not None else _find(header, line_column, ("line",))
    device_col = None if device is not None else _find(header, device_column, ("device",))
    if line_col is None and line is None:
        raise SourceError("no 'line' column: give --line NAME or --line-column COLUMN")
    if device_col is None and device is None:
        raise SourceError("no 'device' column: give --device NAME or --device-column COLUMN")
    for name, what in ((line, "--line"), (device, "--device")):
        if name is not None and not valid_name(name):
            raise SourceError(f"{what} {name!r}: 1-64 printable characters, no spaces, + # /")
    if field_map is not None:
        fields = {_column(header, column): name for column, name in field_map.items()}
    else:
        fields = field_columns(header, exclude=(ts_col, line_col, device_col))
    seen: dict[str, str] = {}
    for column, name in fields.items():
        if name in seen:
            raise SourceError(f"columns {seen[name]!r} and {column!r} both map to {name}")
        seen[name] = column
    if not fields:
        raise SourceError(
            f"no reading fields among the columns {list(header)}; use --map COLUMN=FIELD,..."
        )
    return ColumnPlan(fields, ts_col, line_col, device_col, line, device, seq_col)


@dataclass(frozen=True, slots=True)
class SourceRow:
    row: int  # line number in the file, for messages
    line: str
    device: str
    ts: float | None  # epoch seconds from the file, if it has a timestamp column
    values: dict[str, float]
    seq: int | None = None  # from the file's seq column, if it has one


@dataclass
class Scan:
    rows: int = 0
    earliest: float | None = None
    latest: float | None = None


@dataclass
class BadRows:
    counts: Counter[str] = field(default_factory=Counter)
    _log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log, 10.0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, row: int, exc: BadRow) -> None:
        self.counts[exc.reason] += 1
        self._log.warning(exc.reason, "skipping row %d: %s", row, exc)


def _value(raw: str | None, column: str, name: str) -> float:
    if raw is None or not raw.strip():
        raise BadRow("bad_value", f"{column} is empty")
    try:
        value = float(raw)
    except ValueError:
        raise BadRow("bad_value", f"{column}={raw.strip()[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise BadRow("bad_value", f"{column}={raw.strip()!r} is not finite")
    spec = _SPECS[name]
    if not spec.minimum <= value <= spec.maximum:
        raise BadRow(
            "out_of_range",
            f"{column}={value:g} outside [{spec.minimum:g}, {spec.maximum:g}] {spec.unit}",
        )
    return value


def _seq(raw: str | None, column: str) -> int:
    text = (raw or "").strip()
    # Digits only: "7.0", "-1" and "+3" are not what the contract's seq is.
    if not text.isascii() or not text.isdigit():
        raise BadRow("bad_seq", f"{column}={text[:40]!r} is not an integer >= 0")
    return int(text)


def _name(raw: str | None, column: str) -> str:
    name = (raw or "").strip()
    if not valid_name(name):
        raise BadRow("bad_name", f"{column}={name[:40]!r} is not a valid line/device name")
    return name


class CsvSource:
    """A CSV file with its column plan; :meth:`rows` reads it from the start each time."""

    def __init__(
        self,
        path: str | Path,
        *,
        delimiter: str = ",",
        field_map: dict[str, str] | None = None,
        ts_column: str | None = None,
        line_column: str | None = None,
        device_column: str | None = None,
        line: str | None = None,
        device: str | None = None,
        time_rules: CsvTimeRules = CSV_DEFAULT,
    ):
        self.path = Path(path)
        self.delimiter = delimiter
        self.time_rules = time_rules
        self._file = CsvFile(path, delimiter=delimiter, error=SourceError)
        self.header = self._file.header
        self.plan = plan_columns(
            self.header,
            field_map=field_map,
            ts_column=ts_column,
            line_column=line_column,
            device_column=device_column,
            line=line,
            device=device,
        )
        if self.plan.ts_column is not None:
            self._file.check_epoch_unit(self.plan.ts_column, time_rules)

    def _parse(self, number: int, record: dict[str, str | None]) -> SourceRow:
        plan = self.plan
        line = plan.line or _name(record.get(plan.line_column or ""), plan.line_column or "line")
        device = plan.device or _name(
            record.get(plan.device_column or ""), plan.device_column or "device"
        )
        ts = None
        if plan.ts_column is not None:
            raw = record.get(plan.ts_column) or ""
            try:
                # int / int is correctly rounded; int / 1e9 rounds the int first.
                ts = parse_csv_ns(raw, self.time_rules) / 1_000_000_000
            except (TimestampError, OverflowError) as exc:
                raise BadRow("bad_timestamp", f"{plan.ts_column} {exc}") from None
        seq = None
        if plan.seq_column is not None:
            seq = _seq(record.get(plan.seq_column), plan.seq_column)
        values = {name: _value(record.get(col), col, name) for col, name in plan.fields.items()}
        return SourceRow(number, line, device, ts, values, seq)

    def rows(self, bad: BadRows | None = None) -> Iterator[SourceRow]:
        """Good rows in file order; bad ones are counted in ``bad`` and skipped."""
        for number, cells in self._file.records():
            record = dict(zip(self.header, cells, strict=False))
            try:
                yield self._parse(number, record)
            except BadRow as exc:
                if bad is not None:
                    bad.add(number, exc)

    def scan(self) -> Scan:
        """Count the good rows and find their time span: one quick pass before a replay."""
        result = Scan()
        for row in self.rows():
            result.rows += 1
            if row.ts is not None:
                if result.earliest is None or row.ts < result.earliest:
                    result.earliest = row.ts
                if result.latest is None or row.ts > result.latest:
                    result.latest = row.ts
        return result
