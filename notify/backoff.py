"""When to try a failed notification again: capped exponential backoff with jitter."""

from __future__ import annotations

import random

from notify.config import RetryConfig


def retry_delay(cfg: RetryConfig, attempts: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 = the first).

    ``min_s * factor ** (attempts - 1)``, capped at ``max_s``, then shortened by up to
    ``jitter`` of itself at random, so notifications that failed together (an endpoint
    outage) do not all retry in the same instant.
    """
    exponent = min(max(attempts, 1) - 1, 64)  # no float overflow after many attempts
    delay = min(cfg.max_s, cfg.min_s * cfg.factor**exponent)
    draw = (rng or random).random()
    return delay * (1.0 - cfg.jitter * draw)
