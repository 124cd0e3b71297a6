"""``python -m backtest --influx-url ...``: the backtest on stored history, judged by
operators' labels.

The readings the gateway stored (measurement ``reading``, read with
:func:`model.influx_history.read_history`) are replayed, all devices in time order,
through the gateway's own detection code with each model.  The labels
(:func:`model.alert_labels.read_labels`) say what the alerts were:

* **episodes** are the periods of alerts labelled ``real_fault`` (fault type = the
  operator's ``fault_type``, else the alert's kind); every alert of the model is
  matched to them as in the CSV mode (:mod:`backtest.episodes`), so an alert outside
  every confirmed fault (+ grace) is a **false alert**, and false alerts per
  machine-day are over the devices' stored spans;
* per model also (:mod:`backtest.labels`, alerts of the label's own kind): confirmed
  faults caught, alerts on labelled false alarms, and unlabelled alerts.

Each device's state starts empty at ``--since``, as after a gateway restart: its
first readings are in warm-up.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from backtest.episodes import Episode, device_spans, match
from backtest.labels import LabelFigures, judge_labels
from backtest.machine_state import machine_states
from backtest.replay import Recording, alert_periods, replay
from backtest.summary import Summary, summarize
from gateway.config import GatewayConfig
from model.alert_labels import LabelledAlert, count_labels, read_labels
from model.influx_history import History, HistoryFilter, InfluxV1, iso_ns, read_history
from model.scorer import Scorer

_LOG = logging.getLogger(__name__)
NS_PER_DAY = 86_400 * 1_000_000_000
STATE_MIN_GAP = 5.0


class HistoryBacktestError(ValueError):
    """The stored history cannot be backtested as asked; says why."""


@dataclass(frozen=True, eq=False)
class StoredHistory:
    history: History
    labels: list[LabelledAlert]
    recording: Recording
    flt: HistoryFilter


def load_stored(
    client: InfluxV1,
    fields: list[str],
    flt: HistoryFilter,
    *,
    use_labels: bool = True,
    window_s: float = 6 * 3600.0,
    max_rows: int = 2_000_000,
) -> StoredHistory:
    history = read_history(client, fields, flt, window_s=window_s, max_rows=max_rows)
    if len(history) == 0:
        raise HistoryBacktestError(
            f"no readings with {fields} between {iso_ns(flt.since_ns)} and {iso_ns(flt.until_ns)}"
            + (f", line {flt.line!r}" if flt.line else "")
        )
    labels = read_labels(client, flt) if use_labels else []
    recording = Recording.of_history(history, history.time_order())
    return StoredHistory(history, labels, recording, flt)


def episodes_of(labels: list[LabelledAlert]) -> list[Episode]:
    """Confirmed faults as episodes."""
    return [
        Episode(a.key, a.episode_kind, a.start_ns, a.end_ns, 0) for a in labels if a.is_real_fault
    ]


def evaluate_stored(
    stored: StoredHistory,
    scorer: Scorer,
    gateway: GatewayConfig,
    *,
    grace_s: float,
    near_s: float,
    state_field: str = "sound_db",
) -> tuple[Summary, dict[str, Any]]:
    rec = stored.recording
    result = replay(rec, scorer, gateway.alerts, gateway.sensor_faults)
    matching = match(episodes_of(stored.labels), result.alerts, grace_s=grace_s)
    keys = rec.keys
    states = None
    if state_field in rec.fields:
        column = rec.values[:, rec.fields.index(state_field)]
        states = machine_states(keys, rec.ts_ns, column, min_gap=STATE_MIN_GAP)
    summary = summarize(
        matching,
        spans=device_spans(keys, rec.ts_ns),
        changes={k: list(t.changes_ns) for k, t in (states or {}).items()} or None,
        states=states,
        near_s=near_s,
        fault_types=(),
    )
    end = stored.flt.until_ns
    figures = judge_labels(alert_periods(result, end), stored.labels, grace_s=grace_s)
    extra = {
        "model": scorer.version,
        "detector": scorer.detector,
        "readings": len(rec),
        "replay_seconds": round(result.seconds, 1),
        "unscored": int(np.isnan(result.scores).sum()),
        "labels": label_json(figures, summary),
    }
    return summary, extra


def label_json(figures: LabelFigures, summary: Summary) -> dict[str, Any]:
    days = summary.machine_days
    per_day = summary.false_per_machine_day
    return {
        **figures.to_dict(),
        "false_alerts": summary.false_alerts,
        "false_alerts_per_machine_day": per_day if math.isfinite(per_day) else None,
        "machine_days": days if math.isfinite(days) else None,
    }


def label_lines(labels: dict[str, Any]) -> list[str]:
    """The label figures of one model, as text."""
    per_day = labels["false_alerts_per_machine_day"]
    rows = [
        (
            "confirmed faults caught (own kind)",
            f"{labels['real_faults_caught']} of {labels['real_faults']}",
        ),
        (
            "alerts on labelled false alarms",
            f"{labels['alerts_on_false_alarms']} (on {labels['false_alarm_periods_alerted']} "
            f"of {labels['false_alarm_periods']} false alarms)",
        ),
        ("unlabelled alerts", str(labels["unlabelled_alerts"])),
        (
            "false alerts per machine-day",
            f"{'-' if per_day is None else f'{per_day:.2f}'} "
            f"({labels['false_alerts']} outside confirmed faults)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def compare_rows(per_model: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Rows for the Markdown comparison: the label figures per model."""
    labels = [m["labels"] for m in per_model.values()]
    caught = [f"{x['real_faults_caught']}/{x['real_faults']}" for x in labels]
    on_false = [
        f"{x['alerts_on_false_alarms']} (on {x['false_alarm_periods_alerted']}/"
        f"{x['false_alarm_periods']})"
        for x in labels
    ]
    return [
        ("confirmed faults caught", caught),
        ("alerts on labelled false alarms", on_false),
        ("unlabelled alerts", [str(x["unlabelled_alerts"]) for x in labels]),
    ]


def header_lines(stored: StoredHistory) -> list[str]:
    h, flt = stored.history, stored.flt
    counts = count_labels(stored.labels)
    where = f", line {flt.line}" if flt.line else ""
    if flt.device_regex:
        where += f", devices /{flt.device_regex}/"
    return [
        f"history {iso_ns(flt.since_ns)} .. {iso_ns(flt.until_ns)}{where}: {len(h)} readings of "
        f"{int(np.unique(h.keys).size)} devices",
        f"labels  {counts.get('real_fault', 0)} real faults (the episodes), "
        f"{counts.get('false_alarm', 0)} false alarms",
        "",
    ]


def add_history_options(p: argparse.ArgumentParser) -> None:
    from model.cli_support import time_arg

    g = p.add_argument_group(
        "stored history",
        "Instead of --csv: replay what the gateway stored in InfluxDB (1.x /query), "
        "judged by operators' alert labels.",
    )
    g.add_argument("--influx-url", help="InfluxDB URL, e.g. http://localhost:8086")
    g.add_argument("--database", default="factory")
    g.add_argument("--since", type=time_arg, help="RFC 3339")
    g.add_argument("--until", type=time_arg, help="RFC 3339")
    g.add_argument("--line", help="only this line")
    g.add_argument("--device-regex", help="only devices matching this regex")
    g.add_argument("--username", default="", help="InfluxDB 1.x user (password: $INFLUX_PASSWORD)")
