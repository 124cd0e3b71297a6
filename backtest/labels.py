"""A model's alerts judged against operators' labels (pure, no I/O).

Labels (:class:`model.alert_labels.LabelledAlert`) say of past alerts: ``real_fault``
(a confirmed fault, its period from the alert's start to its resolution) or
``false_alarm`` (normal operation the model flagged).  A replay
(:func:`backtest.replay.alert_periods`) gives a model's own alerts with their periods.
Alerts and labels are compared per device and kind (a process-anomaly label is judged
by the model's process-anomaly alerts; the sensor-fault rules are the same for every
model):

* an alert **on a labelled false alarm** overlaps the period of one;
* a confirmed fault is **caught** if an alert started within
  ``[start, end + grace]`` of it, or was already firing at its start;
* an alert overlapping no labelled period of its device is **unlabelled**.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backtest.episodes import NS_PER_S
from backtest.replay import AlertPeriod
from model.alert_labels import LabelledAlert


@dataclass
class LabelFigures:
    false_alarm_periods: int = 0  # labelled false alarms judged
    false_alarm_periods_alerted: int = 0  # ... on which the model raised an alert
    alerts_on_false_alarms: int = 0  # the model's alerts overlapping one
    real_faults: int = 0  # confirmed faults judged
    real_faults_caught: int = 0
    unlabelled_alerts: int = 0  # alerts overlapping no labelled period
    alerts: int = 0  # the model's alerts of the judged kinds
    caught: list[str] = field(default_factory=list)  # alert ids of the faults caught
    missed: list[str] = field(default_factory=list)
    alerted_false_alarms: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _overlaps(a: AlertPeriod, start: int, end: int) -> bool:
    return a.start_ns <= end and a.end_ns >= start


def judge_labels(
    periods: Sequence[AlertPeriod],
    labels: Iterable[LabelledAlert],
    *,
    grace_s: float,
    kinds: Sequence[str] | None = None,
) -> LabelFigures:
    """How one model's alerts (``periods``) fare against the labels; ``kinds``: only
    labels and alerts of these kinds (None: all)."""
    grace = round(grace_s * NS_PER_S)
    wanted = [lb for lb in labels if kinds is None or lb.kind in kinds]
    alerts = [p for p in periods if kinds is None or p.kind in kinds]
    by_device: dict[tuple[str, str], list[AlertPeriod]] = {}
    for p in alerts:
        by_device.setdefault((p.device, p.kind), []).append(p)
    out = LabelFigures(alerts=len(alerts))
    on_false: set[int] = set()
    labelled: set[int] = set()
    for lb in wanted:
        mine = by_device.get((lb.key, lb.kind), [])
        if lb.is_false_alarm:
            hits = [id(p) for p in mine if _overlaps(p, lb.start_ns, lb.end_ns)]
            out.false_alarm_periods += 1
            if hits:
                out.false_alarm_periods_alerted += 1
                out.alerted_false_alarms.append(lb.alert_id)
            on_false.update(hits)
            labelled.update(hits)
        elif lb.is_real_fault:
            out.real_faults += 1
            hit = [
                p
                for p in mine
                if lb.start_ns <= p.start_ns <= lb.end_ns + grace
                or p.start_ns <= lb.start_ns <= p.end_ns
            ]
            (out.caught if hit else out.missed).append(lb.alert_id)
            labelled.update(id(p) for p in mine if _overlaps(p, lb.start_ns, lb.end_ns + grace))
    out.real_faults_caught = len(out.caught)
    out.alerts_on_false_alarms = len(on_false)
    out.unlabelled_alerts = sum(1 for p in alerts if id(p) not in labelled)
    return out
