"""``POST /predict`` for models whose score depends on a device's earlier readings.

Stream-feature models and the time-aware detector (``Scorer.stateful``) score a
reading from its device's history, through the same per-device logic as the gateway
(:meth:`Scorer.new_inputs`, :mod:`model.inputs`):

* records name their device with ``line`` and ``device`` (both or neither); records
  without them are one unnamed device;
* each device's records are scored in time order (``ts``); per device either every
  record carries ``ts`` or none does (then request order, as readings received now);
* before a named device's records, its newest ``Scorer.history_readings`` stored
  readings older than its first record are read from InfluxDB (measurement
  ``reading``, as the gateway writes it) and run through the same inputs;
* each record says how it was scored (``status``, ``detail``): ``scored``;
  ``partial`` (fewer than ``history_readings`` earlier readings: for the time-aware
  detector only the level guard, then all but the cross-sensor check, as in the
  gateway); ``warming_up`` (no score yet: a rolling window is not full); or
  ``out_of_order`` (not later than the device's previous reading).

Results come back in request order.  Nothing here is kept between requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from api.errors import ApiError, RecordProblems
from api.influx import InfluxQueryError, InfluxUnavailable
from common.logs import RateLimitedLog
from contract import Rejected, normalise_record
from contract.topics import valid_name

if TYPE_CHECKING:
    from api.loaded_model import LoadedModel
    from api.predict import ParsedRequest
    from model.scorer import Scorer

log = logging.getLogger(__name__)
# InfluxDB down under load must not log once per request.
_ratelog = RateLimitedLog(log, 10.0)

# Signals reported per record as what drove the score.
DRIVERS = 3
SCORED = "scored"
# Scored by part of the model: its history-based checks still lack readings.
PARTIAL = "partial"
WARMING_UP = "warming_up"
OUT_OF_ORDER = "out_of_order"
# Named devices whose stored history one request may read: each is one InfluxDB
# query and up to history_readings readings run through the model.
MAX_HISTORY_DEVICES = 20

_NAME_RULE = "must be 1-64 printable characters without spaces, '+', '#' or '/'"

Key = tuple[str, str] | None


class HistorySource(Protocol):
    """Where a device's stored readings come from (:class:`api.influx.InfluxReader`)."""

    @property
    def configured(self) -> bool: ...

    def history(
        self, line: str, device: str, fields: tuple[str, ...], before_ns: int, limit: int
    ) -> tuple[list[int], list[list[float]]]: ...


@dataclass(slots=True)
class Record:
    index: int  # position in the request
    key: Key  # (line, device), None for the unnamed device
    ts_ns: int
    has_ts: bool
    values: list[float]  # in LoadedModel.fields order


def _label(key: Key) -> str:
    return "the unnamed device" if key is None else f"{key[0]}/{key[1]}"


def _names(record: dict[str, Any]) -> tuple[Any, Any, bool]:
    """(line, device, has ts) of a record; keys are case-insensitive like fields."""
    line = device = None
    has_ts = False
    for name, raw in record.items():
        lowered = name.lower()
        if lowered == "line":
            line = raw
        elif lowered == "device":
            device = raw
        elif lowered == "ts":
            has_ts = True
    return line, device, has_ts


def _key(line: Any, device: Any) -> Key:
    if line is None and device is None:
        return None
    for name, raw in (("line", line), ("device", device)):
        if raw is None:
            other = "device" if name == "line" else "line"
            raise Rejected("missing_field", f"{name} is required with {other}", name)
        if not isinstance(raw, str) or not valid_name(raw):
            raise Rejected("bad_name", f"{name} {_NAME_RULE}", name)
    return line, device


def validate_series(parsed: ParsedRequest, model: LoadedModel) -> list[Record]:
    """Every record with its device, time and values, or ApiError(422)."""
    fields = model.fields
    now_ns = time.time_ns()
    records: list[Record] = []
    problems = RecordProblems(len(parsed.records), parsed.single)
    for index, obj in enumerate(parsed.records):
        try:
            values, ts_ns, _seq = normalise_record(obj, now_ns, model.limits)
            line, device, has_ts = _names(obj)  # obj is a dict: normalise_record checked
            key = _key(line, device)
        except Rejected as rej:
            problems.add(rej.reason, rej.detail, rej.field, index)
            continue
        records.append(Record(index, key, ts_ns, has_ts, [values[f] for f in fields]))
    problems.raise_any()
    devices: dict[Key, list[Record]] = {}
    for rec in records:
        devices.setdefault(rec.key, []).append(rec)
    for key, recs in devices.items():
        with_ts = sum(r.has_ts for r in recs)
        if 0 < with_ts < len(recs):
            first = next(r for r in recs if not r.has_ts)
            problems.add(
                "bad_timestamp",
                f"records of {_label(key)} must all carry ts or none (then request order)",
                "ts",
                first.index,
            )
        elif not with_ts:
            # Received now, in request order: after every stored reading.
            for offset, rec in enumerate(recs):
                rec.ts_ns = now_ns + offset
    problems.raise_any()
    named = sum(key is not None for key in devices)
    if named > MAX_HISTORY_DEVICES:
        raise ApiError(
            422,
            "too_many_devices",
            f"{named} devices in one request; a stateful model reads each one's stored "
            f"history, at most {MAX_HISTORY_DEVICES} per request",
            field="device",
        )
    return records


