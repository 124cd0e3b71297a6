"""Which channels and recipients an alert goes to.

Every route whose globs (fnmatch: ``*``, ``?``, ``[...]``) match the alert's line,
device and kind, and whose ``events`` include its event, applies (all matches, not
the first).  The result is one target per (channel, recipient): two routes reaching
the same person on the same channel produce one notification; the first matching
route (in file order) decides its From address.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from contract.alerting import RESOLVED
from notify.alerts import Alert
from notify.config import NotifierConfig, Route

# The recipient of a webhook target: the channel's URL is its only destination.
WEBHOOK_RECIPIENT = ""


@dataclass(frozen=True, slots=True)
class Target:
    channel: str
    recipient: str
    route: str
    from_addr: str = ""


def route_matches(route: Route, alert: Alert) -> bool:
    if alert.event not in route.events:
        return False
    if alert.event == RESOLVED and not route.send_resolved:
        return False
    return (
        fnmatchcase(alert.line, route.line)
        and fnmatchcase(alert.device, route.device)
        and fnmatchcase(alert.kind, route.kind)
    )


class Router:
    def __init__(self, cfg: NotifierConfig):
        self._routes = cfg.route
        # Disabled channels are skipped: routes keep naming them.
        self._webhooks = {c.name for c in cfg.webhook if c.enabled}
        self._emails = {c.name for c in cfg.email if c.enabled}

    def targets(self, alert: Alert) -> list[Target]:
        out: dict[tuple[str, str], Target] = {}
        for route in self._routes:
            if not route_matches(route, alert):
                continue
            for channel in route.channels:
                if channel in self._webhooks:
                    recipients: tuple[str, ...] = (WEBHOOK_RECIPIENT,)
                elif channel in self._emails:
                    recipients = route.to
                else:
                    continue
                for recipient in recipients:
                    out.setdefault(
                        (channel, recipient),
                        Target(channel, recipient, route.name, route.from_addr),
                    )
        return list(out.values())
