"""``POST /predict`` without Flask's per-request machinery.

Flask builds a request context, a URL adapter, a ``Request`` and a ``Response`` for
every call: half of an in-process one-record ``/predict`` (600 -> 312 µs here).  This
WSGI layer, in front of Flask, answers every ``POST /predict`` with a JSON
Content-Type and, when API keys are on, a valid key: it reads the body
(:func:`api.body.read_body`, which enforces the size limit), calls the same handler
as the Flask route (parsing, validation, scoring, metrics) and writes the JSON, or
the JSON error, itself.

Everything else goes to Flask unchanged: other paths and methods, other content
types (415) and missing or wrong keys (401, logged and counted), so those refusals
are made in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.http import HTTP_STATUS_CODES

from api.auth import HEADER, KeyCheck
from api.body import read_body
from api.errors import ApiError, dumps
from api.predict import is_json

# (Content-Type without parameters, body) -> response body object; raises ApiError.
Answer = Callable[[str, bytes], Any]
# The error as counted and answered (same as Flask's handlers do).
OnRefused = Callable[[ApiError], ApiError]
OnUnexpected = Callable[[str, str, Exception], ApiError]

_JSON = ("Content-Type", "application/json")
_KEY_ENVIRON = "HTTP_" + HEADER.upper().replace("-", "_")


def _status_line(code: int) -> str:
    # Werkzeug's wording, so both paths answer the same status line.
    return f"{code} {HTTP_STATUS_CODES.get(code, 'UNKNOWN').upper()}"


_STATUS = {code: _status_line(code) for code in HTTP_STATUS_CODES}


def content_type(environ: dict[str, Any]) -> str:
    """The media type of the request body, lower case, without parameters."""
    return environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()


class FastPredict:
    def __init__(
        self,
        app: Callable,
        answer: Answer,
        *,
        keys: KeyCheck,
        max_body_bytes: int,
        on_refused: OnRefused,
        on_unexpected: OnUnexpected,
    ):
        # The Flask app: every other request, and the refusals made there (415, 401).
        self.fallback = app
        self._answer = answer
        self._keys = keys
        self._max_body = max_body_bytes
        self._on_refused = on_refused
        self._on_unexpected = on_unexpected

    def _taken(self, environ: dict[str, Any]) -> str | None:
        """The JSON media type of a request answered here, or None (Flask answers it)."""
        if environ.get("PATH_INFO") != "/predict" or environ.get("REQUEST_METHOD") != "POST":
            return None
        mimetype = content_type(environ)
        if not is_json(mimetype):
            return None
        if self._keys.enabled and not self._keys.accepts(environ.get(_KEY_ENVIRON)):
            return None
        return mimetype

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        mimetype = self._taken(environ)
        if mimetype is None:
            return self.fallback(environ, start_response)
        headers: list[tuple[str, str]] = [_JSON]
        try:
            raw = read_body(environ, self._max_body)
            body = dumps(self._answer(mimetype, raw))
            status = 200
        except ApiError as exc:
            err = self._on_refused(exc)
            body, status = dumps(err.body()), err.status
            headers.extend(err.headers.items())
        except Exception as exc:
            err = self._on_unexpected("POST", "/predict", exc)
            body, status = dumps(err.body()), err.status
        headers.append(("Content-Length", str(len(body))))
        start_response(_STATUS.get(status) or _status_line(status), headers)
        return [body]
