"""argparse value types shared by the command-line tools."""

from __future__ import annotations

import argparse
from datetime import datetime


def utc_time_arg(text: str) -> datetime:
    """An RFC 3339 time with a UTC offset (``2026-11-01T06:00:00Z``), as an aware datetime."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("give a UTC offset, e.g. 2026-11-01T06:00:00Z")
    return parsed
