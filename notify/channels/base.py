"""The interface every channel implements."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from notify.render import Rendered


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    # Worth trying again later (timeout, connection refused, 5xx, 429, SMTP 4xx).
    RETRY = "retry"
    # Will never work as it is (4xx, SMTP 5xx): the notification is dead.
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    detail: str = ""


class Channel(Protocol):
    name: str
    # The longest one send() may take; shutdown waits this long for an in-flight send.
    timeout_s: float

    def send(self, message: Rendered, recipient: str, from_addr: str) -> SendResult: ...

    def close(self) -> None: ...
