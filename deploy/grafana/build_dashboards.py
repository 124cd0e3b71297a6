#!/usr/bin/env python3
"""Write the Grafana dashboards (deploy/grafana/dashboards/*.json) from this file.

    python3 deploy/grafana/build_dashboards.py

The JSON files are committed; tests/test_deploy_grafana.py checks that they are what
this script writes, and runs every query in them against a real InfluxDB.  Queries are
raw InfluxQL for the data source ``factory-influxdb`` (provisioning/datasources), so
they work on InfluxDB 1.x and, through DBRP mappings, on 2.x/3.x.  Measurement, tag
and field names are the gateway's own (``contract/schema.py``), quoted as the readers
quote them (``common/influxql.py``).  Standard library only; Grafana schema version 39
(Grafana 10.4 and later migrate it on load).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "influxdb", "uid": "factory-influxdb"}
SCHEMA_VERSION = 39
Json = dict[str, Any]


def _load(relative: str) -> ModuleType:
    """A standard-library-only module of this repository, loaded by its path: this
    script runs with a plain python3, where the project's packages (and what their
    ``__init__`` imports) may not be importable."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"_dashboards_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


schema = _load("contract/schema.py")  # the InfluxDB schema the gateway writes
quote_ident = _load("common/influxql.py").quote_ident


class Q:
    """The schema's names as quoted InfluxQL identifiers."""

    READING = quote_ident(schema.READING)
    HEALTH = quote_ident(schema.GATEWAY_HEALTH)
    LINE = quote_ident(schema.LINE)
    DEVICE = quote_ident(schema.DEVICE)
    MODEL_VERSION = quote_ident(schema.MODEL_VERSION)
    GATEWAY = quote_ident(schema.GATEWAY)
    SCORE = quote_ident(schema.SCORE)
    IS_ANOMALY = quote_ident(schema.IS_ANOMALY)
    SEQ = quote_ident(schema.SEQ)
    ALERT_EVENT = quote_ident(schema.ALERT_EVENT)
    ALERT_ID = quote_ident(schema.ALERT_ID)
    KIND = quote_ident(schema.KIND)
    FAULT = quote_ident(schema.FAULT)
    EVENT = quote_ident(schema.EVENT)
    BY = quote_ident(schema.BY)
    NOTE = quote_ident(schema.NOTE)


# Grafana series aliases: the value of a tag.
TAG_LINE = f"$tag_{schema.LINE}"
TAG_GATEWAY = f"$tag_{schema.GATEWAY}"

# WHERE clauses shared by the panels of a dashboard.
LINES = f"$timeFilter AND {Q.LINE} =~ /^$line$/"
DEVICE = f"{LINES} AND {Q.DEVICE} =~ /^$device$/"
GATEWAYS = f"$timeFilter AND {Q.GATEWAY} =~ /^$gateway$/"


# --- building blocks -----------------------------------------------------------------


def target(ref: str, query: str, alias: str = "", fmt: str = "time_series") -> Json:
    out: Json = {"refId": ref, "datasource": DS, "rawQuery": True, "query": query}
    out["resultFormat"] = fmt
    if alias:
        out["alias"] = alias
    return out


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    unit: str,
    *,
    min_value: float | None = 0,
    bars: bool = False,
    overrides: list[Json] | None = None,
    transformations: list[Json] | None = None,
    size: tuple[int, int] = (12, 8),
) -> Json:
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "axisPlacement": "auto",
    }
    defaults: Json = {"unit": unit, "custom": custom}
    if min_value is not None:
        defaults["min"] = min_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "transformations": transformations or [],
        "_size": size,
    }


def stat(
    title: str,
    description: str,
    targets: list[Json],
    unit: str = "none",
    *,
    reducer: str = "lastNotNull",
    steps: list[Json] | None = None,
    transformations: list[Json] | None = None,
    size: tuple[int, int] = (6, 4),
) -> Json:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": steps or [_step("green", None)]},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": [reducer], "fields": "", "values": False},
            "colorMode": "background" if steps else "value",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
        "transformations": transformations or [],
        "_size": size,
    }


def table(
    title: str,
    description: str,
    targets: list[Json],
    transformations: list[Json],
    size: tuple[int, int] = (12, 8),
) -> Json:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": transformations,
        "_size": size,
    }


def _step(color: str, value: float | None) -> Json:
    return {"color": color, "value": value}


def by_name(name: str, *properties: tuple[str, Any]) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties],
    }


