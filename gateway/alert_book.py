"""The alerts firing now, with their ids and who acknowledged them.

Every alert the notify stage sends (process anomaly, sensor fault, model drift) opens
an entry here when it fires and closes it when it resolves, so its repeats, its
acknowledgement and its resolution carry the id it got when it started
(:func:`contract.alerting.alert_id`).  Bounded by the alerts firing at once: the
lifecycles that produce the transitions are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from contract.alerting import FIRING, REPEATED, Ack, alert_id


@dataclass(slots=True)
class OpenAlert:
    alert_id: str
    line: str
    device: str
    kind: str
    fault: str
    started_ns: int
    # The latest firing message's figures: an acknowledgement message repeats them.
    body: dict[str, object] = field(default_factory=dict)
    acked_by: str = ""
    acked_ns: int = 0
    ack_note: str = ""


Key = tuple[str, str, str, str]


class AlertBook:
    def __init__(self) -> None:
        self._open: dict[Key, OpenAlert] = {}
        self._by_id: dict[str, OpenAlert] = {}

    def fire(
        self, line: str, device: str, kind: str, fault: str, ts_ns: int, body: dict[str, object]
    ) -> tuple[OpenAlert, str]:
        """A firing transition: (the alert, FIRING if it starts now else REPEATED)."""
        key = (line, device, kind, fault)
        alert = self._open.get(key)
        if alert is not None:
            alert.body = body
            return alert, REPEATED
        alert = OpenAlert(alert_id(line, device, kind, ts_ns, fault), *key, ts_ns, body)
        self._open[key] = alert
        self._by_id[alert.alert_id] = alert
        return alert, FIRING

    def resolve(self, line: str, device: str, kind: str, fault: str, ts_ns: int) -> OpenAlert:
        """A resolving transition: the alert it ends (a stand-in if its start was not seen,
        e.g. it fired before a restart: the id is then that of an alert starting now)."""
        alert = self._open.pop((line, device, kind, fault), None)
        if alert is None:
            return OpenAlert(alert_id(line, device, kind, ts_ns, fault), line, device, kind, fault,
                             ts_ns)  # fmt: skip
        self._by_id.pop(alert.alert_id, None)
        return alert

    def acknowledge(self, ack: Ack, now_ns: int) -> tuple[OpenAlert | None, bool]:
        """(the alert, whether this acknowledgement is new); (None, False) if no alert of
        that id is firing for that device here."""
        alert = self._by_id.get(ack.alert_id)
        if alert is None or (alert.line, alert.device) != (ack.line, ack.device):
            return None, False
        if alert.acked_ns:
            return alert, False
        alert.acked_by, alert.acked_ns, alert.ack_note = ack.by, now_ns, ack.note
        return alert, True

    def restore(self, alerts: Iterable[OpenAlert]) -> list[OpenAlert]:
        """Alerts a retained device state says were firing (before a restart); returns
        those taken in (not already open here, under this or another id)."""
        taken = []
        for alert in alerts:
            key = (alert.line, alert.device, alert.kind, alert.fault)
            if key in self._open or alert.alert_id in self._by_id:
                continue
            self._open[key] = alert
            self._by_id[alert.alert_id] = alert
            taken.append(alert)
        return taken

    def of_device(self, line: str, device: str) -> list[OpenAlert]:
        return [a for (ln, dv, _, _), a in self._open.items() if ln == line and dv == device]

    def __len__(self) -> int:
        return len(self._open)
