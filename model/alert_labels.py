"""Operators' feedback labels on alerts, read back from InfluxDB.

The API writes measurement ``alert_label`` (:data:`contract.schema.ALERT_LABEL`): one
point per labelled alert at the alert's start, tags line, device, kind; fields
alert_id, label (``real_fault`` | ``false_alarm``), fault_type, note, by, started_ns,
ended_ns (the resolution's time, 0 if the alert was still firing when labelled) and
labelled_ns.  The gateway writes every alert transition to ``alert_event``
(:data:`contract.schema.ALERT_EVENT`, tag ``event``, field ``alert_id``).

:func:`read_labels` gives, for a :class:`~model.influx_history.HistoryFilter`, one
:class:`LabelledAlert` per alert: the latest label wins (largest ``labelled_ns``),
and its period ends at ``ended_ns``, else at the alert's ``resolved`` event, else (never
resolved) at the end of the window.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.influxql import quote_ident, quote_string
from contract.alerting import FALSE_ALARM, LABELS, REAL_FAULT, RESOLVED
from contract.schema import (
    ALERT_EVENT,
    ALERT_ID,
    ALERT_LABEL,
    BY,
    DEVICE,
    ENDED_NS,
    EVENT,
    FAULT_TYPE,
    KIND,
    LABEL,
    LABELLED_NS,
    LINE,
    NOTE,
    STARTED_NS,
)
from model.influx_history import NS, HistoryFilter, InfluxV1

_LOG = logging.getLogger(__name__)

# A label's point is stamped with its alert's start: an alert that started this long
# before the window may still reach into it.
LABEL_LOOKBACK_S = 86_400.0
# Alert ids per query when looking up resolutions.
IDS_PER_QUERY = 100
PROCESS_ANOMALY = "process_anomaly"


@dataclass(frozen=True)
class LabelledAlert:
    """One alert as an operator labelled it, with its period on the readings' clock."""

    alert_id: str
    line: str
    device: str
    kind: str  # process_anomaly, sensor_fault, model_drift
    label: str  # real_fault | false_alarm
    fault_type: str
    start_ns: int
    end_ns: int
    note: str = ""
    by: str = ""
    resolved: bool = True  # False: still firing at the end of the window

    @property
    def key(self) -> str:
        """``line/device``, as :class:`~model.influx_history.History` keys devices."""
        return f"{self.line}/{self.device}"

    @property
    def is_real_fault(self) -> bool:
        return self.label == REAL_FAULT

    @property
    def is_false_alarm(self) -> bool:
        return self.label == FALSE_ALARM

    @property
    def episode_kind(self) -> str:
        """What the backtest calls the episode: the operator's fault type, else the kind."""
        return self.fault_type or self.kind

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rows(series: dict[str, Any]) -> Iterable[dict[str, Any]]:
    columns = series["columns"]
    tags = series.get("tags") or {}
    for values in series.get("values") or []:
        yield {**tags, **dict(zip(columns, values, strict=True))}


def _int(value: object, default: int = 0) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def read_labels(
    client: InfluxV1,
    flt: HistoryFilter,
    *,
    lookback_s: float = LABEL_LOOKBACK_S,
) -> list[LabelledAlert]:
    """Labelled alerts whose period overlaps ``[since, until)``, sorted by device, start.

    Labels with an unknown value or no alert id are skipped (logged).
    """
    lo = flt.since_ns - int(lookback_s * NS)
    q = f"SELECT * FROM {client.measurement(ALERT_LABEL)} WHERE {flt.where(lo, flt.until_ns)}"
    latest: dict[str, dict[str, Any]] = {}
    skipped = 0
    for series in client.query(q):
        for row in _rows(series):
            alert = row.get(ALERT_ID)
            if not alert or row.get(LABEL) not in LABELS:
                skipped += 1
                continue
            row["_labelled"] = _int(row.get(LABELLED_NS), _int(row.get("time")))
            seen = latest.get(alert)
            if seen is None or row["_labelled"] >= seen["_labelled"]:
                latest[alert] = row
    if skipped:
        _LOG.warning("%d alert labels without an alert id or a known label skipped", skipped)
    open_ids = [a for a, row in latest.items() if _int(row.get(ENDED_NS)) <= 0]
    resolved = _resolutions(client, flt, open_ids, latest) if open_ids else {}
    out = []
    for alert, row in latest.items():
        start = _int(row.get(STARTED_NS), _int(row.get("time")))
        end = _int(row.get(ENDED_NS))
        done = end > 0
        if not done and alert in resolved:
            end, done = resolved[alert], True
        if not done:
            end = flt.until_ns
        end = max(end, start)
        if end < flt.since_ns or start >= flt.until_ns:
            continue
        out.append(
            LabelledAlert(
                alert_id=str(alert),
                line=str(row.get(LINE) or ""),
                device=str(row.get(DEVICE) or ""),
                kind=str(row.get(KIND) or ""),
                label=str(row[LABEL]),
                fault_type=str(row.get(FAULT_TYPE) or ""),
                start_ns=start,
                end_ns=end,
                note=str(row.get(NOTE) or ""),
                by=str(row.get(BY) or ""),
                resolved=done,
            )
        )
    return sorted(out, key=lambda a: (a.key, a.start_ns, a.alert_id))


