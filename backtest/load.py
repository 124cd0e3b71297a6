"""Read a labelled CSV for the backtest: devices, times, values, labels, seq.

Columns are found the way the model tools find them (``model.dataset.load_csv``:
aliases, ``--timestamp-column``, ``--timezone``, one device when the file has no
device columns).  ``seq`` is read when present, so lost readings show as gaps.
Labelled windows (NAB's ``windows.json``) can stand in for per-row labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backtest.episodes import Episode
from backtest.replay import Recording
from common.csv_readings import SEQ_COLUMN, CsvFile
from contract.timestamps import CsvTimeRules, parse_csv_ns
from model.cli_support import AUTO_FAULT_COLUMN, AUTO_LABEL_COLUMN
from model.dataset import DatasetError, auto_group_columns, fault_labels, load_csv

# Line of a file without device columns (one device, named after the file).
FILE_LINE = "file"
WINDOW = "labelled_window"


def read_recording(
    path: Path,
    fields: Sequence[str],
    *,
    delimiter: str = ",",
    timestamp_column: str | None = None,
    label_column: str | None = None,
    fault_column: str | None = None,
    device_columns: Sequence[str] | None = None,
    time_rules: CsvTimeRules,
) -> Recording:
    groups = device_columns
    if groups is None:
        groups = auto_group_columns(path, delimiter, list(fields))
    header = CsvFile(path, delimiter=delimiter, error=DatasetError).header
    if label_column is None and AUTO_LABEL_COLUMN in header:
        label_column = AUTO_LABEL_COLUMN
    if fault_column is None and AUTO_FAULT_COLUMN in header:
        fault_column = AUTO_FAULT_COLUMN
    data = load_csv(
        path,
        features=list(fields),
        delimiter=delimiter,
        timestamp_column=timestamp_column,
        label_column=label_column,
        fault_column=fault_column,
        group_columns=groups,
        parse_timestamps=True,
        time_rules=time_rules,
    )
    keys = data.groups if data.groups is not None else np.full(len(data), "", dtype=object)
    lines, devices = _split_keys(keys, path.stem)
    seq = _read_seq(path, delimiter)
    if seq is not None and seq.size != len(data):
        seq = None  # rows were dropped while loading: seq cannot be aligned
    labels = data.y
    if labels is None and data.faults is not None:
        labels = fault_labels(data.faults)
    order = np.argsort(data.ts_ns, kind="stable")
    return Recording(
        lines=lines[order],
        devices=devices[order],
        ts_ns=data.ts_ns[order],
        values=data.X[order],
        fields=tuple(data.feature_names),
        seq=None if seq is None else seq[order],
        labels=None if labels is None else labels[order],
        faults=None if data.faults is None else data.faults[order],
    )


def _split_keys(keys: np.ndarray, stem: str) -> tuple[np.ndarray, np.ndarray]:
    lines = np.empty(len(keys), dtype=object)
    devices = np.empty(len(keys), dtype=object)
    for i, raw in enumerate(keys.tolist()):
        key = str(raw)
        if "/" in key:
            lines[i], devices[i] = key.split("/", 1)
        else:
            lines[i], devices[i] = FILE_LINE, key or stem
    return lines, devices


def _read_seq(path: Path, delimiter: str) -> np.ndarray | None:
    source = CsvFile(path, delimiter=delimiter, error=DatasetError)
    j = source.find(SEQ_COLUMN)
    if j is None:
        return None
    out = []
    for _line, row in source.records():
        cell = row[j].strip() if j < len(row) else ""
        out.append(int(cell) if cell.isdigit() else -1)
    return np.asarray(out, dtype=np.int64)


def read_windows(
    path: Path, csv_path: Path, device: str, time_rules: CsvTimeRules
) -> list[Episode]:
    """Labelled ``[start, end]`` windows: a JSON list, or a dict keyed by file name (NAB)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        if csv_path.name not in data:
            raise ValueError(f"{path.name} has no windows for {csv_path.name}")
        data = data[csv_path.name]
    episodes = []
    for pair in data:
        start, end = (parse_csv_ns(str(t), time_rules) for t in pair)
        episodes.append(Episode(device, WINDOW, start, end, 0))
    return episodes