def query_variable(
    name: str, label: str, query: str, *, multi: bool = False, include_all: bool = False
) -> Json:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": query,
        "definition": query,
        # 2 = refresh when the time range changes: new devices appear by themselves.
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "current": {},
        "options": [],
        "hide": 0,
        "regex": "",
    }


BUILTIN_ANNOTATIONS = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Json],
    variables: list[Json],
    annotations: list[Json] | None = None,
    time_from: str = "now-6h",
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["factory"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,  # shared crosshair
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": [BUILTIN_ANNOTATIONS, *(annotations or [])]},
        "links": [
            {
                "type": "dashboards",
                "tags": ["factory"],
                "asDropdown": True,
                "title": "Factory dashboards",
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": _layout(panels),
    }


def _layout(panels: list[Json]) -> list[Json]:
    """Left to right, wrapping at Grafana's 24 columns; ids in reading order."""
    x = y = row_height = 0
    out = []
    for pid, panel in enumerate(panels, start=1):
        w, h = panel.pop("_size")
        if x + w > 24:
            x, y, row_height = 0, y + row_height, 0
        panel["id"] = pid
        panel["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_height = max(row_height, h)
        out.append(panel)
    return out


# --- plant overview --------------------------------------------------------------------


def plant_overview() -> Json:
    anomalous = f"{LINES} AND {Q.IS_ANOMALY} = true"

    def per_device(alias: str, where: str) -> str:
        return (
            f'SELECT count("n") AS {quote_ident(alias)} FROM (SELECT count({Q.SCORE}) AS "n" '
            f"FROM {Q.READING} WHERE {where} GROUP BY {Q.LINE}, {Q.DEVICE}) "
            f"WHERE $timeFilter GROUP BY {Q.LINE}"
        )

    panels = [
        timeseries(
            "Readings per second, by line",
            "Readings stored per second (all devices of the line). A line that drops to "
            "zero has lost its sensors, its network or the gateway.",
            [
                target(
                    "A",
                    f"SELECT count({Q.SCORE}) * 1000 / $__interval_ms FROM {Q.READING} "
                    f"WHERE {LINES} GROUP BY time($__interval), {Q.LINE} fill(0)",
                    TAG_LINE,
                )
            ],
            "reqps",
        ),
        timeseries(
            "Anomalous readings per minute, by line",
            "Readings the model scored at or above its threshold (is_anomaly), per minute.",
            [
                target(
                    "A",
                    f"SELECT count({Q.SCORE}) * 60000 / $__interval_ms FROM {Q.READING} "
                    f"WHERE {anomalous} GROUP BY time($__interval), {Q.LINE} fill(0)",
                    TAG_LINE,
                )
            ],
            "none",
        ),
        timeseries(
            "Devices with anomalous readings, by line",
            "How many devices of each line had at least one anomalous reading in each "
            "interval: one device is a local problem, many at once point at the line.",
            [
                target(
                    "A",
                    f'SELECT count("n") FROM (SELECT count({Q.SCORE}) AS "n" FROM {Q.READING} '
                    f"WHERE {anomalous} GROUP BY time($__interval), {Q.LINE}, {Q.DEVICE}) "
                    f"WHERE $timeFilter GROUP BY time($__interval), {Q.LINE} fill(0)",
                    TAG_LINE,
                )
            ],
            "none",
            bars=True,
        ),
        {
            "type": "bargauge",
            "title": "Devices firing now (anomalies in the last 5 minutes)",
            "description": "Per line, devices with at least one anomalous reading in the "
            "last 5 minutes. Their alerts are on factory/alerts/<line>/<device>.",
            "datasource": DS,
            "targets": [
                target(
                    "A",
                    f'SELECT count("n") FROM (SELECT count({Q.SCORE}) AS "n" FROM {Q.READING} '
                    f"WHERE time > now() - 5m AND {Q.LINE} =~ /^$line$/ AND {Q.IS_ANOMALY} = true "
                    f"GROUP BY {Q.LINE}, {Q.DEVICE}) WHERE time > now() - 5m GROUP BY {Q.LINE}",
                    TAG_LINE,
                )
            ],
            "fieldConfig": {
                "defaults": {
                    "unit": "none",
                    "min": 0,
                    "decimals": 0,
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [_step("green", None), _step("orange", 1), _step("red", 3)],
                    },
                },
                "overrides": [],
            },
            "options": {
                "orientation": "horizontal",
                "displayMode": "basic",
                "showUnfilled": True,
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
            "transformations": [],
            "_size": (12, 8),
        },
        table(
            "Lines in the selected time range",
            "Per line: readings stored, anomalous readings and their share, devices "
            "reporting and devices with anomalies.",
            [
                target(
                    "A",
                    f'SELECT count({Q.SCORE}) AS "readings" FROM {Q.READING} WHERE {LINES} '
                    f"GROUP BY {Q.LINE}",
                    fmt="table",
                ),
                target(
                    "B",
                    f'SELECT count({Q.SCORE}) AS "anomalous" FROM {Q.READING} '
                    f"WHERE {anomalous} GROUP BY {Q.LINE}",
                    fmt="table",
                ),
                target("C", per_device("devices", LINES), fmt="table"),
                target("D", per_device("devices with anomalies", anomalous), fmt="table"),
            ],
            [
                {"id": "merge", "options": {}},
                {
                    "id": "calculateField",
                    "options": {
                        "mode": "binary",
                        "binary": {"left": "anomalous", "operator": "/", "right": "readings"},
                        "alias": "anomalous share",
                        "replaceFields": False,
                    },
                },
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "indexByName": {
                            schema.LINE: 0,
                            "readings": 1,
                            "anomalous": 2,
                            "anomalous share": 3,
                            "devices": 4,
                            "devices with anomalies": 5,
                        },
                    },
                },
            ],
            size=(24, 8),
        ),
    ]
    panels[-1]["fieldConfig"]["overrides"] = [by_name("anomalous share", ("unit", "percentunit"))]
    panels.append(alert_history(LINES))
    return dashboard(
        "factory-overview",
        "Factory: plant overview",
        "Per production line: throughput, anomalies and the devices behind them.",
        panels,
        [
            query_variable(
                "line",
                "Line",
                f"SHOW TAG VALUES FROM {Q.READING} WITH KEY = {Q.LINE}",
                multi=True,
                include_all=True,
            )
        ],
    )


def alert_history(where: str) -> Json:
    """Every transition of every alert (``alert_event``), newest first."""
    columns = ", ".join(
        (Q.LINE, Q.DEVICE, Q.KIND, Q.FAULT, Q.EVENT, Q.ALERT_ID, Q.SCORE, Q.BY, Q.NOTE)
    )
    return table(
        "Alert history",
        "Every alert transition in the time range, newest first: firing, repeated, "
        "acknowledged (by whom, with their note), resolved, and silenced (held back by a "
        "maintenance silence). The alert id is the one the messages, the API and the "
        "web page's labels use.",
        [
            target(
                "A",
                f"SELECT {columns} FROM {Q.ALERT_EVENT} WHERE {where} ORDER BY time DESC LIMIT 500",
                fmt="table",
            )
        ],
        [],
        size=(24, 9),
    )


# --- device view -----------------------------------------------------------------------


# The model's threshold is not stored; every reading at or above it is flagged, so the
# lowest flagged score in the range (any device, same model) is the threshold or just
# above it. "Config from query results" turns it into the score's threshold line.
THRESHOLD_QUERY = (
    f'SELECT min({Q.SCORE}) AS "threshold" FROM {Q.READING} '
    f"WHERE $timeFilter AND {Q.IS_ANOMALY} = true"
)


def _threshold_from(ref: str, field: str) -> Json:
    return {
        "id": "configFromData",
        "options": {
            "configRefId": ref,
            "mappings": [{"fieldName": "threshold", "handlerKey": "threshold1"}],
            "applyTo": {"id": "byName", "options": field},
        },
    }


SCORE_STYLE = by_name(
    "anomaly score",
    ("custom.axisPlacement", "right"),
    ("custom.axisLabel", "anomaly score"),
    ("min", 0),
    ("max", 1),
    ("unit", "none"),
    ("decimals", 2),
    ("color", {"mode": "fixed", "fixedColor": "orange"}),
    ("custom.thresholdsStyle", {"mode": "dashed"}),
    (
        "thresholds",
        {"mode": "absolute", "steps": [_step("transparent", None), _step("red", 0.5)]},
    ),
)


def _measure_panel(field: str, label: str, unit: str) -> Json:
    return timeseries(
        f"{label.capitalize()} and anomaly score",
        f"{label.capitalize()} (left axis) with the model's anomaly score (right axis, "
        "0-1, highest per interval) and the alert threshold as a dashed red line (the "
        "lowest score flagged anomalous in the range; no line while nothing was flagged).",
        [
            target(
                "A",
                f"SELECT mean({quote_ident(field)}) FROM {Q.READING} WHERE {DEVICE} "
                "GROUP BY time($__interval) fill(none)",
                label,
            ),
            target(
                "B",
                f"SELECT max({Q.SCORE}) FROM {Q.READING} WHERE {DEVICE} "
                "GROUP BY time($__interval) fill(none)",
                "anomaly score",
            ),
            target("C", THRESHOLD_QUERY, "threshold"),
        ],
        unit,
        min_value=None,
        overrides=[SCORE_STYLE],
        transformations=[_threshold_from("C", "anomaly score")],
        size=(24, 8),
    )


PERIOD_EVENTS = "|".join((schema.EVENT_FIRING, schema.EVENT_ACKNOWLEDGED, schema.EVENT_RESOLVED))


def device_view() -> Json:
    anomalous = f"{DEVICE} AND {Q.IS_ANOMALY} = true"
    panels = [
        stat(
            "Anomaly score (latest)",
            "The latest reading's score; red at or above the threshold.",
            [
                target("A", f"SELECT last({Q.SCORE}) FROM {Q.READING} WHERE {DEVICE}", "score"),
                target("C", THRESHOLD_QUERY, "threshold"),
            ],
            steps=[_step("green", None), _step("red", 0.5)],
            transformations=[_threshold_from("C", "score")],
        ),
        stat(
            "Readings",
            "Readings stored for this device in the time range.",
            [target("A", f"SELECT count({Q.SCORE}) FROM {Q.READING} WHERE {DEVICE}", "readings")],
        ),
        stat(
            "Anomalous readings",
            "Readings flagged anomalous in the time range.",
            [
                target(
                    "A", f"SELECT count({Q.SCORE}) FROM {Q.READING} WHERE {anomalous}", "anomalous"
                )
            ],
        ),
        stat(
            "Missing readings (sequence gaps)",
            "From the nodes' sequence numbers: expected minus received. Non-zero means "
            "readings were lost between sensor and broker (a node restart resets seq and "
            "shows as a jump).",
            [
                target(
                    "A",
                    f"SELECT spread({Q.SEQ}) + 1 - count({Q.SEQ}) FROM {Q.READING} WHERE {DEVICE}",
                    "missing",
                )
            ],
        ),
        _measure_panel("temperature_c", "temperature", "celsius"),
        _measure_panel("humidity_pct", "humidity", "humidity"),
        _measure_panel("sound_db", "sound level", "dB"),
    ]
    annotations = [
        {
            "name": "Anomalies",
            "datasource": DS,
            "enable": True,
            "hide": False,
            "iconColor": "red",
            # One marker per minute with anomalous readings, not one per reading.
            "query": f'SELECT count({Q.SCORE}) AS "anomalous readings" FROM {Q.READING} '
            f"WHERE {anomalous} GROUP BY time(1m) fill(none)",
            "titleColumn": "",
            "textColumn": "",
            "tagsColumn": "",
        },
        {
            # Where alerts started, were acknowledged and ended: the alert periods.
            "name": "Alerts",
            "datasource": DS,
            "enable": True,
            "hide": False,
            "iconColor": "orange",
            "query": f"SELECT {Q.ALERT_ID}, {Q.KIND}, {Q.EVENT}, {Q.BY} FROM {Q.ALERT_EVENT} "
            f"WHERE {DEVICE} AND {Q.EVENT} =~ /^({PERIOD_EVENTS})$/",
            "titleColumn": "",
            "textColumn": schema.ALERT_ID,
            "tagsColumn": f"{schema.KIND},{schema.EVENT}",
        },
    ]
    panels.append(alert_history(DEVICE))
    return dashboard(
        "factory-device",
        "Factory: device",
        "One sensor node: its three measurements against the model's anomaly score.",
        panels,
        [
            query_variable("line", "Line", f"SHOW TAG VALUES FROM {Q.READING} WITH KEY = {Q.LINE}"),
            query_variable(
                "device",
                "Device",
                f"SHOW TAG VALUES FROM {Q.READING} WITH KEY = {Q.DEVICE} "
                f"WHERE {Q.LINE} =~ /^$line$/",
            ),
        ],
        annotations,
    )


# --- gateway health --------------------------------------------------------------------


def _per_gateway(select: str, extra_where: str = "") -> str:
    return (
        f"SELECT {select} FROM {Q.HEALTH} WHERE {GATEWAYS}{extra_where} "
        f"GROUP BY time($__interval), {Q.GATEWAY} fill(none)"
    )


def gateway_health() -> Json:
    panels = [
        timeseries(
            "Throughput",
            "Messages received from the broker and readings stored in InfluxDB, per "
            "second. Stored lagging received means InfluxDB is slow or away (the spool "
            "and the broker hold the difference).",
            [
                target(
                    "A",
                    _per_gateway('non_negative_derivative(last("received"), 1s)'),
                    f"{TAG_GATEWAY} received",
                ),
                target(
                    "B",
                    _per_gateway('non_negative_derivative(last("stored"), 1s)'),
                    f"{TAG_GATEWAY} stored",
                ),
            ],
            "reqps",
        ),
        timeseries(
            "InfluxDB write latency",
            "Mean time per write to InfluxDB (intervals without writes are left out).",
            [
                target(
                    "A",
                    _per_gateway('mean("write_latency_ms")', ' AND "write_latency_ms" > 0'),
                    TAG_GATEWAY,
                )
            ],
            "ms",
        ),
        timeseries(
            "Dead letters and write problems per minute",
            "Rejected messages (dead-lettered to factory/deadletter/...), failed writes "
            "(retried) and points InfluxDB refused (dropped).",
            [
                target(
                    "A",
                    _per_gateway('non_negative_derivative(last("rejected"), 1m)'),
                    f"{TAG_GATEWAY} dead letters",
                ),
                target(
                    "B",
                    _per_gateway('non_negative_derivative(last("write_errors"), 1m)'),
                    f"{TAG_GATEWAY} write errors",
                ),
                target(
                    "C",
                    _per_gateway('non_negative_derivative(last("points_dropped"), 1m)'),
                    f"{TAG_GATEWAY} points dropped",
                ),
            ],
            "none",
        ),
        timeseries(
            "Queues and spool",
            "Messages waiting to be scored, batches waiting to be written, readings not "
            "yet acknowledged to the broker, and points in the on-disk spool (non-zero "
            "while InfluxDB is away).",
            [
                target(
                    "A", _per_gateway('max("intake_queue_depth")'), f"{TAG_GATEWAY} intake queue"
                ),
                target("B", _per_gateway('max("write_queue_depth")'), f"{TAG_GATEWAY} write queue"),
                target("C", _per_gateway('max("unacked")'), f"{TAG_GATEWAY} unacknowledged"),
                target("D", _per_gateway('max("spool_points")'), f"{TAG_GATEWAY} spooled points"),
            ],
            "none",
        ),
        timeseries(
            "Alerts published per minute",
            "Alert messages (firing, resolved and repeats) on factory/alerts/...",
            [
                target(
                    "A",
                    _per_gateway('non_negative_derivative(last("alerts"), 1m)'),
                    TAG_GATEWAY,
                )
            ],
            "none",
        ),
        timeseries(
            "Scoring batch size",
            "Mean readings per model call: larger batches mean a busier gateway.",
            [target("A", _per_gateway('mean("batch_size_avg")'), TAG_GATEWAY)],
            "none",
        ),
        table(
            "Model versions",
            "Each gateway and model version seen in the time range, with the time of "
            "its last health report (the newest row is the model in use).",
            [
                target(
                    "A",
                    f'SELECT last("received") AS "received (total)" FROM {Q.HEALTH} '
                    f"WHERE {GATEWAYS} GROUP BY {Q.GATEWAY}, {Q.MODEL_VERSION}",
                    fmt="table",
                )
            ],
            [
                {
                    "id": "organize",
                    "options": {
                        "renameByName": {"Time": "last report"},
                        "indexByName": {
                            schema.GATEWAY: 0,
                            schema.MODEL_VERSION: 1,
                            "Time": 2,
                            "received (total)": 3,
                        },
                    },
                },
                {
                    "id": "sortBy",
                    "options": {"sort": [{"field": "last report", "desc": True}]},
                },
            ],
            size=(24, 6),
        ),
    ]
    return dashboard(
        "factory-gateway",
        "Factory: gateway health",
        "The edge gateway's own health points (measurement gateway).",
        panels,
        [
            query_variable(
                "gateway",
                "Gateway",
                f"SHOW TAG VALUES FROM {Q.HEALTH} WITH KEY = {Q.GATEWAY}",
                multi=True,
                include_all=True,
            )
        ],
        time_from="now-3h",
    )


DASHBOARDS = {
    "plant-overview.json": plant_overview,
    "device.json": device_view,
    "gateway-health.json": gateway_health,
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote {OUT / name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
