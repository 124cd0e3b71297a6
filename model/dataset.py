"""Load sensor readings from any CSV into numeric arrays for training and scoring.

Feature columns are named by the caller (default: the contract's three fields) and
matched against the header exactly, then case-insensitively, then through the
contract alias table, so ``Temperature_C`` satisfies ``temperature_c``.  Features
outside the alias table (a plant's ``vibration_mm_s``) just need to exist in the
header.  Every problem raises :class:`DatasetError` with a message that names the
file, the column and, for bad values, the line number.

Labels and fault columns use one vocabulary: ``NORMAL_TOKENS`` (0, false, no, none,
normal, ok, empty, ...) mean "normal", anything else means "anomaly".

Stream features (``temperature_c__std_10``, see :mod:`model.stream_features`) are not
CSV columns: :func:`load_csv` reads the fields they need plus the timestamp and device
columns, computes them per device in time order, and drops each device's warm-up rows
and repeated (device, ts) rows, counting both.  The timestamp column defaults to the
first of ``ts``, ``timestamp``, ``time``, ... in the header; the device columns to
``line`` and ``device``; a file without a ``device`` column is one device.

Timestamps are read by :func:`contract.timestamps.parse_csv_ns` under a
:class:`~contract.timestamps.CsvTimeRules` (naive times in a given zone, default UTC;
epoch seconds unless told otherwise).  The file itself (encoding, header, finding
columns) is read by :class:`common.csv_readings.CsvFile`, the reader the replay uses too.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import numpy as np

from common.csv_readings import (
    DEVICE_COLUMNS,
    CsvError,
    CsvFile,
    delimiter_hint,
    describe_header,
    device_columns,
    find_column,
    find_time_column,
)
from contract.fields import DEFAULT_FIELDS, canonical_field
from contract.timestamps import (
    CSV_DEFAULT,
    TIME_COLUMNS,
    CsvTimeRules,
    TimestampError,
    parse_csv_ns,
)
from model.stream_features import (
    DeviceRows,
    StreamFeatureError,
    StreamSpec,
    compute_offline,
    duplicate_mask,
    parse_feature,
)

_LOG = logging.getLogger(__name__)

NORMAL_TOKENS = frozenset(
    {"", "0", "0.0", "false", "f", "no", "n", "none", "normal", "nominal", "ok"}
)
DEFAULT_CHUNK_ROWS = 50_000
# Columns that identify a device when stream features need per-device windows.
DEFAULT_GROUP_COLUMNS = DEVICE_COLUMNS
# Device key of every row of a file without device columns: it is one device.
ONE_DEVICE = ""
_GROUP_SEPARATOR = "/"


class DatasetError(CsvError):
    """The CSV cannot be used as asked; the message says what and where."""


@dataclass(frozen=True, eq=False)
class Dataset:
    X: np.ndarray  # float64 (n, k), columns in feature_names order
    y: np.ndarray | None  # int8 0/1, 1 = anomaly
    faults: np.ndarray | None  # str fault type per row ("" / "none" = normal)
    ts: np.ndarray | None  # raw timestamp strings, unparsed
    feature_names: tuple[str, ...]  # canonical names (contract names when known)
    rows_dropped: int = 0
    columns: tuple[str, ...] = ()  # CSV header names the features were read from
    source: str | None = None  # file name, for provenance
    sha256: str | None = None  # of the file bytes
    label_column: str | None = None  # header names, recorded in model metadata
    fault_column: str | None = None
    groups: np.ndarray | None = None  # device key per row ("line1/press-01"), if read
    ts_ns: np.ndarray | None = None  # int64 epoch ns per row, if parsed
    rows_warmup: int = 0  # rows without a full stream-feature window (not in X)
    rows_duplicate: int = 0  # rows repeating a (device, ts) already seen (not in X)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def take(self, index: np.ndarray) -> Dataset:
        """The rows at ``index`` (positions or a boolean mask), every per-row array alike."""

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[index]

        return replace(
            self,
            X=self.X[index],
            y=pick(self.y),
            faults=pick(self.faults),
            ts=pick(self.ts),
            groups=pick(self.groups),
            ts_ns=pick(self.ts_ns),
        )

    def split_at(
        self, *, rows: int | None = None, until_ns: int | None = None
    ) -> tuple[Dataset, Dataset]:
        """(training part, rest): the first ``rows`` rows, or the rows stamped before
        ``until_ns`` (epoch ns; needs ``ts_ns``, e.g. ``load_csv(..., parse_timestamps=True)``).

        The usual protocol of unsupervised benchmarks: learn on the beginning, score
        the rest.  By time, rows out of file order go where their stamp puts them.
        """
        if (rows is None) == (until_ns is None):
            raise ValueError("give exactly one of rows and until_ns")
        if rows is not None:
            if rows < 1:
                raise DatasetError(f"the training part needs at least 1 row, got {rows}")
            head = np.zeros(len(self), dtype=bool)
            head[:rows] = True
        else:
            if self.ts_ns is None:
                raise DatasetError("splitting by time needs parsed timestamps (ts_ns)")
            head = self.ts_ns < until_ns
        return self.take(head), self.take(~head)


@dataclass(frozen=True)
class CsvLayout:
    """Which header column feeds which role."""

    header: tuple[str, ...]
    feature_names: tuple[str, ...]
    feature_index: tuple[int, ...]
    timestamp_index: int | None = None
    label_index: int | None = None
    fault_index: int | None = None
    group_index: tuple[int, ...] = ()

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return tuple(self.header[i] for i in self.feature_index)


@dataclass(eq=False)
class Chunk:
    """Up to ``chunk_rows`` data rows; ``kept`` indexes the rows that parsed."""

    rows: list[list[str]]
    lines: list[int]  # file line number of each row (header is line 1)
    X: np.ndarray
    y: np.ndarray | None
    faults: np.ndarray | None
    ts: np.ndarray | None
    kept: np.ndarray  # int indices into rows
    dropped: int = 0
    groups: np.ndarray | None = None  # device key per kept row
    ts_ns: np.ndarray | None = None  # int64 per kept row (when parse_ts)


def default_features() -> list[str]:
    return [spec.name for spec in DEFAULT_FIELDS]


def canonical_feature(name: str) -> str:
    """Contract name for a known field or alias; other names stay as given.

    Stream feature names keep their suffix: ``Temperature_C__std_10`` ->
    ``temperature_c__std_10``.
    """
    name = name.strip()
    try:
        parsed = parse_feature(name)
    except StreamFeatureError as exc:
        raise DatasetError(str(exc)) from None
    if parsed is not None:
        field = canonical_field(parsed.field) or parsed.field
        return f"{field}{name[len(parsed.field) :]}"
    return canonical_field(name) or name


def labels_from_strings(values: Sequence[str]) -> np.ndarray:
    """0 for NORMAL_TOKENS (case/whitespace-insensitive), 1 for anything else."""
    normal = NORMAL_TOKENS
    return np.fromiter(
        (0 if v.strip().lower() in normal else 1 for v in values),
        dtype=np.int8,
        count=len(values),
    )


def fault_labels(faults: np.ndarray) -> np.ndarray:
    """Binary labels derived from a fault-type column (no fault = normal)."""
    return labels_from_strings(list(faults))


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def resolve_layout(
    header: Sequence[str],
    features: Sequence[str] | None,
    *,
    timestamp_column: str | None = None,
    label_column: str | None = None,
    fault_column: str | None = None,
    group_columns: Sequence[str] | None = None,
    source: str = "CSV",
    delimiter: str = ",",
) -> CsvLayout:
    """Map requested features and optional columns onto header positions."""
    header = tuple(header)
    wanted = default_features() if features is None else list(features)
    if not wanted:
        raise DatasetError("no feature columns requested")
    names = [canonical_feature(f) for f in wanted]
    if len(set(names)) != len(names):
        raise DatasetError(f"duplicate features requested: {wanted}")

    def need(column: str, role: str, *, use_aliases: bool) -> int:
        index = find_column(header, column, aliases=use_aliases, error=DatasetError)
        if index is None:
            raise DatasetError(
                f"{source}: {role} column {column!r} not found; available columns: "
                f"{describe_header(header)}{delimiter_hint(header, delimiter)}"
            )
        return index

    feature_index = tuple(need(f, "feature", use_aliases=True) for f in wanted)
    if len(set(feature_index)) != len(feature_index):
        raise DatasetError(f"{source}: two features map to the same column: {wanted}")
    optional = {}
    for role, column in (
        ("timestamp", timestamp_column),
        ("label", label_column),
        ("fault", fault_column),
    ):
        optional[role] = None if column is None else need(column, role, use_aliases=False)
    group_index = tuple(need(c, "device", use_aliases=False) for c in group_columns or ())
    return CsvLayout(
        header=header,
        feature_names=tuple(names),
        feature_index=feature_index,
        timestamp_index=optional["timestamp"],
        label_index=optional["label"],
        fault_index=optional["fault"],
        group_index=group_index,
    )


def _column_to_float(values: list[str]) -> np.ndarray:
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        pass
    # Slow path only when something did not parse: NaN marks the bad cells.
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        try:
            out[i] = float(value)
        except ValueError:
            out[i] = np.nan
    return out


def _parse_ts_column(values: list[str], rules: CsvTimeRules) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ns, bad mask); unparseable cells are 0 and flagged."""
    out = np.zeros(len(values), dtype=np.int64)
    bad = np.zeros(len(values), dtype=bool)
    for i, value in enumerate(values):
        try:
            out[i] = parse_csv_ns(value, rules)
        except (TimestampError, OverflowError):
            bad[i] = True
    return out, bad