def _resolutions(
    client: InfluxV1, flt: HistoryFilter, ids: Sequence[str], rows: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """alert id -> time of its first ``resolved`` event within the window."""
    out: dict[str, int] = {}
    lo = min(_int(rows[a].get(STARTED_NS), _int(rows[a].get("time"))) for a in ids)
    for i in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[i : i + IDS_PER_QUERY]
        which = " OR ".join(f"{quote_ident(ALERT_ID)} = {quote_string(a)}" for a in chunk)
        q = (
            f"SELECT {quote_ident(ALERT_ID)} FROM {client.measurement(ALERT_EVENT)} "
            f"WHERE {flt.where(lo, flt.until_ns)} AND {quote_ident(EVENT)} = "
            f"{quote_string(RESOLVED)} AND ({which})"
        )
        for series in client.query(q):
            for row in _rows(series):
                alert, t = row.get(ALERT_ID), _int(row.get("time"))
                if alert is not None and (alert not in out or t < out[alert]):
                    out[alert] = t
    return out


# --- what the labels say about readings -------------------------------------------------


def _spans(labels: Iterable[LabelledAlert], margin_ns: int = 0) -> dict[str, list[tuple[int, int]]]:
    spans: dict[str, list[tuple[int, int]]] = {}
    for a in labels:
        spans.setdefault(a.key, []).append((a.start_ns - margin_ns, a.end_ns + margin_ns))
    return spans


def in_periods(
    keys: np.ndarray, ts_ns: np.ndarray, spans: dict[str, list[tuple[int, int]]]
) -> np.ndarray:
    """True for readings inside one of their device's [start, end] spans."""
    out = np.zeros(len(ts_ns), dtype=bool)
    for key, periods in spans.items():
        rows = np.flatnonzero(keys == key)
        if rows.size == 0:
            continue
        t = ts_ns[rows]
        hit = np.zeros(rows.size, dtype=bool)
        for start, stop in periods:
            hit |= (t >= start) & (t <= stop)
        out[rows] = hit
    return out


@dataclass(frozen=True, eq=False)
class LabelMasks:
    """Per history row: inside a false alarm's period; near a confirmed fault."""

    false_alarm: np.ndarray
    real_fault: np.ndarray


def label_masks(
    keys: np.ndarray, ts_ns: np.ndarray, labels: Sequence[LabelledAlert], margin_s: float
) -> LabelMasks:
    """``false_alarm``: inside the period of a process-anomaly alert labelled a false
    alarm (normal operation the model flagged); ``real_fault``: inside, or within
    ``margin_s`` of, the period of any alert confirmed as a real fault."""
    false = [a for a in labels if a.is_false_alarm and a.kind == PROCESS_ANOMALY]
    real = [a for a in labels if a.is_real_fault]
    return LabelMasks(
        false_alarm=in_periods(keys, ts_ns, _spans(false)),
        real_fault=in_periods(keys, ts_ns, _spans(real, int(margin_s * NS))),
    )


def count_labels(labels: Sequence[LabelledAlert]) -> dict[str, int]:
    out = {REAL_FAULT: 0, FALSE_ALARM: 0}
    for a in labels:
        out[a.label] = out.get(a.label, 0) + 1
    return out
