"""The one reader of CSV files of sensor readings, for training (``model.dataset``),
replay (``sensors.csv_source``) and the backtest.

It opens a file the way spreadsheets save them (UTF-8 with or without a byte-order
mark, any one-character delimiter), takes the first non-blank line as the header
(names stripped) and yields the data rows with their line numbers, skipping blank
lines.  Columns are found exactly, then in any case, then through the contract's
alias table (``Temperature_C`` is ``temperature_c``); the timestamp column is the
first of :data:`contract.timestamps.TIME_COLUMNS` present, and a file has ``line`` /
``device`` columns or is one device.  Timestamps are parsed by
:func:`contract.timestamps.parse_csv_ns` only.

Problems raise the caller's :class:`CsvError` subclass (``error=``), so each tool
keeps its own exception, with messages naming the file and the line.
"""

from __future__ import annotations

import contextlib
import csv
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from contract.fields import canonical_field
from contract.timestamps import (
    TIME_COLUMNS,
    CsvTimeRules,
    EpochUnitError,
    TimestampError,
    parse_csv_ns,
)

# Columns naming a row's device; a file without a device column is one device.
DEVICE_COLUMNS = ("line", "device")
# The contract's per-device sequence number, passed through when a file has it.
SEQ_COLUMN = "seq"

# Real exports carry long free-text columns; the stdlib default (128 KiB) is too small.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class CsvError(ValueError):
    """The CSV cannot be read as asked; the message says what and where."""


def find_column(
    header: Sequence[str], wanted: str, *, aliases: bool = False, error: type[CsvError] = CsvError
) -> int | None:
    """Index of ``wanted``: exact, then any case, then (``aliases``) through the alias
    table; None if absent, ``error`` if two columns would fit."""
    exact = [i for i, h in enumerate(header) if h == wanted]
    if len(exact) > 1:
        raise error(f"column {wanted!r} appears {len(exact)} times in the header")
    if exact:
        return exact[0]
    folded = [i for i, h in enumerate(header) if h.lower() == wanted.lower()]
    if len(folded) == 1:
        return folded[0]
    if len(folded) > 1:
        names = [header[i] for i in folded]
        raise error(f"column {wanted!r} is ambiguous: header has {names}")
    if not aliases:
        return None
    target = canonical_field(wanted)
    if target is None:
        return None
    aliased = [i for i, h in enumerate(header) if canonical_field(h) == target]
    if len(aliased) > 1:
        names = [header[i] for i in aliased]
        raise error(f"column {wanted!r} is ambiguous: header has aliases {names}")
    return aliased[0] if aliased else None


def first_column(
    header: Sequence[str], candidates: Sequence[str], error: type[CsvError] = CsvError
) -> str | None:
    """The header's spelling of the first of ``candidates`` it has, in any case."""
    for name in candidates:
        index = find_column(header, name, error=error)
        if index is not None:
            return header[index]
    return None


def find_time_column(header: Sequence[str], error: type[CsvError] = CsvError) -> str | None:
    """The header's first usual timestamp column (``ts``, ``timestamp``, ``time``, ...)."""
    return first_column(header, TIME_COLUMNS, error)


def device_columns(header: Sequence[str], error: type[CsvError] = CsvError) -> tuple[str, ...]:
    """The header's ``line`` and ``device`` columns, or () when it has no ``device``
    column: then the file is one device."""
    found = tuple(
        name for name in DEVICE_COLUMNS if find_column(header, name, error=error) is not None
    )
    return found if "device" in found else ()


def field_columns(header: Sequence[str], exclude: Sequence[str | None] = ()) -> dict[str, str]:
    """Every column the alias table knows, in header order: {column: contract field}
    (two columns may name one field: the caller says what that means to it)."""
    fields = {}
    for column in header:
        name = canonical_field(column)
        if name is not None and column not in exclude:
            fields[column] = name
    return fields


def describe_header(header: Sequence[str]) -> str:
    shown = ", ".join(repr(h) for h in header[:30])
    more = f", ... ({len(header)} columns)" if len(header) > 30 else ""
    return f"[{shown}{more}]"


def delimiter_hint(header: Sequence[str], delimiter: str) -> str:
    """A guess at the real delimiter when the header came out as a single column."""
    if len(header) != 1:
        return ""
    for candidate in (";", "\t", ",", "|"):
        if candidate != delimiter and candidate in header[0]:
            return f" (the header has a single column; is the delimiter {candidate!r}?)"
    return ""


class CsvFile:
    """A CSV file and its header; :meth:`records` reads it from the start each time."""

    def __init__(self, path: str | Path, *, delimiter: str = ",", error: type[CsvError] = CsvError):
        self.path = Path(path)
        self.name = self.path.name
        self.delimiter = delimiter
        self.error = error
        if len(delimiter) != 1:
            raise error(f"delimiter must be one character, got {delimiter!r}")
        with contextlib.closing(self._rows()) as rows:
            first = next(rows, None)
        if first is None:
            raise error(f"{self.name}: file is empty (no header line)")
        self.header: tuple[str, ...] = tuple(name.strip() for name in first[1])

    def find(self, wanted: str, *, aliases: bool = False) -> int | None:
        return find_column(self.header, wanted, aliases=aliases, error=self.error)

    def records(self) -> Iterator[tuple[int, list[str]]]:
        """(line number, cells) of each data row; the header is skipped."""
        rows = self._rows()
        next(rows, None)
        yield from rows

    def check_epoch_unit(self, column: str, rules: CsvTimeRules) -> None:
        """Refuse at once a file whose first row's epoch is in another unit than
        ``rules`` says: otherwise every row would be a bad timestamp."""
        index = self.header.index(column)
        first = next(self.records(), None)
        if first is None or index >= len(first[1]):
            return
        try:
            parse_csv_ns(first[1][index], rules)
        except EpochUnitError as exc:
            raise self.error(f"{self.name}: column {column!r}: {exc}") from None
        except TimestampError:
            pass  # an ordinary bad row, for the caller to count or report

    def _rows(self) -> Iterator[tuple[int, list[str]]]:
        """Non-blank rows, the header included, as (line number, cells)."""
        with self._open() as fh:
            reader = csv.reader(fh, delimiter=self.delimiter)
            try:
                for cells in reader:
                    if cells:
                        yield reader.line_num, cells
            except csv.Error as exc:
                raise self.error(f"{self.name} line {reader.line_num}: {exc}") from None
            except UnicodeDecodeError as exc:
                raise self.error(
                    f"{self.name}: not UTF-8 text near line {reader.line_num + 1}: {exc.reason}"
                ) from None

    def _open(self):
        try:
            # utf-8-sig: spreadsheet exports often start with a byte-order mark.
            return open(self.path, encoding="utf-8-sig", newline="")
        except FileNotFoundError:
            raise self.error(f"CSV file not found: {self.path}") from None
        except IsADirectoryError:
            raise self.error(f"CSV path is a directory: {self.path}") from None
        except OSError as exc:
            raise self.error(f"cannot open {self.path}: {exc.strerror}") from None
