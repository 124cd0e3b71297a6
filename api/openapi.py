"""The OpenAPI 3 document served at ``/openapi.json``.

Built from the live model's features, the contract's field table (ranges, units,
aliases) and the configured limits, so the document says exactly what the server
accepts.  Cached per model version.
"""

from __future__ import annotations

from typing import Any

from contract import DEFAULT_FIELDS
from contract.fields import FieldSpec

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _field_schema(spec: FieldSpec) -> dict[str, Any]:
    aliases = [a for a in spec.aliases if a != spec.name]
    return {
        "type": "number",
        "minimum": spec.minimum,
        "maximum": spec.maximum,
        "description": f"{spec.unit}; also accepted as: {', '.join(aliases)} (any case)",
    }


_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_ALERT_ID = {"type": "string", "pattern": "^[0-9a-f]{16}$", "minLength": 16, "maxLength": 16}
_LABELS = ["real_fault", "false_alarm"]
_LABEL = {
    "type": "object",
    "required": ["label", "fault_type", "note", "by", "labelled_at"],
    "properties": {
        "label": {"type": "string", "enum": _LABELS},
        "fault_type": _NULLABLE_TEXT,
        "note": _NULLABLE_TEXT,
        "by": {"type": "string"},
        "labelled_at": _NULLABLE_TIME,
    },
}
_ALERT = {
    "type": "object",
    "required": [
        "alert_id", "line", "device", "kind", "fault", "state", "started", "last_event",
        "last_event_at", "resolved_at", "acknowledged_by", "acknowledged_at", "note",
        "silenced", "peak_score", "events", "label",
    ],
    "properties": {
        "alert_id": {"type": "string"},
        "line": {"type": "string"},
        "device": {"type": "string"},
        "kind": {
            "type": "string",
            "description": "process_anomaly, sensor_fault or model_drift",
        },
        "fault": {**_NULLABLE_TEXT, "description": "the sensor fault's type (sensor_fault)"},
        "state": {"type": "string", "enum": ["firing", "resolved"]},
        "started": {**_TIME, "description": "when the alert started firing"},
        "last_event": {
            "type": "string",
            "description": "firing, repeated, acknowledged, resolved or silenced",
        },
        "last_event_at": _TIME,
        "resolved_at": _NULLABLE_TIME,
        "acknowledged_by": _NULLABLE_TEXT,
        "acknowledged_at": _NULLABLE_TIME,
        "note": {**_NULLABLE_TEXT, "description": "the acknowledgement's note"},
        "silenced": {
            "type": "boolean",
            "description": "a transition was held back by a maintenance silence",
        },
        "peak_score": {"type": ["number", "null"]},
        "events": {"type": "integer", "minimum": 1, "description": "stored events read"},
        "label": {"oneOf": [{"$ref": "#/components/schemas/Label"}, {"type": "null"}]},
    },
}  # fmt: skip