class CsvChunks:
    """A CSV with a resolved layout, read in chunks (constant memory)."""

    def __init__(
        self,
        path: str | Path,
        *,
        features: Sequence[str] | None = None,
        delimiter: str = ",",
        timestamp_column: str | None = None,
        label_column: str | None = None,
        fault_column: str | None = None,
        group_columns: Sequence[str] | None = None,
        parse_ts: bool = False,
        time_rules: CsvTimeRules = CSV_DEFAULT,
    ):
        """``group_columns``: columns whose values, joined by "/", name the device of a
        row; an empty sequence means the file is one device (key ``ONE_DEVICE``).
        ``parse_ts``: parse the timestamp column (default: :func:`find_time_column`)
        into ``Chunk.ts_ns`` under ``time_rules``; a row whose timestamp does not parse
        is invalid like a row with a bad value."""
        self._file = CsvFile(path, delimiter=delimiter, error=DatasetError)
        self.path = self._file.path
        self.name = self._file.name
        self._parse_ts = parse_ts
        self.time_rules = time_rules
        self._one_device = group_columns is not None and not group_columns
        header = self._file.header
        if parse_ts and timestamp_column is None:
            timestamp_column = find_time_column(header, DatasetError)
            if timestamp_column is None:
                raise DatasetError(
                    f"{self.name}: no timestamp column (looked for {', '.join(TIME_COLUMNS)}); "
                    f"name it with --timestamp-column; available columns: "
                    f"{describe_header(header)}{delimiter_hint(header, delimiter)}"
                )
        self.layout = resolve_layout(
            header,
            features,
            timestamp_column=timestamp_column,
            label_column=label_column,
            fault_column=fault_column,
            group_columns=group_columns,
            source=self.name,
            delimiter=delimiter,
        )
        self._records = self._file.records()

    @property
    def header(self) -> tuple[str, ...]:
        return self.layout.header

    def chunks(
        self, chunk_rows: int = DEFAULT_CHUNK_ROWS, *, drop_invalid: bool = False
    ) -> Iterator[Chunk]:
        while True:
            batch = list(itertools.islice(self._records, chunk_rows))
            if not batch:
                return
            lines = [line for line, _cells in batch]
            rows = [cells for _line, cells in batch]
            yield self._parse(rows, lines, drop_invalid)

    def _parse(self, rows: list[list[str]], lines: list[int], drop_invalid: bool) -> Chunk:
        layout = self.layout
        width = len(layout.header)
        bad_width = np.fromiter((len(r) != width for r in rows), dtype=bool, count=len(rows))
        if bad_width.any():
            pad = [""] * width
            cells = [pad if bad else r for r, bad in zip(rows, bad_width, strict=True)]
        else:
            cells = rows
        X = np.empty((len(rows), len(layout.feature_index)), dtype=np.float64)
        for j, col in enumerate(layout.feature_index):
            X[:, j] = _column_to_float([r[col] for r in cells])
        invalid = bad_width | ~np.isfinite(X).all(axis=1)
        ts_ns = None
        if self._parse_ts:
            ts_ns, bad_ts = _parse_ts_column(
                [r[layout.timestamp_index] for r in cells], self.time_rules
            )
            invalid |= bad_ts
        if invalid.any() and not drop_invalid:
            first = int(np.flatnonzero(invalid)[0])
            raise DatasetError(self._explain_invalid(rows[first], lines[first], X[first]))
        kept = np.flatnonzero(~invalid)
        kept_cells = [cells[i] for i in kept] if invalid.any() else cells

        def column(index: int | None) -> list[str] | None:
            return None if index is None else [r[index] for r in kept_cells]

        labels = column(layout.label_index)
        faults = column(layout.fault_index)
        stamps = column(layout.timestamp_index)
        groups = None
        if layout.group_index:
            groups = np.array(
                [
                    _GROUP_SEPARATOR.join(r[i].strip() for i in layout.group_index)
                    for r in kept_cells
                ],
                dtype=str,
            )
        elif self._one_device:
            groups = np.full(len(kept_cells), ONE_DEVICE, dtype=str)
        return Chunk(
            rows=rows,
            lines=lines,
            X=X[kept] if invalid.any() else X,
            y=None if labels is None else labels_from_strings(labels),
            faults=None if faults is None else np.array([f.strip() for f in faults], dtype=str),
            ts=None if stamps is None else np.array(stamps, dtype=str),
            kept=kept,
            dropped=int(invalid.sum()),
            groups=groups,
            ts_ns=None if ts_ns is None else ts_ns[kept],
        )

    def _explain_invalid(self, row: list[str], line: int, values: np.ndarray) -> str:
        where = f"{self.name} line {line}"
        width = len(self.layout.header)
        if len(row) != width:
            return (
                f"{where}: expected {width} fields, found {len(row)} "
                "(use --drop-invalid to skip such rows)"
            )
        for col, value in zip(self.layout.feature_index, values, strict=True):
            if not np.isfinite(value):
                raw = row[col]
                what = "is empty" if not raw.strip() else f"value {raw!r} is not a finite number"
                return (
                    f"{where}: column {self.layout.header[col]!r} {what} "
                    "(use --drop-invalid to skip such rows)"
                )
        if self._parse_ts and self.layout.timestamp_index is not None:
            column = self.layout.header[self.layout.timestamp_index]
            raw = row[self.layout.timestamp_index]
            try:
                parse_csv_ns(raw, self.time_rules)
                why = f"{raw[:40]!r} is out of range"
            except TimestampError as exc:
                why = str(exc)  # starts with the value itself
            except OverflowError:
                why = f"{raw[:40]!r} is out of range"
            return f"{where}: column {column!r} value {why} (use --drop-invalid to skip such rows)"
        return f"{where}: invalid row"

    def close(self) -> None:
        self._records.close()

    def __enter__(self) -> CsvChunks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class _Parts:
    X: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    faults: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    ts_ns: list[np.ndarray] = field(default_factory=list)
    groups: list[np.ndarray] = field(default_factory=list)
    dropped: int = 0


