"""Reading a request body within the size limit, straight from the WSGI environ.

Both ways into ``POST /predict`` (:mod:`api.fast_predict` and the Flask route) read
the body here, so the limit is enforced the same way for both framings:

* a Content-Length over the limit is refused with 413 before reading; the body is
  drained first (up to ``DRAIN_MAX_BYTES``), because closing a socket with unread
  data resets the connection and the client would never see the answer;
* a chunked upload (no Content-Length; the server ends the stream and sets
  ``wsgi.input_terminated``) is read to one byte past the limit.  Werkzeug would cut
  it at the limit instead, and the truncated body would fail as "not JSON" or, worse,
  parse.
"""

from __future__ import annotations

from typing import Any

from api.errors import ApiError

# Refused bodies up to this size are read and dropped before answering 413; larger
# ones get the connection reset.
DRAIN_MAX_BYTES = 16 * 1024 * 1024


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body is over the limit of {limit} bytes")


def declared_length(environ: dict[str, Any]) -> int | None:
    """The Content-Length, or None when it is absent or not a number."""
    raw = environ.get("CONTENT_LENGTH")
    return int(raw) if raw and raw.isdigit() else None


def drain(environ: dict[str, Any]) -> None:
    """Read and drop a declared body of at most ``DRAIN_MAX_BYTES``."""
    remaining = declared_length(environ) or 0
    if remaining > DRAIN_MAX_BYTES:
        return
    stream = environ["wsgi.input"]
    try:
        while remaining > 0:
            chunk = stream.read(min(65536, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
    except OSError:  # the client went away: nothing left to drain
        pass


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The whole body, or ApiError: 413 over ``limit``, 400 if it ends early."""
    length = declared_length(environ)
    if length is None and "wsgi.input_terminated" not in environ:
        return b""  # no length and no end of stream: nothing is safe to read (as werkzeug)
    if length is not None and length > limit:
        drain(environ)
        raise body_too_large(limit)
    want = limit + 1 if length is None else length
    try:
        raw = environ["wsgi.input"].read(want) if want else b""
    except OSError:  # the client went away mid-body
        raw = b""
    if length is None:
        if len(raw) > limit:
            raise body_too_large(limit)
    elif len(raw) < length:
        raise ApiError(400, "bad_request", f"request body ended after {len(raw)} of {length} bytes")
    return raw
