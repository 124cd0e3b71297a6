"""The InfluxDB schema: measurement, tag and field names, in one place.

Writers (the gateway) and readers (API history, retraining, dashboards) use these
names; a reading field configured by a plant must not collide with them.
"""

from __future__ import annotations

import re

# Measurements.
READING = "reading"
SENSOR_FAULT = "sensor_fault"
GATEWAY_HEALTH = "gateway"
# Alert history: one point per transition (``contract.alerting.EVENTS``) at its time.
#   tags LINE, DEVICE, KIND (process_anomaly, sensor_fault, model_drift), FAULT (the
#   sensor fault's type; absent otherwise: two faults may start on one reading), EVENT;
#   fields ALERT_ID, STARTED_NS, SCORE, BY and NOTE (acknowledged), HELD (silenced:
#   the event held back).
ALERT_EVENT = "alert_event"
# Feedback labels: one point per alert at the alert's start time, so a new label of
# the same alert replaces the old one.
#   tags LINE, DEVICE, KIND, FAULT (as in ALERT_EVENT); fields ALERT_ID, LABEL
#   (contract.alerting.LABELS), FAULT_TYPE, NOTE, BY, STARTED_NS, ENDED_NS (0 while
#   firing), LABELLED_NS.
ALERT_LABEL = "alert_label"

# Tags of `reading`.
LINE = "line"
DEVICE = "device"
MODEL_VERSION = "model_version"

# Fields of `reading` besides the sensor values.
SCORE = "score"
IS_ANOMALY = "is_anomaly"
SEQ = "seq"
WARMING_UP = "warming_up"
GATEWAY = "gateway"

# Tag and field of `sensor_fault` (besides LINE and DEVICE): the fault's kind, and
# whether it is active (1 at its start, 0 when it clears).
KIND = "kind"
ACTIVE = "active"
DETAIL = "detail"

# Tags and fields of `alert_event` / `alert_label` (besides LINE, DEVICE, KIND, SCORE,
# DETAIL).
EVENT = "event"
ALERT_ID = "alert_id"
STARTED_NS = "started_ns"
ENDED_NS = "ended_ns"
LABELLED_NS = "labelled_ns"
FAULT = "fault"
BY = "by"
NOTE = "note"
HELD = "held"
LABEL = "label"
FAULT_TYPE = "fault_type"

# Values of EVENT (an alert's transitions) and LABEL; contract.alerting says what they mean.
EVENT_FIRING = "firing"
EVENT_REPEATED = "repeated"
EVENT_ACKNOWLEDGED = "acknowledged"
EVENT_RESOLVED = "resolved"
EVENT_SILENCED = "silenced"
LABEL_REAL_FAULT = "real_fault"
LABEL_FALSE_ALARM = "false_alarm"

# Tags of `gateway` (health points): GATEWAY (the gateway's id) and MODEL_VERSION.

# Names a sensor field may not take: they are the reading's tags and other fields,
# InfluxQL's `time`, and the wire's `ts`/`seq`.
RESERVED_FIELD_NAMES = frozenset(
    {LINE, DEVICE, MODEL_VERSION, SCORE, IS_ANOMALY, SEQ, WARMING_UP, GATEWAY, "time", "ts"}
)
# Sensor field names are also model feature names and InfluxDB field keys: plain
# identifiers need no escaping anywhere and read back exactly.
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_field_name(name: str) -> None:
    """Raise ValueError unless ``name`` can be a sensor field of the ``reading`` measurement."""
    if not FIELD_NAME.fullmatch(name):
        raise ValueError(
            f"field name {name!r} must be 1-64 lower-case letters, digits or _, "
            "starting with a letter"
        )
    if name in RESERVED_FIELD_NAMES:
        raise ValueError(f"field name {name!r} is reserved by the InfluxDB schema")
