"""The label gate of retraining: both models judged by operators' labels.

Both models are replayed through the gateway's own decision code
(:func:`backtest.replay.replay`) over the labelled process-anomaly periods, each device
starting ``context`` readings before a period, and judged by the labels
(:func:`backtest.labels.judge_labels`): alerts overlapping a labelled false alarm, and
confirmed faults caught.  The gate ignores the time split on purpose: a labelled period
in the training part is judged too (that is what operators said about those periods);
the held-out check in :mod:`model.retrain` still guards unseen data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backtest.labels import judge_labels
from backtest.replay import Recording, alert_periods, replay
from backtest.report import json_safe
from gateway.config import GatewayConfig
from gateway.detection import PROCESS_ANOMALY
from model.alert_labels import LabelledAlert
from model.influx_history import NS, History
from model.scorer import Scorer


def label_checks(candidate: dict[str, Any], active: dict[str, Any]) -> list[dict[str, Any]]:
    """The label gate: fewer alerts on labelled false alarms (if the active model raised
    any; else none more), and every confirmed fault the active model caught caught."""
    checks = []
    if active["false_alarm_periods"]:
        c_n, a_n = candidate["alerts_on_false_alarms"], active["alerts_on_false_alarms"]
        checks.append(
            {
                "check": "alerts on labelled false alarms",
                "candidate": c_n,
                "active": a_n,
                "periods": active["false_alarm_periods"],
                "alerted_periods": [
                    candidate["false_alarm_periods_alerted"],
                    active["false_alarm_periods_alerted"],
                ],
                "rule": "candidate < active" if a_n else "candidate <= active (active raised none)",
                "ok": c_n < a_n if a_n else c_n <= a_n,
            }
        )
    if active["real_faults"]:
        lost = sorted(set(active["caught"]) - set(candidate["caught"]))
        checks.append(
            {
                "check": "labelled real faults caught",
                "candidate": candidate["real_faults_caught"],
                "active": active["real_faults_caught"],
                "detected": [candidate["real_faults_caught"], active["real_faults_caught"]],
                "episodes": active["real_faults"],
                "lost": lost,
                "rule": "candidate catches every one the active model caught",
                "ok": not lost,
            }
        )
    return checks


def label_rows(
    history: History, labels: list[LabelledAlert], context: int, grace_s: float
) -> np.ndarray:
    """Rows to replay for the label gate, in time order: per labelled device, its
    readings from ``context`` readings before each labelled period to ``grace_s``
    after its end (overlapping stretches merged)."""
    keep = np.zeros(len(history), dtype=bool)
    keys, ts = history.keys, history.ts_ns
    grace = int(grace_s * NS)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else []
    ends = np.r_[starts[1:], keys.size] if keys.size else []
    by_device: dict[str, list[LabelledAlert]] = {}
    for a in labels:
        by_device.setdefault(a.key, []).append(a)
    for s, e in zip(starts, ends, strict=True):
        for a in by_device.get(str(keys[s]), ()):
            first = s + int(np.searchsorted(ts[s:e], a.start_ns))
            last = s + int(np.searchsorted(ts[s:e], a.end_ns + grace, side="right"))
            keep[max(s, first - context) : last] = True
    rows = np.flatnonzero(keep)
    return rows[np.lexsort((keys[rows], ts[rows]))]


def backtest_labels(
    history: History,
    rows: np.ndarray,
    labels: list[LabelledAlert],
    scorer: Scorer,
    gateway: GatewayConfig,
    *,
    grace_s: float,
) -> dict[str, Any]:
    """One model replayed over the labelled periods, judged by the labels."""
    recording = Recording.of_history(history, rows)
    result = replay(recording, scorer, gateway.alerts, gateway.sensor_faults)
    end = int(history.ts_ns[rows].max()) if rows.size else 0
    figures = judge_labels(
        alert_periods(result, end), labels, grace_s=grace_s, kinds=(PROCESS_ANOMALY,)
    )
    seconds = round(result.seconds, 2)
    return json_safe({**figures.to_dict(), "replayed": int(rows.size), "replay_seconds": seconds})