def _concat(parts: list[np.ndarray], present: bool) -> np.ndarray | None:
    if not present:
        return None
    return np.concatenate(parts) if parts else np.empty(0)


def _read_all(source: CsvChunks, drop_invalid: bool) -> _Parts:
    parts = _Parts()
    for chunk in source.chunks(drop_invalid=drop_invalid):
        parts.dropped += chunk.dropped
        parts.X.append(chunk.X)
        for name in ("y", "faults", "ts", "ts_ns", "groups"):
            value = getattr(chunk, name)
            if value is not None:
                getattr(parts, name).append(value)
    return parts


def auto_group_columns(path: str | Path, delimiter: str, raw: Sequence[str]) -> list[str]:
    """``line`` and ``device`` if the header has a ``device`` column, else [] (one device)."""
    with CsvChunks(path, features=raw, delimiter=delimiter) as probe:
        found = list(device_columns(probe.header, DatasetError))
    if not found:
        _LOG.info(
            "%s: no 'device' column, so the file is one device (name device columns "
            "with --device-columns)",
            probe.name,
        )
        return []
    return found


def load_csv(
    path: str | Path,
    *,
    features: list[str] | None = None,
    delimiter: str = ",",
    timestamp_column: str | None = None,
    label_column: str | None = None,
    fault_column: str | None = None,
    drop_invalid: bool = False,
    group_columns: Sequence[str] | None = None,
    parse_timestamps: bool = False,
    time_rules: CsvTimeRules = CSV_DEFAULT,
) -> Dataset:
    """Read the whole CSV into a :class:`Dataset` (see the module docstring for matching).

    Rows whose feature values are empty, non-numeric or non-finite, or that have the
    wrong number of fields, raise :class:`DatasetError` naming the line, unless
    ``drop_invalid`` is set; then they are skipped and counted in ``rows_dropped``.

    With stream features among ``features``, or ``parse_timestamps`` (for
    :meth:`Dataset.split_at` by time), the timestamp column (default: see
    :func:`find_time_column`) must parse too under ``time_rules`` and fills ``ts_ns``.
    With stream features ``group_columns`` (default: ``line`` and ``device`` if present,
    else the file is one device) name the device, and the result holds only rows with a
    full window (``rows_warmup`` and ``rows_duplicate`` count the others).
    """
    wanted = default_features() if features is None else list(features)
    names = [canonical_feature(f) for f in wanted]
    try:
        spec = StreamSpec.from_features(names)
    except StreamFeatureError as exc:
        raise DatasetError(str(exc)) from None
    parse_ts = spec.has_derived or parse_timestamps
    if spec.has_derived:
        if group_columns is None:
            group_columns = auto_group_columns(path, delimiter, list(spec.raw_fields))
        read_features = list(spec.raw_fields)
    else:
        read_features = wanted
    with CsvChunks(
        path,
        features=read_features,
        delimiter=delimiter,
        timestamp_column=timestamp_column,
        label_column=label_column,
        fault_column=fault_column,
        group_columns=group_columns,
        parse_ts=parse_ts,
        time_rules=time_rules,
    ) as source:
        layout = source.layout
        parts = _read_all(source, drop_invalid)
    dropped = parts.dropped
    k = len(layout.feature_names)
    X = np.concatenate(parts.X) if parts.X else np.empty((0, k))
    if X.shape[0] == 0:
        detail = f" ({dropped} invalid rows dropped)" if dropped else ""
        raise DatasetError(f"{source.name}: no usable data rows{detail}")
    if dropped:
        _LOG.warning("%s: dropped %d invalid rows", source.name, dropped)
    y = _concat(parts.y, layout.label_index is not None)
    dataset = Dataset(
        X=X,
        y=None if y is None else y.astype(np.int8),
        faults=_concat(parts.faults, layout.fault_index is not None),
        ts=_concat(parts.ts, layout.timestamp_index is not None),
        feature_names=layout.feature_names,
        rows_dropped=dropped,
        columns=layout.feature_columns,
        source=source.name,
        sha256=file_sha256(path),
        label_column=_header_name(layout, layout.label_index),
        fault_column=_header_name(layout, layout.fault_index),
        groups=_concat(parts.groups, bool(parts.groups)),
        ts_ns=_concat(parts.ts_ns, parse_ts),
    )
    if not spec.has_derived:
        return dataset
    return derive_stream_features(dataset, tuple(names))


