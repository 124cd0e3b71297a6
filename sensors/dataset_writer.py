"""Labelled CSV datasets: what the model CLI trains and evaluates on.

``python -m model train --csv f --label-column is_anomaly --fault-column fault
--timestamp-column ts`` reads exactly this layout.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sensors.machine_model import HUMIDITY, SOUND, TEMPERATURE
from sensors.simulator import SimReading

VALUE_COLUMNS = (TEMPERATURE, HUMIDITY, SOUND)
HEADER = ("ts", "line", "device", "seq", *VALUE_COLUMNS, "fault", "is_anomaly")


def rfc3339_ms(ts: float) -> str:
    """Epoch seconds -> ``2026-11-22T10:00:00.123Z``."""
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class DatasetWriter:
    """Writes one row per reading; also used for the labels of published readings."""

    def __init__(self, out: TextIO):
        self._writer = csv.writer(out, lineterminator="\n")
        self._writer.writerow(HEADER)
        self.rows = 0

    def write(self, reading: SimReading, ts: float | None = None) -> None:
        """``ts`` overrides the simulated time (readings re-stamped when published)."""
        values = reading.values
        self._writer.writerow(
            (
                rfc3339_ms(reading.ts if ts is None else ts),
                reading.line,
                reading.device,
                reading.seq,
                *(f"{values[name]:.2f}" for name in VALUE_COLUMNS),
                reading.fault,
                reading.is_anomaly,
            )
        )
        self.rows += 1


def write_dataset(path: str | Path, readings: Iterable[SimReading]) -> int:
    """Write all ``readings`` to ``path``; returns the number of rows."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = DatasetWriter(out)
        for reading in readings:
            writer.write(reading)
    return writer.rows
