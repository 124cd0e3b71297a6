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