def _alert_paths(
    name_param: dict[str, Any],
    secured: list[dict[str, Any]],
    unauthorized: dict[str, Any],
    max_hours: int,
    max_alerts: int,
) -> dict[str, Any]:
    alert_ref = {"$ref": "#/components/schemas/Alert"}
    id_param = {"name": "alert_id", "in": "path", "required": True, "schema": _ALERT_ID}
    text = {"type": ["string", "null"]}
    person = {"type": "string", "minLength": 1, "maxLength": 64}

    def body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        schema = {"type": "object", "required": required, "properties": properties}
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def action(summary: str, description: str, request: dict[str, Any], ok: dict) -> dict:
        return {
            "post": {
                "summary": summary,
                "description": description,
                "security": secured,
                "parameters": [id_param],
                "requestBody": request,
                "responses": {
                    **ok,
                    "400": _error("body is empty or not JSON"),
                    **unauthorized,
                    "404": _error("no alert with this id within the lookback"),
                    "413": _error("body over the limit"),
                    "415": _error("Content-Type is not application/json"),
                    "422": _error("bad alert id or body (names the field)"),
                    "502": _error("InfluxDB or the broker answered with an error"),
                    "503": _error("InfluxDB or the MQTT broker did not answer"),
                },
            }
        }

    ack_ok = {
        "type": "object",
        "required": ["alert_id", "line", "device", "topic", "status"],
        "properties": {
            "alert_id": {"type": "string"},
            "line": {"type": "string"},
            "device": {"type": "string"},
            "topic": {"type": "string"},
            "status": {"type": "string", "enum": ["sent"]},
        },
    }
    return {
        "/api/alerts": {
            "get": {
                "summary": "Alerts from the stored history, newest start first",
                "description": (
                    "Alerts with an event in the last `hours`, and (unless state=resolved) "
                    f"those still firing; at most {max_alerts} (then truncated is true)."
                ),
                "security": secured,
                "parameters": [
                    {
                        "name": "hours",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": max_hours,
                            "default": 24,
                        },
                    },
                    {"name": "line", "in": "query", "required": False, "schema": name_param},
                    {"name": "device", "in": "query", "required": False, "schema": name_param},
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "enum": ["all", "firing", "resolved"],
                            "default": "all",
                        },
                    },
                ],
                "responses": {
                    "200": {
                        "description": "one entry per alert",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["hours", "state", "count", "truncated", "alerts"],
                                    "properties": {
                                        "hours": {"type": "integer"},
                                        "state": {"type": "string"},
                                        "count": {"type": "integer", "minimum": 0},
                                        "truncated": {"type": "boolean"},
                                        "alerts": {"type": "array", "items": alert_ref},
                                    },
                                }
                            }
                        },
                    },
                    **unauthorized,
                    "414": {
                        "description": "request line over 4094 bytes (answered by gunicorn)",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "422": _error("a query parameter is invalid (names it)"),
                    "502": _error("InfluxDB answered with an error"),
                    "503": _error("InfluxDB is not configured or did not answer"),
                },
            }
        },
        "/api/alerts/{alert_id}/ack": action(
            "Acknowledge a firing alert",
            "Publishes the acknowledgement on factory/ack/<line>/<device> (QoS 1) and "
            "answers 202 once the broker accepted it; the gateway applies it.",
            body({"by": person, "note": {**text, "maxLength": 500}}, ["by"]),
            {
                "202": {
                    "description": "the broker accepted the acknowledgement",
                    "content": {"application/json": {"schema": ack_ok}},
                },
                "409": _error("the alert is already resolved"),
            },
        ),
        "/api/alerts/{alert_id}/label": action(
            "Label an alert: real fault or false alarm",
            "Stores the label (alert_label in InfluxDB); a new label replaces the old one.",
            body(
                {
                    "label": {"type": "string", "enum": _LABELS},
                    "by": person,
                    "note": {**text, "maxLength": 500},
                    "fault_type": {**text, "maxLength": 64},
                },
                ["label", "by"],
            ),
            {
                "201": {
                    "description": "the alert with its stored label",
                    "content": {"application/json": {"schema": alert_ref}},
                }
            },
        ),
    }