def derive_stream_features(dataset: Dataset, feature_names: Sequence[str]) -> Dataset:
    """Replace X by ``feature_names`` computed per device (``groups``, ``ts_ns``).

    ``dataset.feature_names`` must hold every field the stream features need.  Rows
    repeating an earlier (device, ts) and each device's warm-up rows are dropped and
    counted; everything else keeps its order.
    """
    if dataset.groups is None or dataset.ts_ns is None:
        raise DatasetError("stream features need device keys and parsed timestamps")
    spec = StreamSpec.from_features(feature_names)
    where = dataset.source or "data"
    missing = [f for f in spec.raw_fields if f not in dataset.feature_names]
    if missing:
        raise DatasetError(f"{where}: fields {missing} are needed for {list(feature_names)}")
    repeat = duplicate_mask(dataset.groups, dataset.ts_ns)
    n_repeat = int(repeat.sum())
    if n_repeat:
        _LOG.warning("%s: dropped %d rows that repeat a (device, ts) already seen", where, n_repeat)
    unique = ~repeat
    column = {name: j for j, name in enumerate(dataset.feature_names)}
    rows = DeviceRows(
        keys=dataset.groups[unique],
        ts_ns=dataset.ts_ns[unique],
        values={f: dataset.X[unique, column[f]] for f in spec.raw_fields},
    )
    X, ready = compute_offline(rows, spec.features)
    keep = np.flatnonzero(unique)[ready]
    warmup = int((~ready).sum())
    _LOG.info(
        "%s: stream features %s; %d warm-up rows dropped (%d per device)",
        where,
        ", ".join(f.name for f in spec.derived),
        warmup,
        spec.warmup,
    )
    if keep.size == 0:
        raise DatasetError(
            f"{where}: no device has more than {spec.warmup} readings; "
            f"stream features {[f.name for f in spec.derived]} need {spec.longest}"
        )
    header = dict(zip(dataset.feature_names, dataset.columns, strict=False))
    return replace(
        dataset.take(keep),
        X=X[ready],
        feature_names=spec.features,
        columns=tuple(header.get(name, name) for name in spec.features),
        rows_warmup=dataset.rows_warmup + warmup,
        rows_duplicate=dataset.rows_duplicate + n_repeat,
    )


def _header_name(layout: CsvLayout, index: int | None) -> str | None:
    return None if index is None else layout.header[index]
