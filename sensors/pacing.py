"""Wall-clock pacing of a timeline (simulated or recorded) at a chosen speed."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from common.logs import RateLimitedLog

log = logging.getLogger(__name__)


def ms_after(ts: float, previous: float | None) -> float:
    """``ts`` floored to the ms (rounding up could pass now), strictly after ``previous``.

    Two points of one device with one timestamp would overwrite each other downstream.
    """
    ts = math.floor(ts * 1000) / 1000
    if previous is not None and ts <= previous:
        ts = round(previous + 0.001, 3)
    return ts


class Pacer:
    """Releases events at ``offset_s`` (seconds on the source timeline) divided by ``speed``.

    :meth:`wait` returns the event's scheduled wall-clock time, which is never later
    than the moment it returns: timestamps made from it are never in the future.
    If the caller falls more than ``max_lag_s`` behind (slow broker, too high a
    speed), the schedule is shifted instead of bursting to catch up, so timestamps
    stay close to the wall clock.
    """

    def __init__(
        self,
        speed: float,
        stop: threading.Event,
        max_lag_s: float = 1.0,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        if not speed > 0:
            raise ValueError("pacing needs a speed > 0")
        self.speed = speed
        self._stop = stop
        self._max_lag_s = max_lag_s
        self._monotonic = monotonic
        self._wall = wall
        self._origin: tuple[float, float, float] | None = None  # offset, monotonic, wall
        self._shift_s = 0.0
        self._lag_log = RateLimitedLog(log, 30.0)

    def wait(self, offset_s: float) -> float | None:
        """Block until the event is due; None if stopped while waiting."""
        now = self._monotonic()
        if self._origin is None:
            self._origin = (offset_s, now, self._wall())
        first_offset, mono0, wall0 = self._origin
        due = mono0 + self._shift_s + (offset_s - first_offset) / self.speed
        while now < due:
            if self._stop.wait(due - now):
                return None
            now = self._monotonic()
        lag = now - due
        if lag > self._max_lag_s:
            self._lag_log.warning(
                "lag", "running %.1f s behind schedule; shifting the schedule", lag
            )
            self._shift_s += lag
            due = now
        # A wall clock stepped back (NTP) must not yield a future timestamp.
        return min(wall0 + (due - mono0), self._wall())