def build_openapi(
    *,
    features: tuple[str, ...],
    signals: tuple[str, ...] | None = None,
    stateful: bool = False,
    max_records: int,
    max_body_bytes: int,
    max_minutes: int,
    max_hours: int = 720,
    max_alerts: int = 200,
    keys_enabled: bool,
    version: str,
) -> dict[str, Any]:
    """``features``: the reading fields the model needs (``LoadedModel.fields``);
    ``signals``: what drivers name (``Scorer.signals``, default ``features``);
    ``stateful``: records may name their device and get per-device answers."""
    specs = {f.name: f for f in DEFAULT_FIELDS}
    signals = features if signals is None else signals
    device_props: dict[str, Any] = {}
    result_props: dict[str, Any] = {}
    if stateful:
        name = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^+#/ ]+$"}
        device_props = {
            "line": {**name, "description": "production line (with device): whose history"},
            "device": {**name, "description": "device (with line); its stored readings "
                       "come before this record"},
        }  # fmt: skip
        result_props = {
            "status": {
                "type": "string",
                "enum": ["scored", "partial", "warming_up", "out_of_order"],
            },
            "detail": {
                "type": "string",
                "description": "why there is no score, or which history the partial score had",
            },
            "history": {
                "type": "integer",
                "minimum": 0,
                "description": "earlier readings of the device the score used "
                "(stored ones and earlier records of the request)",
            },
            "line": {"type": "string"},
            "device": {"type": "string"},
        }
    reading = {
        "type": "object",
        "description": (
            "One sensor reading. Field names are case-insensitive and the aliases of "
            "existing clients are accepted; other keys are ignored."
        ),
        "properties": {
            **{name: _field_schema(specs[name]) for name in features if name in specs},
            "ts": {
                "description": "RFC 3339 time with offset, or epoch seconds (optional)",
                "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
            },
            "seq": {"type": "integer", "minimum": 0, "description": "per-device sequence"},
            **device_props,
        },
        "required": list(features),
    }
    driver = {
        "type": "object",
        "required": ["feature", "value", "z"],
        "properties": {
            "feature": {"type": "string", "enum": list(signals)},
            "value": {"type": "number"},
            "z": {
                "type": "number",
                "description": (
                    "the statistic over its control limit (1 = at the limit)"
                    if stateful and signals != features
                    else "signed deviation from the training mean in standard deviations"
                ),
            },
        },
    }
    nullable = "null: not scored (see status)"
    result = {
        "type": "object",
        "required": [
            "score",
            "is_anomaly",
            "threshold",
            "model_version",
            "drivers",
            *(["status", "history"] if stateful else []),
        ],
        "properties": {
            "score": (
                {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description": nullable}
                if stateful
                else {"type": "number", "minimum": 0, "maximum": 1}
            ),
            "is_anomaly": {
                "type": ["boolean", "null"] if stateful else "boolean",
                "description": "score >= threshold" + (f"; {nullable}" if stateful else ""),
            },
            "threshold": {"type": "number"},
            "model_version": {"type": "string"},
            "drivers": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/Driver"},
                "description": "features ordered by how unusual their value is (|z|)",
            },
            **result_props,
        },
    }
    batch = {
        "type": "object",
        "required": ["model_version", "threshold", "count", "anomalies", "results"],
        "properties": {
            "model_version": {"type": "string"},
            "threshold": {"type": "number"},
            "count": {"type": "integer", "minimum": 0},
            "anomalies": {"type": "integer", "minimum": 0},
            **(
                {"scored": {"type": "integer", "minimum": 0, "description": "records scored"}}
                if stateful
                else {}
            ),
            "results": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/PredictResult"},
                "description": "one result per record, in request order",
            },
        },
    }
    error = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "code", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                    "index": {"type": "integer", "minimum": 0},
                    "details": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    }
    series = {
        "type": "object",
        "required": ["line", "device", "points", "anomalies", "time", "values", "score"],
        "properties": {
            "line": {"type": "string"},
            "device": {"type": "string"},
            "points": {"type": "integer"},
            "anomalies": {"type": "integer"},
            "time": {"type": "array", "items": {"type": "integer"}, "description": "epoch ms"},
            "values": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": ["number", "null"]}},
            },
            "score": {"type": "array", "items": {"type": ["number", "null"]}},
            "is_anomaly": {"type": "array", "items": {"type": "boolean"}},
            "model_version": {"type": ["string", "null"]},
        },
    }
    secured = [{"ApiKey": []}] if keys_enabled else []
    unauthorized = {"401": _error("missing or wrong API key")} if keys_enabled else {}
    name_param = {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[^+#/ ]+$",
    }
    json_body = {"application/json": {"schema": {"type": "object"}}}
    paths: dict[str, Any] = {
        "/predict": {
            "post": {
                "summary": "Score readings",
                "description": (
                    'Send one reading, a list, or {"records": [...]}. The whole request is '
                    "scored by one model; a bad record rejects the request (422) naming "
                    f"its index and field. At most {max_records} records and "
                    f"{max_body_bytes} bytes."
                    + (
                        " This model scores a reading from its device's earlier readings: "
                        "records may carry line and device; each device's records are "
                        "scored in ts order after its stored readings (InfluxDB). Each result "
                        "has a status (scored, partial: short history, warming_up: no score "
                        "yet, out_of_order) and a detail saying which history it had (HTTP "
                        "200 for a valid request, even when nothing could be scored)."
                        if stateful
                        else ""
                    )
                ),
                "security": secured,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "anyOf": [
                                    {"$ref": "#/components/schemas/Reading"},
                                    {
                                        "type": "array",
                                        "maxItems": max_records,
                                        "items": {"$ref": "#/components/schemas/Reading"},
                                    },
                                    {
                                        "type": "object",
                                        "required": ["records"],
                                        "properties": {
                                            "records": {
                                                "type": "array",
                                                "maxItems": max_records,
                                                "items": {"$ref": "#/components/schemas/Reading"},
                                            }
                                        },
                                    },
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "a result object for one reading, a batch for a list",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "anyOf": [
                                        {"$ref": "#/components/schemas/PredictResult"},
                                        {"$ref": "#/components/schemas/PredictBatch"},
                                    ]
                                }
                            }
                        },
                    },
                    "400": _error("body is empty or not JSON"),
                    **unauthorized,
                    "413": _error("body or number of records over the limit"),
                    "415": _error("Content-Type is not application/json"),
                    "422": _error(
                        "a record is invalid: missing, non-numeric, non-finite, "
                        "out of range; names the field and the record index"
                        + (
                            "; or a bad line/device name, ts on some records of a device "
                            "but not all, or too many devices in one request"
                            if stateful
                            else ""
                        )
                    ),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "The process is alive (never needs a key)",
                "responses": {"200": {"description": "alive", "content": json_body}},
            }
        },
        "/ready": {
            "get": {
                "summary": "A model is loaded (and configured dependencies answer)",
                "responses": {
                    "200": {"description": "ready", "content": json_body},
                    "503": {
                        "description": "not ready; says which check failed",
                        "content": json_body,
                    },
                },
            }
        },
        "/model": {
            "get": {
                "summary": "The model this worker serves: metadata and evaluation metrics",
                "security": secured,
                "responses": {
                    "200": {"description": "model metadata", "content": json_body},
                    **unauthorized,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (all workers)",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/recent": {
            "get": {
                "summary": "Recent readings, scores and anomalies per device, from InfluxDB",
                "security": secured,
                "parameters": [
                    {"name": "line", "in": "query", "required": False, "schema": name_param},
                    {"name": "device", "in": "query", "required": False, "schema": name_param},
                    {
                        "name": "minutes",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": max_minutes,
                            "default": 15,
                        },
                    },
                ],
                "responses": {
                    "200": {
                        "description": "one entry per device, oldest point first",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["minutes", "devices", "threshold"],
                                    "properties": {
                                        "minutes": {"type": "integer"},
                                        "threshold": {"type": "number"},
                                        "model_version": {"type": "string"},
                                        "devices": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Series"},
                                        },
                                    },
                                }
                            }
                        },
                    },
                    **unauthorized,
                    "414": {
                        "description": "request line over 4094 bytes (answered by gunicorn)",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "422": _error("a query parameter is invalid (names it)"),
                    "502": _error("InfluxDB answered with an error"),
                    "503": _error("InfluxDB is not configured or did not answer"),
                },
            }
        },
        **_alert_paths(name_param, secured, unauthorized, max_hours, max_alerts),
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3 document", "content": json_body}},
            }
        },
        "/": {
            "get": {
                "summary": "The web page (form + live charts)",
                "responses": {
                    "200": {
                        "description": "HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Factory anomaly prediction API",
            "version": "1",
            "description": f"Scores sensor readings with the gateway's model ({version}).",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Reading": reading,
                "Driver": driver,
                "PredictResult": result,
                "PredictBatch": batch,
                "Series": series,
                "Alert": _ALERT,
                "Label": _LABEL,
                "Error": error,
            },
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }
    return doc
