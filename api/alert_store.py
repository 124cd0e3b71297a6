"""Alerts as InfluxDB has them: read for ``GET /api/alerts``, labelled for
``POST /api/alerts/<id>/label``.

One alert is folded from its ``alert_event`` points (one per transition, written by the
gateway; ``contract.schema``) and its ``alert_label``, through the worker's one InfluxDB
client (:mod:`common.influx`); every name put into a query is quoted by
:mod:`common.influxql`.  A label is one ``alert_label`` point at the alert's start time,
with the alert's tags, so a new label of the same alert replaces the old one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from api.alert_requests import LabelRequest, ListQuery
from api.config import AlertsConfig, InfluxQueryConfig
from api.errors import ApiError
from common.influx import InfluxClient, InfluxQueryError, InfluxUnavailable, WriteError
from common.influxql import quote_ident, quote_string
from contract.alerting import (
    ACKNOWLEDGED,
    FIRING,
    RESOLVED,
    SILENCED,
)
from contract.lineprotocol import encode_point
from contract.schema import (
    ALERT_EVENT,
    ALERT_ID,
    ALERT_LABEL,
    BY,
    DEVICE,
    ENDED_NS,
    EVENT,
    FAULT,
    FAULT_TYPE,
    HELD,
    KIND,
    LABEL,
    LABELLED_NS,
    LINE,
    NOTE,
    SCORE,
    STARTED_NS,
)
from contract.timestamps import ns_to_rfc3339

log = logging.getLogger(__name__)

_HOUR_NS = 3600 * 10**9
_DAY_NS = 24 * _HOUR_NS
_EVENT_COLUMNS = (ALERT_ID, STARTED_NS, EVENT, HELD, SCORE, BY, NOTE, LINE, DEVICE, KIND, FAULT)
_LABEL_COLUMNS = (ALERT_ID, LABEL, FAULT_TYPE, NOTE, BY, LABELLED_NS)


@contextlib.contextmanager
def influx_answers() -> Iterator[None]:
    """InfluxDB failures as the API reports them for /api/recent: 503 no answer, 502
    an answer that is an error."""
    try:
        yield
    except InfluxUnavailable as exc:
        raise ApiError(503, "influx_unavailable", str(exc)) from None
    except InfluxQueryError as exc:
        raise ApiError(502, "influx_error", str(exc)) from None
    except WriteError as exc:
        if exc.retryable:
            raise ApiError(503, "influx_unavailable", str(exc)) from None
        raise ApiError(502, "influx_error", str(exc)) from None


# --- one alert, from its events ------------------------------------------------------------


def _iso(ts_ns: int | None) -> str | None:
    return None if ts_ns is None else ns_to_rfc3339(ts_ns)


def _text(value: Any) -> str | None:
    """A stored optional string: absent and "" both mean none."""
    return value if isinstance(value, str) and value else None


def _effective(event: str | None, held: Any) -> str | None:
    # A silenced event stands for the transition it held back.
    return held if event == SILENCED and isinstance(held, str) and held else event


@dataclass(slots=True)
class Alert:
    """What the stored events say about one alert."""

    alert_id: str
    line: str
    device: str
    kind: str
    fault: str | None
    started_ns: int
    last_event: str = ""
    last_event_ns: int = -1
    resolved_ns: int | None = None
    acknowledged_ns: int = -1
    acknowledged_by: str | None = None
    ack_note: str | None = None
    peak_score: float | None = None
    silenced: bool = False
    events: int = 0
    label: dict[str, Any] | None = field(default=None)

    @property
    def state(self) -> str:
        return RESOLVED if self.resolved_ns is not None else FIRING

    def add(self, ts_ns: int, row: dict[str, Any]) -> None:
        self.events += 1
        event = row.get(EVENT) or ""
        if ts_ns >= self.last_event_ns:
            self.last_event, self.last_event_ns = event, ts_ns
        effective = _effective(event, row.get(HELD))
        if event == SILENCED:
            self.silenced = True
        if effective == RESOLVED and (self.resolved_ns is None or ts_ns < self.resolved_ns):
            self.resolved_ns = ts_ns
        if event == ACKNOWLEDGED and ts_ns >= self.acknowledged_ns:
            self.acknowledged_ns = ts_ns
            self.acknowledged_by = _text(row.get(BY))
            self.ack_note = _text(row.get(NOTE))
        score = row.get(SCORE)
        if isinstance(score, int | float) and not isinstance(score, bool):
            self.peak_score = score if self.peak_score is None else max(self.peak_score, score)

    def entry(self) -> dict[str, Any]:
        acked = self.acknowledged_ns >= 0
        return {
            "alert_id": self.alert_id,
            "line": self.line,
            "device": self.device,
            "kind": self.kind,
            "fault": self.fault,
            "state": self.state,
            "started": _iso(self.started_ns),
            "last_event": self.last_event,
            "last_event_at": _iso(self.last_event_ns),
            "resolved_at": _iso(self.resolved_ns),
            "acknowledged_by": self.acknowledged_by if acked else None,
            "acknowledged_at": _iso(self.acknowledged_ns) if acked else None,
            "note": self.ack_note if acked else None,
            "silenced": self.silenced,
            "peak_score": None if self.peak_score is None else round(self.peak_score, 6),
            "events": self.events,
            "label": self.label,
        }


def _label_entry(row: dict[str, Any]) -> dict[str, Any]:
    labelled = row.get(LABELLED_NS)
    return {
        "label": row.get(LABEL),
        "fault_type": _text(row.get(FAULT_TYPE)),
        "note": _text(row.get(NOTE)),
        "by": row.get(BY),
        "labelled_at": _iso(labelled) if isinstance(labelled, int) else None,
    }


def check_firing(alert: Alert) -> None:
    """ApiError(409) unless ``alert`` is still firing: only those can be acknowledged."""
    if alert.resolved_ns is not None:
        raise ApiError(
            409,
            "already_resolved",
            f"alert {alert.alert_id} was resolved at {_iso(alert.resolved_ns)}; "
            "only a firing alert can be acknowledged",
            field="alert_id",
        )


# --- InfluxDB ----------------------------------------------------------------------------


class AlertStore:
    """Reads alert history and writes labels with the worker's one InfluxDB client."""

    def __init__(
        self,
        client: InfluxClient,
        influx: InfluxQueryConfig,
        cfg: AlertsConfig,
        clock_ns: Callable[[], int] = time.time_ns,
    ):
        self._client = client
        self._timeout_s = influx.timeout_s
        self._cfg = cfg
        self._clock_ns = clock_ns

    def _rows(self, influxql: str) -> Iterator[tuple[int, dict[str, Any]]]:
        for series in self._client.query(influxql, epoch="ns"):
            columns = series["columns"]
            for row in series.get("values") or ():
                yield int(row[0]), dict(zip(columns, row, strict=False))

    @staticmethod
    def _names(line: str | None, device: str | None) -> str:
        where = ""
        if line:
            where += f" AND {quote_ident(LINE)} = {quote_string(line)}"
        if device:
            where += f" AND {quote_ident(DEVICE)} = {quote_string(device)}"
        return where

    @staticmethod
    def _ids(ids: list[str]) -> str:
        return "(" + " OR ".join(f"{quote_ident(ALERT_ID)} = {quote_string(i)}" for i in ids) + ")"

    def _select(self, measurement: str, columns: tuple[str, ...], where: str) -> str:
        return (
            f"SELECT {', '.join(quote_ident(c) for c in columns)} "
            f"FROM {self._client.source(measurement)} WHERE {where} "
            f"ORDER BY time DESC LIMIT {int(self._cfg.max_events)}"
        )

    def events_query(self, since_ns: int, ids: list[str], names: str = "") -> str:
        return self._select(
            ALERT_EVENT, _EVENT_COLUMNS, f"time >= {int(since_ns)}{names} AND {self._ids(ids)}"
        )

    def _alerts(self, since_ns: int, ids: list[str], names: str = "") -> dict[str, Alert]:
        """Every event since ``since_ns`` of the alerts ``ids``, folded per alert."""
        alerts: dict[str, Alert] = {}
        for ts, row in self._rows(self.events_query(since_ns, ids, names)):
            alert_id, started = row.get(ALERT_ID), row.get(STARTED_NS)
            if not isinstance(alert_id, str) or not isinstance(started, int):
                continue  # not a point the gateway writes
            alert = alerts.get(alert_id)
            if alert is None:
                alert = alerts[alert_id] = Alert(
                    alert_id,
                    row.get(LINE) or "",
                    row.get(DEVICE) or "",
                    row.get(KIND) or "",
                    _text(row.get(FAULT)),
                    started,
                )
            alert.add(ts, row)
        return alerts

    def find(self, alert_id: str) -> Alert | None:
        """The alert with this id, from its events within ``lookback_days``."""
        since = self._clock_ns() - self._cfg.lookback_days * _DAY_NS
        return self._alerts(since, [alert_id]).get(alert_id)

    def listing(self, q: ListQuery) -> dict[str, Any]:
        """Alerts with an event in the last ``q.hours`` (plus, unless only resolved ones
        are asked for, those still firing that started within the lookback), newest
        start first, at most ``max_alerts``."""
        now = self._clock_ns()
        window_start = now - q.hours * _HOUR_NS
        lookback_start = min(window_start, now - self._cfg.lookback_days * _DAY_NS)
        names = self._names(q.line, q.device)
        started: dict[str, int] = {}
        resolved: set[str] = set()
        seen = self._select(
            ALERT_EVENT, (ALERT_ID, STARTED_NS, EVENT, HELD), f"time > {window_start}{names}"
        )
        for _ts, row in self._rows(seen):
            self._note(row, started, resolved)
        if q.state != RESOLVED:
            # Acknowledged alerts get no reminders: still firing, maybe no event in the
            # window.  Their start and end are enough to find them.
            transitions = " OR ".join(
                f"{quote_ident(EVENT)} = {quote_string(e)}" for e in (FIRING, RESOLVED, SILENCED)
            )
            opened = self._select(
                ALERT_EVENT,
                (ALERT_ID, STARTED_NS, EVENT, HELD),
                f"time > {lookback_start}{names} AND ({transitions})",
            )
            earlier: dict[str, int] = {}
            ended: set[str] = set()
            for _ts, row in self._rows(opened):
                self._note(row, earlier, ended)
            for alert_id, started_ns in earlier.items():
                if alert_id not in ended:
                    started.setdefault(alert_id, started_ns)
        wanted = [
            a for a in started if q.state == "all" or (a in resolved) == (q.state == RESOLVED)
        ]
        wanted.sort(key=lambda a: (started[a], a), reverse=True)
        chosen = wanted[: self._cfg.max_alerts]
        alerts: list[Alert] = []
        if chosen:
            first = min(started[a] for a in chosen)
            found = self._alerts(max(first, lookback_start), chosen, names)
            self._add_labels(found, first, names)
            alerts = [found[a] for a in chosen if a in found]
        return {
            "hours": q.hours,
            "state": q.state,
            "count": len(alerts),
            "truncated": len(wanted) > len(chosen),
            "alerts": [a.entry() for a in alerts],
        }

    @staticmethod
    def _note(row: dict[str, Any], started: dict[str, int], resolved: set[str]) -> None:
        alert_id, started_ns = row.get(ALERT_ID), row.get(STARTED_NS)
        if not isinstance(alert_id, str) or not isinstance(started_ns, int):
            return
        started[alert_id] = started_ns
        if _effective(row.get(EVENT), row.get(HELD)) == RESOLVED:
            resolved.add(alert_id)

    def _add_labels(self, alerts: dict[str, Alert], since_ns: int, names: str) -> None:
        if not alerts:
            return
        where = f"time >= {int(since_ns)}{names} AND {self._ids(list(alerts))}"
        # Newest first: a label written again at the same time replaced the older one.
        for _ts, row in self._rows(self._select(ALERT_LABEL, _LABEL_COLUMNS, where)):
            alert = alerts.get(row.get(ALERT_ID))  # type: ignore[arg-type]
            if alert is not None and alert.label is None:
                alert.label = _label_entry(row)

    def write_label(self, alert: Alert, req: LabelRequest) -> dict[str, Any]:
        """Store the label of ``alert``; returns it as listed."""
        labelled_ns = self._clock_ns()
        tags = {LINE: alert.line, DEVICE: alert.device, KIND: alert.kind, FAULT: alert.fault or ""}
        # Every field, empty ones as "": a point at the same time and series merges
        # field by field, and a note of the older label must not survive.
        fields: dict[str, str | int] = {
            ALERT_ID: alert.alert_id,
            LABEL: req.label,
            FAULT_TYPE: req.fault_type,
            NOTE: req.note,
            BY: req.by,
            STARTED_NS: alert.started_ns,
            ENDED_NS: alert.resolved_ns or 0,
            LABELLED_NS: labelled_ns,
        }
        point = encode_point(ALERT_LABEL, tags, fields, alert.started_ns)
        self._client.write([point], self._timeout_s)
        log.info("alert %s labelled %s by %s", alert.alert_id, req.label, req.by)
        return _label_entry({**fields, LABELLED_NS: labelled_ns})
