"""JSON errors: every failure the API reports has the same shape.

    {"error": {"status": 422, "code": "missing_field", "message": "...",
               "field": "humidity_pct", "index": 3, "details": [...]}}

``code`` is from a closed set (a metrics label); ``field`` and ``index`` say which
value of which record was wrong, when that is known.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from flask import Response


@dataclasses.dataclass(eq=False)
class ApiError(Exception):
    status: int
    code: str
    message: str
    field: str | None = None
    index: int | None = None
    # Further problems in the same request (at most a few), same keys as the top level.
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        if self.index is not None:
            err["index"] = self.index
        if self.details:
            err["details"] = self.details
        return {"error": err}


# How many bad records one 422 lists besides the first.
MAX_ERROR_DETAILS = 10


class RecordProblems:
    """The bad records of one request, reported in one 422: the first, how many, and
    a few more in ``details``."""

    def __init__(self, total: int, single: bool):
        self._total = total
        self._single = single
        self._problems: list[dict[str, Any]] = []
        self.rejected = 0

    def __bool__(self) -> bool:
        return self.rejected > 0

    def add(self, code: str, message: str, field: str | None, index: int) -> None:
        self.rejected += 1
        if len(self._problems) <= MAX_ERROR_DETAILS:
            problem: dict[str, Any] = {"code": code, "message": message}
            if field is not None:
                problem["field"] = field
            if not self._single:
                problem["index"] = index
            self._problems.append(problem)

    def raise_any(self) -> None:
        if not self._problems:
            return
        first = self._problems[0]
        where = "" if self._single else f"record {first['index']}: "
        more = f" ({self.rejected} of {self._total} records rejected)" if self.rejected > 1 else ""
        raise ApiError(
            422,
            first["code"],
            f"{where}{first['message']}{more}",
            field=first.get("field"),
            index=first.get("index"),
            details=self._problems[1:],
        )


def dumps(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        dumps(body),
        status=status,
        mimetype="application/json",
        headers=headers,
    )


def error_response(err: ApiError) -> Response:
    return json_response(err.body(), err.status, err.headers or None)
