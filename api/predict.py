"""``POST /predict``: request body -> validated feature matrix -> one scoring call.

Accepted bodies: one reading object, a JSON list of them, or ``{"records": [...]}``.
Field names and aliases are the wire contract's (:func:`contract.normalise_record`);
a request is scored whole or not at all: any bad record gets a 422 that names the
record's index and the field, and lists the other bad records (up to a few).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from api.errors import ApiError, RecordProblems
from api.loaded_model import LoadedModel
from api.series import DRIVERS, HistorySource, score_series, validate_series
from contract import Rejected, normalise_record

_SHAPE_HINT = 'send one reading object, a list of them, or {"records": [...]}'


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    records: list[Any]
    # A single object in, a single result out; lists and {"records"} get a list back.
    single: bool


def is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        strict_error = str(exc)
    # orjson refuses NaN/Infinity (not JSON); clients written with Python's json send
    # them anyway.  Parse leniently so the 422 can name the offending field.
    try:
        obj = json.loads(raw, parse_int=_bounded_int)
    except (ValueError, RecursionError):
        raise ApiError(400, "not_json", f"body is not valid JSON: {strict_error[:160]}") from None
    return obj


def _bounded_int(text: str) -> int | float:
    # Integers beyond 64 bits (which orjson refuses) become floats, possibly inf, so
    # the record is rejected as not finite / out of range instead of overflowing.
    return int(text) if len(text) <= 18 else float(text)


def check_media_type(mimetype: str) -> None:
    """ApiError(415) unless ``mimetype`` (lower case, no parameters) is JSON."""
    if not is_json(mimetype):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, got {mimetype or 'none'}",
        )


def parse_request(mimetype: str, raw: bytes, max_records: int) -> ParsedRequest:
    """The records of a body sent with Content-Type ``mimetype``, or ApiError."""
    check_media_type(mimetype)
    if not raw.strip():
        raise ApiError(400, "empty_body", f"request body is empty; {_SHAPE_HINT}")
    obj = _loads(raw)
    if isinstance(obj, dict) and "records" in obj:
        records = obj["records"]
        if not isinstance(records, list):
            raise ApiError(422, "not_list", "records must be a list", field="records")
        single = False
    elif isinstance(obj, dict):
        records, single = [obj], True
    elif isinstance(obj, list):
        records, single = obj, False
    else:
        raise ApiError(422, "not_object", f"got a JSON {type(obj).__name__}; {_SHAPE_HINT}")
    if len(records) > max_records:
        raise ApiError(
            413,
            "too_many_records",
            f"{len(records)} records in one request, the limit is {max_records}",
            field="records",
        )
    return ParsedRequest(records, single)


def validate(parsed: ParsedRequest, model: LoadedModel) -> list[list[float]]:
    """The records' feature rows in the model's column order, or ApiError(422)."""
    features = model.scorer.features
    now_ns = time.time_ns()
    rows: list[list[float]] = []
    problems = RecordProblems(len(parsed.records), parsed.single)
    for index, record in enumerate(parsed.records):
        try:
            values, _ts, _seq = normalise_record(record, now_ns, model.limits)
        except Rejected as rej:
            problems.add(rej.reason, rej.detail, rej.field, index)
            continue
        if not problems:
            rows.append([values[f] for f in features])
    problems.raise_any()
    return rows


def score(rows: list[list[float]], model: LoadedModel) -> list[dict[str, Any]]:
    """Score every row in one call; per row: score, decision, model and drivers."""
    scorer = model.scorer
    threshold = round(scorer.threshold, 6)
    version = scorer.version
    features = scorer.features

    def result(score: float, row: list[float], drivers: list[tuple[int, float]]) -> dict:
        return {
            "score": round(score, 6),
            "is_anomaly": score >= scorer.threshold,
            "threshold": threshold,
            "model_version": version,
            "drivers": [
                {"feature": features[i], "value": row[i], "z": round(zi, 3)} for i, zi in drivers
            ],
        }

    if len(rows) == 1:  # the usual request: no matrices for one row
        value, z = scorer.score_row(rows[0])
        return [result(value, rows[0], scorer.top_contributors_row(z, DRIVERS))]
    if not rows:
        return []
    x = np.array(rows, dtype=np.float64)
    scores = scorer.score(x)
    z_all = scorer.explain(x)
    return [
        result(float(scores[i]), row, scorer.top_contributors_row(z_all[i].tolist(), DRIVERS))
        for i, row in enumerate(rows)
    ]


def predict_body(
    parsed: ParsedRequest, model: LoadedModel, history: HistorySource | None = None
) -> tuple[Any, int, int]:
    """The response body for a parsed request, its record count and anomaly count.

    A stateful model scores each device's records in time order after the device's
    stored readings (``history``, see :mod:`api.series`)."""
    extra: dict[str, Any] = {}
    if model.stateful:
        results = score_series(validate_series(parsed, model), model, history)
        extra["scored"] = sum(r["score"] is not None for r in results)
    else:
        results = score(validate(parsed, model), model)
    anomalies = sum(r["is_anomaly"] is True for r in results)
    if parsed.single:
        return results[0], 1, anomalies
    scorer = model.scorer
    body = {
        "model_version": scorer.version,
        "threshold": round(scorer.threshold, 6),
        "count": len(results),
        "anomalies": anomalies,
        **extra,
        "results": results,
    }
    return body, len(results), anomalies
