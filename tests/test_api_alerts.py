"""Alerts in the API: list them from the gateway's history, acknowledge them (MQTT) and
label them (InfluxDB).  Real influxd and Mosquitto; the history is written point by
point with the contract's encoder, as the gateway writes it, into a database of its own."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path

import orjson
import pytest
import urllib3

from api.app import create_app
from api.config import AlertsConfig, ApiConfig, InfluxQueryConfig, ModelConfig
from common.mqtt import MqttSettings
from contract.alerting import (
    ACKNOWLEDGED,
    FALSE_ALARM,
    FIRING,
    REAL_FAULT,
    REPEATED,
    RESOLVED,
    SILENCED,
    ack_payload,
    alert_id,
)
from contract.lineprotocol import encode_point
from contract.schema import (
    ALERT_EVENT,
    ALERT_ID,
    ALERT_LABEL,
    BY,
    DEVICE,
    ENDED_NS,
    EVENT,
    FAULT,
    HELD,
    KIND,
    LINE,
    NOTE,
    SCORE,
    STARTED_NS,
)
from contract.topics import ack_topic
from devstack.influxdb import query
from devstack.process import free_port
from tests.helpers import Collector, unique
from tests.test_api_server import ApiServer

pytestmark = pytest.mark.integration

KEY = "alerts-key-7c2e"
HOUR = 3600 * 10**9
NOW = time.time_ns()
PROCESS = "process_anomaly"
SENSOR = "sensor_fault"


@dataclasses.dataclass(frozen=True)
class Stored:
    """One alert written into the history: its id and when it started."""

    id: str
    line: str
    device: str
    started_ns: int


class History:
    """Writes alert_event points as the gateway does (contract names and encoder)."""

    def __init__(self, url: str, database: str):
        self.url = url
        self.database = database
        self.lines: list[str] = []

    def alert(self, line, device, kind, started_ns, events, fault="") -> Stored:
        """``events``: (event, offset from the start in ns, extra fields)."""
        ident = alert_id(line, device, kind, started_ns, fault)
        for event, offset, extra in events:
            tags = {LINE: line, DEVICE: device, KIND: kind, FAULT: fault, EVENT: event}
            fields = {ALERT_ID: ident, STARTED_NS: started_ns, **extra}
            self.lines.append(encode_point(ALERT_EVENT, tags, fields, started_ns + offset))
        return Stored(ident, line, device, started_ns)

    def write(self) -> None:
        resp = urllib3.request(
            "POST",
            f"{self.url}/write?db={self.database}&precision=ns",
            body="\n".join(self.lines).encode(),
        )
        assert resp.status == 204, resp.data


@dataclasses.dataclass(frozen=True)
class Scenario:
    database: str
    line: str
    acked: Stored  # press-a, started 2 h ago, repeated, acknowledged, still firing
    stuck: Stored  # press-b sensor fault, started 3 h ago, resolved
    old_firing: Stored  # press-a, started 50 h ago, acknowledged 49 h ago, no event since
    old_resolved: Stored  # press-a, started 41 h ago, resolved 40 h ago
    silenced: Stored  # press-c, started 1 h ago under a silence, resolved (held back)
    other_line: Stored


@pytest.fixture(scope="module")
def scenario(influxdb) -> Scenario:
    database = unique("alerts").replace("-", "_")
    influxdb.create_database(database)
    line = unique("line")
    h = History(influxdb.url, database)
    acked = h.alert(line, "press-a", PROCESS, NOW - 2 * HOUR, [
        (FIRING, 0, {SCORE: 0.91}),
        (REPEATED, HOUR, {SCORE: 0.97}),
        (ACKNOWLEDGED, HOUR + HOUR // 2, {BY: "ana", NOTE: "on it"}),
    ])  # fmt: skip
    stuck = h.alert(line, "press-b", SENSOR, NOW - 3 * HOUR, [
        (FIRING, 0, {SCORE: 1.0}),
        (RESOLVED, HOUR // 6, {}),
    ], fault="stuck")  # fmt: skip
    old_firing = h.alert(line, "press-a", PROCESS, NOW - 50 * HOUR, [
        (FIRING, 0, {SCORE: 0.7}),
        (ACKNOWLEDGED, HOUR, {BY: "bo"}),
    ])  # fmt: skip
    old_resolved = h.alert(line, "press-a", PROCESS, NOW - 41 * HOUR, [
        (FIRING, 0, {SCORE: 0.8}),
        (RESOLVED, HOUR, {}),
    ])  # fmt: skip
    silenced = h.alert(line, "press-c", PROCESS, NOW - HOUR, [
        (SILENCED, 0, {HELD: FIRING, SCORE: 0.88}),
        (SILENCED, HOUR // 2, {HELD: RESOLVED}),
    ])  # fmt: skip
    other_line = h.alert(unique("line"), "press-a", PROCESS, NOW - HOUR, [
        (FIRING, 0, {SCORE: 0.9}),
    ])  # fmt: skip
    h.write()
    return Scenario(database, line, acked, stuck, old_firing, old_resolved, silenced, other_line)


def _cfg(models_dir: Path, influx_url: str, database: str, mqtt_port: int, **changes):
    base = ApiConfig(
        model=ModelConfig(path=str(models_dir / "current"), check_interval_s=0),
        influx=InfluxQueryConfig(url=influx_url, database=database, timeout_s=5.0),
        mqtt=MqttSettings(host="127.0.0.1", port=mqtt_port),
        alerts=AlertsConfig(ack_timeout_s=5.0),
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def make_client(models_dir, influxdb, mosquitto, scenario):
    def _make(**changes):
        cfg = _cfg(models_dir, influxdb.url, scenario.database, mosquitto.port, **changes)
        return create_app(cfg).test_client()

    return _make


@pytest.fixture(scope="module")
def client(make_client):
    return make_client()


@pytest.fixture
def acks(mosquitto):
    collector = Collector(mosquitto.port, ["factory/ack/#"])
    yield collector
    collector.close()


def listed(client, **params) -> list[dict]:
    resp = client.get("/api/alerts", query_string=params)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["alerts"]


def ids(alerts: list[dict]) -> list[str]:
    return [a["alert_id"] for a in alerts]


def error_of(resp) -> dict:
    assert resp.is_json, resp.data
    return resp.get_json()["error"]


def post(client, path: str, body, **headers):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, data=data, content_type="application/json", headers=headers)


def stored_labels(influxdb, scenario, alert: Stored) -> list[dict]:
    series = query(
        influxdb.url,
        f"SELECT * FROM {ALERT_LABEL} WHERE {ALERT_ID} = '{alert.id}'",
        scenario.database,
    )
    if not series:
        return []
    columns = series[0]["columns"]
    return [dict(zip(columns, row, strict=True)) for row in series[0]["values"]]


# --- GET /api/alerts -----------------------------------------------------------------------


def test_alerts_are_listed_newest_first_with_their_state(client, scenario):
    s = scenario
    alerts = listed(client, line=s.line)
    # 24 h: everything with an event in the window, plus the old alert still firing.
    assert ids(alerts) == [s.silenced.id, s.acked.id, s.stuck.id, s.old_firing.id]
    by_id = {a["alert_id"]: a for a in alerts}

    acked = by_id[s.acked.id]
    assert acked["line"] == s.line and acked["device"] == "press-a"
    assert (acked["kind"], acked["fault"], acked["state"]) == (PROCESS, None, FIRING)
    assert acked["last_event"] == ACKNOWLEDGED
    assert (acked["acknowledged_by"], acked["note"]) == ("ana", "on it")
    assert acked["acknowledged_at"] == acked["last_event_at"]
    assert acked["peak_score"] == 0.97 and acked["events"] == 3
    assert acked["resolved_at"] is None and acked["label"] is None
    assert acked["started"].endswith("Z") and acked["started"].startswith(
        time.strftime("%Y-%m-%dT", time.gmtime(s.acked.started_ns / 1e9))
    )

    stuck = by_id[s.stuck.id]
    assert (stuck["kind"], stuck["fault"], stuck["state"]) == (SENSOR, "stuck", RESOLVED)
    assert stuck["resolved_at"] == stuck["last_event_at"] and stuck["acknowledged_by"] is None

    silenced = by_id[s.silenced.id]
    # The held-back resolution is still the alert's end.
    assert silenced["state"] == RESOLVED and silenced["silenced"] is True
    assert silenced["last_event"] == SILENCED and silenced["peak_score"] == 0.88

    old = by_id[s.old_firing.id]
    assert old["state"] == FIRING and old["acknowledged_by"] == "bo"


def test_alerts_filter_by_state_window_device_and_line(client, scenario):
    s = scenario
    assert ids(listed(client, line=s.line, state="firing")) == [s.acked.id, s.old_firing.id]
    assert ids(listed(client, line=s.line, state="resolved")) == [s.silenced.id, s.stuck.id]
    assert ids(listed(client, line=s.line, state="resolved", hours=48)) == [
        s.silenced.id, s.stuck.id, s.old_resolved.id,
    ]  # fmt: skip
    assert ids(listed(client, line=s.line, device="press-b")) == [s.stuck.id]
    assert ids(listed(client, line=s.line, hours=1, state="resolved")) == [s.silenced.id]
    everything = ids(listed(client))
    assert s.other_line.id in everything and s.acked.id in everything
    assert ids(listed(client, line="o'brien\"")) == []  # quoted, not an InfluxQL error


def test_alert_list_is_bounded(make_client, scenario):
    body = make_client(alerts=AlertsConfig(max_alerts=2)).get(
        "/api/alerts", query_string={"line": scenario.line}
    )
    assert body.status_code == 200
    answer = body.get_json()
    assert answer["count"] == 2 and answer["truncated"] is True
    assert ids(answer["alerts"]) == [scenario.silenced.id, scenario.acked.id]


@pytest.mark.parametrize(
    ("query_string", "field"),
    [("hours=0", "hours"), ("hours=abc", "hours"), ("hours=100000", "hours"),
     ("state=open", "state"), ("line=a/b", "line"), ("device=has space", "device")],
)  # fmt: skip
def test_alert_list_rejects_bad_parameters(client, query_string, field):
    resp = client.get(f"/api/alerts?{query_string}")
    assert resp.status_code == 422
    assert error_of(resp)["code"] == "bad_parameter" and error_of(resp)["field"] == field


def test_influx_down_is_503(make_client, scenario):
    down = make_client(influx=InfluxQueryConfig(url=f"http://127.0.0.1:{free_port()}"))
    resp = down.get("/api/alerts")
    assert resp.status_code == 503 and error_of(resp)["code"] == "influx_unavailable"
    resp = post(down, f"/api/alerts/{scenario.acked.id}/label", {"label": REAL_FAULT, "by": "x"})
    assert resp.status_code == 503 and error_of(resp)["code"] == "influx_unavailable"


# --- POST /api/alerts/<id>/ack -------------------------------------------------------------


def test_ack_publishes_the_contract_payload_on_the_contract_topic(client, scenario, acks):
    alert = scenario.acked
    resp = post(client, f"/api/alerts/{alert.id}/ack", {"by": " cy ", "note": "bearing noise"})
    assert resp.status_code == 202, resp.get_json()
    topic = ack_topic(alert.line, alert.device)
    assert resp.get_json() == {
        "alert_id": alert.id, "line": alert.line, "device": alert.device,
        "topic": topic, "status": "sent",
    }  # fmt: skip
    # The broker PUBACKed before the answer; the subscriber gets exactly that message.
    (message,) = acks.wait_for(lambda m: m.topic == topic)
    assert message.payload == ack_payload(alert.id, "cy", "bearing noise")
    assert message.json() == {"alert_id": alert.id, "by": "cy", "note": "bearing noise"}
    assert not message.retain

    # Without a note the payload has none either.
    assert post(client, f"/api/alerts/{alert.id}/ack", {"by": "cy"}).status_code == 202
    messages = acks.wait_for(lambda m: m.topic == topic, count=2)
    assert messages[1].payload == ack_payload(alert.id, "cy")


def test_ack_of_an_alert_still_firing_from_before_the_window(client, scenario, acks):
    old = scenario.old_firing
    assert post(client, f"/api/alerts/{old.id}/ack", {"by": "dee"}).status_code == 202
    acks.wait_for(lambda m: m.topic == ack_topic(old.line, old.device))


def test_ack_refusals(client, make_client, scenario, acks):
    s = scenario
    unknown = "0123456789abcdef"
    cases = [
        ("/api/alerts/XYZ/ack", {"by": "ann"}, 422, "bad_field", "alert_id"),
        (f"/api/alerts/{s.acked.id.upper()}/ack", {"by": "ann"}, 422, "bad_field", "alert_id"),
        (f"/api/alerts/{s.acked.id}/ack", {}, 422, "missing_field", "by"),
        (f"/api/alerts/{s.acked.id}/ack", {"by": "x" * 65}, 422, "bad_field", "by"),
        (f"/api/alerts/{s.acked.id}/ack", {"by": "  "}, 422, "bad_field", "by"),
        (f"/api/alerts/{s.acked.id}/ack", {"by": "a", "note": 5}, 422, "bad_field", "note"),
        (f"/api/alerts/{s.acked.id}/ack", {"by": "a", "note": "n" * 501}, 422, "bad_field", "note"),
        (f"/api/alerts/{s.acked.id}/ack", ["by"], 422, "not_object", None),
        (f"/api/alerts/{s.acked.id}/ack", b"{by", 400, "not_json", None),
        (f"/api/alerts/{unknown}/ack", {"by": "ann"}, 404, "unknown_alert", "alert_id"),
        (f"/api/alerts/{s.stuck.id}/ack", {"by": "ann"}, 409, "already_resolved", "alert_id"),
        (f"/api/alerts/{s.silenced.id}/ack", {"by": "ann"}, 409, "already_resolved", "alert_id"),
    ]
    for path, body, status, code, field in cases:
        resp = post(client, path, body)
        assert resp.status_code == status, (path, body, resp.get_json())
        err = error_of(resp)
        assert (err["code"], err.get("field")) == (code, field), (path, body, err)
    resp = client.post(f"/api/alerts/{s.acked.id}/ack", data="by=ann", content_type="text/plain")
    assert resp.status_code == 415
    # The lookback is configurable: with one day, the 50-hour-old alert is unknown.
    short = make_client(alerts=AlertsConfig(lookback_days=1))
    resp = post(short, f"/api/alerts/{s.old_firing.id}/ack", {"by": "ann"})
    assert resp.status_code == 404 and "1 days" in error_of(resp)["message"]
    # None of the refused requests published anything.
    assert acks.matching(lambda m: m.topic.startswith(f"factory/ack/{s.line}/")) == []


def test_ack_with_the_broker_down_is_503(make_client, scenario):
    down = make_client(mqtt=MqttSettings(host="127.0.0.1", port=free_port()))
    resp = post(down, f"/api/alerts/{scenario.acked.id}/ack", {"by": "ann"})
    assert resp.status_code == 503
    err = error_of(resp)
    assert err["code"] == "broker_unavailable" and "unreachable" in err["message"]


# --- POST /api/alerts/<id>/label -----------------------------------------------------------


def test_label_is_stored_read_back_and_replaced(client, scenario, influxdb):
    alert = scenario.stuck
    path = f"/api/alerts/{alert.id}/label"
    first = post(client, path, {"label": FALSE_ALARM, "by": "eve", "note": "cable loose"})
    assert first.status_code == 201, first.get_json()
    body = first.get_json()
    assert body["alert_id"] == alert.id and body["state"] == RESOLVED
    label = body["label"]
    assert (label["label"], label["by"], label["note"], label["fault_type"]) == (
        FALSE_ALARM, "eve", "cable loose", None,
    )  # fmt: skip
    assert label["labelled_at"].endswith("Z")
    listed_stuck = next(a for a in listed(client, line=scenario.line) if a["alert_id"] == alert.id)
    assert listed_stuck["label"] == label

    (point,) = stored_labels(influxdb, scenario, alert)
    assert point["time"] == alert.started_ns  # at the alert's start: one point per alert
    assert (point[LINE], point[DEVICE], point[KIND], point[FAULT]) == (
        alert.line, alert.device, SENSOR, "stuck",
    )  # fmt: skip
    assert point[STARTED_NS] == alert.started_ns
    assert point[ENDED_NS] == alert.started_ns + HOUR // 6  # the resolved event's time

    second = post(client, path, {"label": REAL_FAULT, "by": "fay", "fault_type": "stuck sensor"})
    assert second.status_code == 201
    relisted = next(a for a in listed(client, line=scenario.line) if a["alert_id"] == alert.id)
    # Replaced whole: the first label's note does not survive the second.
    assert relisted["label"]["label"] == REAL_FAULT and relisted["label"]["by"] == "fay"
    assert relisted["label"]["fault_type"] == "stuck sensor" and relisted["label"]["note"] is None
    (point,) = stored_labels(influxdb, scenario, alert)
    assert point["label"] == REAL_FAULT and point[NOTE] == ""


def test_a_firing_alert_can_be_labelled(client, scenario, influxdb):
    alert = scenario.acked
    resp = post(client, f"/api/alerts/{alert.id}/label", {"label": REAL_FAULT, "by": "gus"})
    assert resp.status_code == 201 and resp.get_json()["state"] == FIRING
    (point,) = stored_labels(influxdb, scenario, alert)
    assert point[ENDED_NS] == 0 and point["fault"] is None


def test_label_refusals(client, scenario):
    path = f"/api/alerts/{scenario.acked.id}/label"
    cases = [
        (path, {"label": "maybe", "by": "a"}, 422, "bad_field", "label"),
        (path, {"by": "a"}, 422, "missing_field", "label"),
        (path, {"label": REAL_FAULT}, 422, "missing_field", "by"),
        (path, {"label": REAL_FAULT, "by": "a", "fault_type": "f" * 65}, 422, "bad_field",
         "fault_type"),
        ("/api/alerts/0123456789abcdef/label", {"label": REAL_FAULT, "by": "a"}, 404,
         "unknown_alert", "alert_id"),
        ("/api/alerts/short/label", {"label": REAL_FAULT, "by": "a"}, 422, "bad_field",
         "alert_id"),
    ]  # fmt: skip
    for url, body, status, code, field in cases:
        resp = post(client, url, body)
        assert resp.status_code == status, (url, body, resp.get_json())
        assert (error_of(resp)["code"], error_of(resp).get("field")) == (code, field)


# --- keys, documentation, metrics, page ------------------------------------------------------


def test_alert_endpoints_need_the_key(make_client, scenario):
    keyed = make_client(keys=(KEY,))
    alert = scenario.acked
    for method, path, body in [
        ("GET", "/api/alerts", None),
        ("POST", f"/api/alerts/{alert.id}/ack", {"by": "a"}),
        ("POST", f"/api/alerts/{alert.id}/label", {"label": REAL_FAULT, "by": "a"}),
    ]:
        resp = keyed.open(path, method=method, json=body)
        assert resp.status_code == 401 and error_of(resp)["code"] == "unauthorized", path
    resp = keyed.get("/api/alerts", headers={"X-API-Key": KEY})
    assert resp.status_code == 200


def test_openapi_documents_every_route_in_its_own_syntax(make_client):
    app = make_client().application
    doc = app.test_client().get("/openapi.json").get_json()
    # Flask writes a path parameter <alert_id>, OpenAPI {alert_id}.
    routes = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule)
        for r in app.url_map.iter_rules()
        if r.endpoint != "static"
    }
    assert routes == set(doc["paths"])


def test_openapi_and_metrics_know_the_alert_routes(client, scenario):
    doc = client.get("/openapi.json").get_json()
    assert {"/api/alerts", "/api/alerts/{alert_id}/ack", "/api/alerts/{alert_id}/label"} <= set(
        doc["paths"]
    )
    ack = doc["paths"]["/api/alerts/{alert_id}/ack"]["post"]
    assert {"202", "404", "409", "422", "503"} <= set(ack["responses"])
    label = doc["paths"]["/api/alerts/{alert_id}/label"]["post"]
    assert label["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "label",
        "by",
    ]
    post(client, "/api/alerts/0123456789abcdef/ack", {"by": "a"})
    assert client.get("/api/alerts").status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'api_requests_total{endpoint="alert_ack",status="404"}' in text
    assert 'api_requests_total{endpoint="alerts",status="200"}' in text
    assert "0123456789abcdef" not in text  # ids never become label values


def test_page_has_the_alerts_panel_wired_to_the_api(client):
    html = client.get("/").get_data(as_text=True)
    for name in ("alerts-panel", "alerts-body", "alert-dialog", "alert-state", "alert-by",
                 "alert-note", "alert-fault-type"):  # fmt: skip
        assert f'id="{name}"' in html, name
    js = client.get("/static/app.js").get_data(as_text=True)
    assert "/api/alerts" in js and "/ack" in js and "/label" in js
    assert "real_fault" in js and "false_alarm" in js


# --- the real server ---------------------------------------------------------------------------


def test_gunicorn_server_lists_acknowledges_and_labels(
    tmp_path, models_dir, influxdb, mosquitto, scenario, acks
):
    config = (
        f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{scenario.database}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
        "[alerts]\nack_timeout_s = 5.0\n"
    )
    server = ApiServer(tmp_path, models_dir, config, env={"API_KEYS": KEY}).start()
    try:
        key = {"X-API-Key": KEY}
        assert server.request("GET", f"/api/alerts?line={scenario.line}").status == 401
        resp = server.request("GET", f"/api/alerts?line={scenario.line}&state=firing", **key)
        assert resp.status == 200
        assert [a["alert_id"] for a in resp.json()["alerts"]] == [
            scenario.acked.id, scenario.old_firing.id,
        ]  # fmt: skip

        alert = scenario.old_firing
        resp = server.request("POST", f"/api/alerts/{alert.id}/ack", {"by": "hal"}, **key)
        assert resp.status == 202, resp.data
        (message,) = acks.wait_for(
            lambda m: m.topic == ack_topic(alert.line, alert.device) and m.json()["by"] == "hal"
        )
        assert message.payload == ack_payload(alert.id, "hal")

        body = {"label": FALSE_ALARM, "by": "hal", "note": "test run"}
        resp = server.request("POST", f"/api/alerts/{alert.id}/label", body, **key)
        assert resp.status == 201, resp.data
        resp = server.request("GET", f"/api/alerts?line={scenario.line}&hours=72", **key)
        entry = next(a for a in resp.json()["alerts"] if a["alert_id"] == alert.id)
        assert entry["label"]["label"] == FALSE_ALARM and entry["label"]["note"] == "test run"

        resp = server.request("POST", f"/api/alerts/{scenario.stuck.id}/ack", {"by": "hal"}, **key)
        assert resp.status == 409 and resp.json()["error"]["code"] == "already_resolved"
    finally:
        assert server.stop() == 0, server.process.tail() if server.process else ""
