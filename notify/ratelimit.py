"""Per-device and plant-wide limits on immediate notifications, in fixed windows.

Windows are aligned to the wall clock (``[k * window_s, (k + 1) * window_s)``), so a
restarted notifier agrees with its outbox about which window a notification was in.
Within a window at most ``per_device`` firing/repeated notifications per device and
``plant`` in all go out at once; beyond that a notification is *held* until the
window ends and then folded into one digest per channel and recipient.
Resolutions and acknowledgements are never limited.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from notify.config import RateLimitConfig

Device = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Decision:
    hold: bool
    # End of the current window: when held notifications are folded into a digest.
    window_end: float
    # "device" (this device is over its limit) or "plant" (a storm), when held.
    reason: str = ""


class RateLimiter:
    def __init__(self, cfg: RateLimitConfig, clock: Callable[[], float] = time.time):
        self._cfg = cfg
        self._clock = clock
        self._window_start = -math.inf
        self._per_device: dict[Device, int] = {}
        self._plant = 0

    def window(self, now: float | None = None) -> tuple[float, float]:
        now = self._clock() if now is None else now
        start = math.floor(now / self._cfg.window_s) * self._cfg.window_s
        return start, start + self._cfg.window_s

    def _roll(self) -> float:
        start, end = self.window()
        if start != self._window_start:
            self._window_start = start
            self._per_device.clear()
            self._plant = 0
        return end

    def decide(self, line: str, device: str) -> Decision:
        """Whether a firing/repeated notification for the device goes out now."""
        end = self._roll()
        if self._per_device.get((line, device), 0) >= self._cfg.per_device:
            return Decision(True, end, "device")
        if self._plant >= self._cfg.plant:
            return Decision(True, end, "plant")
        return Decision(False, end)

    def record(self, line: str, device: str) -> None:
        """A notification for the device went out (was queued for sending) now."""
        self._roll()
        key = (line, device)
        self._per_device[key] = self._per_device.get(key, 0) + 1
        self._plant += 1

    def seed(self, sent: Iterable[tuple[str, str, int]]) -> None:
        """Counts of this window's notifications already sent (from the outbox)."""
        self._roll()
        for line, device, n in sent:
            self._per_device[(line, device)] = self._per_device.get((line, device), 0) + n
            self._plant += n
