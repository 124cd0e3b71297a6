"""InfluxQL text: identifiers and string / regex literals, quoted in one place.

Line and device names come from the wire and may hold ``'`` and ``"`` (the contract
refuses a backslash, which InfluxDB cannot store in a tag); every query that puts one
into InfluxQL quotes it here.  Standard library only: the Grafana dashboard generator
(``deploy/grafana/build_dashboards.py``) loads this file outside the virtualenv.
"""

from __future__ import annotations

import re


def quote_ident(name: str) -> str:
    """InfluxQL double-quoted identifier (measurement, tag, field, retention policy)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """InfluxQL single-quoted string literal (a tag value)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def regex_literal(pattern: str, what: str = "regex") -> str:
    """InfluxQL ``/regex/`` literal.  The pattern is checked with Python's ``re`` first;
    ValueError ("invalid <what> ...") if it does not compile."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid {what} {pattern!r}: {exc}") from None
    return "/" + pattern.replace("/", "\\/") + "/"
