"""Query parameters shared by the read endpoints: bounded integers and line/device names,
refused with a 422 that names the parameter."""

from __future__ import annotations

import re

from api.errors import ApiError
from contract.topics import valid_name

_INT = re.compile(r"^\s*\d{1,9}\s*$")


def int_param(raw: str | None, name: str, default: int, maximum: int) -> int:
    """An integer from 1 to ``maximum``; ``default`` (capped) when absent or empty."""
    if raw is None or raw == "":
        return min(default, maximum)
    if not _INT.match(raw) or not 1 <= int(raw) <= maximum:
        raise ApiError(
            422, "bad_parameter", f"{name} must be an integer from 1 to {maximum}", field=name
        )
    return int(raw)


def name_param(raw: str | None, name: str) -> str | None:
    """A line or device name as the contract allows them, or None when absent."""
    if raw is None or raw == "":
        return None
    if not valid_name(raw):
        raise ApiError(
            422,
            "bad_parameter",
            f"{name} must be 1-64 printable characters without spaces, '+', '#' or '/'",
            field=name,
        )
    return raw


def choice_param(raw: str | None, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``; the first when absent or empty."""
    if raw is None or raw == "":
        return choices[0]
    if raw not in choices:
        raise ApiError(
            422, "bad_parameter", f"{name} must be one of {', '.join(choices)}", field=name
        )
    return raw
