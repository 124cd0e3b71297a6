"""The alert endpoints' requests: query parameters and JSON bodies, checked.

The contract's checks (``contract.alerting``) decide what an alert id, a name or a
note may be; their refusals become 422s naming the field.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from api.body import read_body
from api.config import AlertsConfig
from api.errors import ApiError
from api.params import choice_param, int_param, name_param
from api.predict import check_media_type
from contract.alerting import (
    LABELS,
    MAX_FAULT_TYPE,
    MAX_NOTE,
    check_alert_id,
    check_person,
    check_text,
)
from contract.reading import Rejected

STATES = ("all", "firing", "resolved")
DEFAULT_HOURS = 24
# Acknowledgement and label bodies are a few short strings.
MAX_BODY_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class ListQuery:
    hours: int
    line: str | None
    device: str | None
    state: str


def list_query(args: Any, cfg: AlertsConfig) -> ListQuery:
    """The query parameters of ``GET /api/alerts``, or ApiError(422) naming the bad one."""
    return ListQuery(
        hours=int_param(args.get("hours"), "hours", DEFAULT_HOURS, cfg.max_hours),
        line=name_param(args.get("line"), "line"),
        device=name_param(args.get("device"), "device"),
        state=choice_param(args.get("state"), "state", STATES),
    )


@contextlib.contextmanager
def contract_checks() -> Iterator[None]:
    """The contract's refusals (``Rejected``) as 422s naming the field."""
    try:
        yield
    except Rejected as rej:
        raise ApiError(422, rej.reason, rej.detail, field=rej.field) from None


def path_alert_id(raw: str) -> str:
    with contract_checks():
        return check_alert_id(raw)


def json_object(mimetype: str, environ: dict[str, Any], limit: int) -> dict[str, Any]:
    """A small JSON object body: 415 not JSON, 413 too large, 400 unparseable, 422 not
    an object."""
    check_media_type(mimetype)  # before reading a body that will be refused
    raw = read_body(environ, min(limit, MAX_BODY_BYTES))
    if not raw.strip():
        raise ApiError(400, "empty_body", "request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "not_json", f"body is not valid JSON: {str(exc)[:160]}") from None
    if not isinstance(body, dict):
        raise ApiError(422, "not_object", "the body must be a JSON object")
    return body


@dataclass(frozen=True, slots=True)
class AckRequest:
    by: str
    note: str


def ack_request(body: dict[str, Any]) -> AckRequest:
    with contract_checks():
        if "by" not in body:
            raise Rejected("missing_field", "by is required: who acknowledges", "by")
        return AckRequest(check_person(body["by"]), check_text(body.get("note"), "note", MAX_NOTE))


@dataclass(frozen=True, slots=True)
class LabelRequest:
    label: str
    by: str
    note: str
    fault_type: str


def label_request(body: dict[str, Any]) -> LabelRequest:
    with contract_checks():
        for name in ("label", "by"):
            if name not in body:
                raise Rejected("missing_field", f"{name} is required", name)
        if body["label"] not in LABELS:
            raise Rejected("bad_field", f"label must be one of {', '.join(LABELS)}", "label")
        return LabelRequest(
            body["label"],
            check_person(body["by"]),
            check_text(body.get("note"), "note", MAX_NOTE),
            check_text(body.get("fault_type"), "fault_type", MAX_FAULT_TYPE),
        )