def readings_before_first_score(scorer: Scorer) -> int:
    """Earlier readings of a device before the model gives it a score."""
    if scorer.dynamics is not None:
        return 0  # from the first reading: the level guard needs no history
    return scorer.stream.warmup


@dataclass(slots=True)
class _Stored:
    count: int = 0
    # Why there is no stored history (None: InfluxDB answered).
    problem: str | None = None


def _load_history(
    devices: dict[Key, list[Record]],
    model: LoadedModel,
    history: HistorySource | None,
) -> tuple[dict[Key, _Stored], list[Hashable], list[int], list[list[float]]]:
    limit = model.scorer.history_readings
    stored = {key: _Stored() for key in devices}
    keys: list[Hashable] = []
    ts: list[int] = []
    values: list[list[float]] = []
    unavailable: str | None = None
    if history is None or not history.configured:
        unavailable = "no InfluxDB configured"
    for key, recs in devices.items():
        if key is None:
            continue
        if unavailable is not None:
            stored[key].problem = unavailable
            continue
        try:
            h_ts, h_values = history.history(key[0], key[1], model.fields, recs[0].ts_ns, limit)  # type: ignore[union-attr]
        except (InfluxUnavailable, InfluxQueryError) as exc:
            # One failure answers for the rest: do not wait out a timeout per device.
            _ratelog.warning("history", "no stored history for /predict: %s", exc)
            unavailable = (
                "InfluxDB did not answer"
                if isinstance(exc, InfluxUnavailable)
                else ("InfluxDB answered with an error")
            )
            stored[key].problem = unavailable
            continue
        stored[key].count = len(h_ts)
        keys.extend([key] * len(h_ts))
        ts.extend(h_ts)
        values.extend(h_values)
    return stored, keys, ts, values


def _source(key: Key, stored: _Stored) -> str:
    if key is None:
        return "no line/device given, so no stored history"
    if stored.problem is not None:
        return f"stored history of {_label(key)} unavailable ({stored.problem})"
    if stored.count == 0:
        return f"no stored history for {_label(key)}"
    return f"{stored.count} stored readings of {_label(key)}"


def score_series(
    records: list[Record], model: LoadedModel, history: HistorySource | None
) -> list[dict[str, Any]]:
    """One result per record, in request order (see the module docstring)."""
    scorer = model.scorer
    devices: dict[Key, list[Record]] = {}
    for rec in records:
        devices.setdefault(rec.key, []).append(rec)
    for recs in devices.values():
        recs.sort(key=lambda r: r.ts_ns)  # stable: equal times keep request order
    inputs = scorer.new_inputs()
    stored, h_keys, h_ts, h_values = _load_history(devices, model, history)
    width = len(model.fields)
    if h_keys:
        inputs.build(
            h_keys,
            np.array(h_ts, dtype=np.int64),
            np.array(h_values, dtype=np.float64).reshape(len(h_keys), width),
        )
    ordered = [rec for recs in devices.values() for rec in recs]
    batch = inputs.build(
        [rec.key for rec in ordered],
        np.array([rec.ts_ns for rec in ordered], dtype=np.int64),
        np.array([rec.values for rec in ordered], dtype=np.float64).reshape(len(ordered), width),
    )
    row_of = {int(pos): row for row, pos in enumerate(batch.index.tolist())}
    if batch.X.shape[0]:
        scores = scorer.score(batch.X).tolist()
        ratios = scorer.explain(batch.X).tolist()
        x_rows = batch.X.tolist()
    threshold = scorer.threshold
    common = {"threshold": round(threshold, 6), "model_version": scorer.version}
    complete_after = scorer.history_readings
    first_after = readings_before_first_score(scorer)
    signals = scorer.signals
    results: list[dict[str, Any] | None] = [None] * len(records)
    pos = 0
    for key, recs in devices.items():
        earlier = stored[key].count
        previous_ts: int | None = None
        for rec in recs:
            row = row_of.get(pos)
            pos += 1
            result: dict[str, Any] = {"score": None, "is_anomaly": None, **common, "drivers": []}
            if key is not None:
                result["line"], result["device"] = key
            result["history"] = earlier
            if previous_ts is not None and rec.ts_ns <= previous_ts:
                result["status"] = OUT_OF_ORDER
                result["detail"] = (
                    f"ts is not later than the previous reading of {_label(key)} "
                    "in this request; not scored"
                )
            elif row is None:
                result["status"] = WARMING_UP
                result["detail"] = (
                    f"{_source(key, stored[key])}; {max(first_after - earlier, 1)} more "
                    "readings needed before the first score"
                )
            else:
                score = scores[row]
                top = scorer.top_contributors_row(ratios[row], DRIVERS)
                result["score"] = round(score, 6)
                result["is_anomaly"] = score >= threshold
                result["drivers"] = [
                    {"feature": signals[i], "value": x_rows[row][i], "z": round(z, 3)}
                    for i, z in top
                ]
                result["status"] = SCORED
                if earlier < complete_after:
                    result["status"] = PARTIAL
                    result["detail"] = (
                        f"{_source(key, stored[key])}; scored from {earlier} earlier "
                        f"readings, {complete_after - earlier} more needed for the model's "
                        "history-based checks to be complete"
                    )
            if result["status"] != OUT_OF_ORDER:
                earlier += 1
                previous_ts = rec.ts_ns
            results[rec.index] = result
    return results  # type: ignore[return-value]
