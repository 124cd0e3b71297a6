"""Rate-limited progress logging for long-running loops (CSV scoring, replay).

    progress = Progress(total_rows, "scoring", logger)
    for chunk in chunks:
        ...
        progress.advance(len(chunk))
    progress.done()

Logs ``scoring: 45% (4500/10000), 12.3k rows/s`` at most every ``every_s`` seconds, so
a loop can call :meth:`Progress.advance` per row without flooding the journal.  With
an unknown total it logs ``scoring: 4500 rows, 12.3k rows/s``.  Not thread-safe: one
Progress belongs to one loop.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

_LOG = logging.getLogger(__name__)


def format_count(value: float) -> str:
    """Short human count: 950, 12.3k, 4.1M."""
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


class Progress:
    def __init__(
        self,
        total: int | None,
        label: str,
        logger: logging.Logger | None = None,
        every_s: float = 2.0,
        *,
        clock=time.monotonic,
    ):
        self.total = total if total is None or total > 0 else None
        self.label = label
        self.count = 0
        self._logger = logger or _LOG
        self._every_s = every_s
        self._clock = clock
        self._start = clock()
        self._last_log = self._start
        self._finished = False

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._start

    @property
    def rate(self) -> float:
        elapsed = self.elapsed_s
        return self.count / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int = 1) -> None:
        self.count += n
        now = self._clock()
        if now - self._last_log >= self._every_s:
            self._last_log = now
            self._logger.info("%s", self._status())

    def done(self) -> None:
        """Log the final count and rate once (later calls are no-ops)."""
        if self._finished:
            return
        self._finished = True
        self._logger.info(
            "%s: done, %d rows in %.1f s (%s rows/s)",
            self.label,
            self.count,
            self.elapsed_s,
            format_count(self.rate),
        )

    def _status(self) -> str:
        rate = format_count(self.rate)
        if self.total:
            # Totals are often estimates (line counts); never show more than 100%.
            pct = min(100.0, 100.0 * self.count / self.total)
            return f"{self.label}: {pct:.0f}% ({self.count}/{self.total}), {rate} rows/s"
        return f"{self.label}: {self.count} rows, {rate} rows/s"

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Only a completed loop is "done"; a failure is reported by whoever handles it.
        if exc_type is None:
            self.done()
