"""The whole loop against real services: a fault in the plant reaches people, people
acknowledge and label it, and retraining on that history learns from them.

Real Mosquitto, influxd, gateway and notifier processes, a real HTTP endpoint and a
real SMTP server (STARTTLS, AUTH); the API through Flask's test client on the same
broker and database.  The history is tests/labelled_history.py's plant: press A runs a
new recipe the active model flags (its alerts are false alarms), press B has one
genuine humidity excursion (a real fault), press C runs normally.

1. The first hour or so of history goes through the gateway until A's first alert
   fires.  The webhook fails (500) at first; the notifier is SIGKILLed while it retries
   and started again; then the endpoint recovers: the alert reaches the webhook and the
   mailbox exactly once each.
2. The shift manager acknowledges it through the API: the gateway publishes the
   acknowledgement and the notifier says so.
3. The rest of the history goes through.  Through the API, A's alerts are labelled false
   alarms and B's real fault is confirmed.
4. ``python -m model retrain`` on the stored history promotes a candidate; on the
   labelled history (``python -m backtest --influx-url``) it raises none of A's alerts
   again, the acknowledged one included, and still catches B's fault.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.app import create_app
from api.config import AlertsConfig, ApiConfig, InfluxQueryConfig, ModelConfig
from common.mqtt import MqttSettings
from contract import encode_reading, reading_topic
from contract.alerting import FALSE_ALARM, REAL_FAULT, alert_id, idempotency_key
from devstack.influxdb import query
from devstack.process import wait_until
from gateway.detection import PROCESS_ANOMALY
from model.scorer import load_scorer
from tests.conftest import TEST_DB
from tests.helpers import Collector, publish_all, python_module, unique
from tests.labelled_history import NS, build_history, replay_scenario, train_active_model
from tests.notify_servers import (
    SMTP_PASSWORD,
    WebhookServer,
    email_channel,
    route,
    webhook_channel,
)

pytestmark = pytest.mark.integration

NO_DEADMAN = "[sensor_faults]\ndeadman_s = 0.0\n"  # the history arrives at full speed
MANAGER = "shift manager"


@pytest.fixture(scope="module")
def active_models(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("loop-models")
    train_active_model(models)
    return models


def iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def messages(rec, rows) -> list[tuple[str, bytes]]:
    out = []
    for i in rows:
        values = dict(zip(rec.fields, rec.values[i].tolist(), strict=True))
        topic = reading_topic(str(rec.lines[i]), str(rec.devices[i]))
        out.append((topic, encode_reading(values, ts=int(rec.ts_ns[i]) / 1e9)))
    return out


def events(url: str, line: str, event: str) -> list[list]:
    series = query(
        url,
        f'SELECT "alert_id", "device", "kind" FROM alert_event '
        f"WHERE line = '{line}' AND event = '{event}'",
        TEST_DB,
    )
    return series[0]["values"] if series else []


def delivered(webhook: WebhookServer, key: str) -> list:
    return [p for p in webhook.matching() if p.key == key and p.status == 200]


def test_fault_to_people_to_labels_to_a_better_model(
    tmp_path, mosquitto, influxdb, active_models, start_gateway, start_notifier, webhook, smtp
):
    line = unique("loop")
    # Three hours of history ending ten minutes ago (the gateway takes up to 30 days old).
    start_s = int(time.time()) - 3 * 3600 - 600
    scenario = build_history(line, start_s=start_s)
    rec = scenario.recording
    _, periods = replay_scenario(scenario, load_scorer(active_models))
    pattern = scenario.key("pattern")
    first = next(p for p in periods if p.device == pattern and p.kind == PROCESS_ANOMALY)
    device_a = scenario.devices["pattern"]
    first_id = alert_id(line, device_a, PROCESS_ANOMALY, first.start_ns)

    start_gateway(models=active_models, extra=NO_DEADMAN)
    password = tmp_path / "smtp-password"
    password.write_text(SMTP_PASSWORD)
    webhook.mode = 500
    channels = webhook_channel("chat", webhook.url()) + email_channel("mail", smtp, password)
    routes = route("loop", ["chat", "mail"], to=["shift@plant.test"], line=line, device=device_a)
    notifier = start_notifier(channels + routes)

    alerts = Collector(mosquitto.port, [f"factory/alerts/{line}/#"])
    try:
        # 1. Up to A's first alert.
        head = [i for i in range(len(rec)) if rec.ts_ns[i] <= first.start_ns]
        publish_all(mosquitto.port, messages(rec, head))
        (fired,) = alerts.wait_for(
            lambda m: m.json()["event"] == "firing" and m.json()["device"] == device_a, 30
        )
        assert fired.json()["alert_id"] == first_id
        key = idempotency_key(first_id, "firing")
        # The endpoint fails; the notifier retries, dies, comes back.
        webhook.wait_for(lambda p: p.key == key and p.status == 500, count=2)
        notifier.kill()
        webhook.mode = "ok"
        notifier.start()
        wait_until(lambda: delivered(webhook, key), 30, "the webhook delivery after recovery")
        mails = smtp.wait_for(lambda m: m["X-Idempotency-Key"] == key)
        assert len(mails) == 1 and mails[0]["To"] == "shift@plant.test"

        # 2. The shift manager acknowledges it through the API.
        api_cfg = ApiConfig(
            model=ModelConfig(path=str(active_models / "current"), check_interval_s=0),
            influx=InfluxQueryConfig(url=influxdb.url, database=TEST_DB, timeout_s=5.0),
            mqtt=MqttSettings(host="127.0.0.1", port=mosquitto.port),
            alerts=AlertsConfig(ack_timeout_s=5.0),
        )
        api = create_app(api_cfg).test_client()
        resp = api.post(f"/api/alerts/{first_id}/ack", json={"by": MANAGER, "note": "on it"})
        assert resp.status_code == 202, resp.get_json()
        (acked,) = alerts.wait_for(lambda m: m.json()["event"] == "acknowledged")
        assert acked.json()["alert_id"] == first_id
        ack_key = idempotency_key(first_id, "acknowledged")
        wait_until(lambda: delivered(webhook, ack_key), 30, "the acknowledgement notification")
        (said,) = delivered(webhook, ack_key)
        assert MANAGER in said.body["text"]

        # 3. The rest of the history.
        tail = [i for i in range(len(rec)) if rec.ts_ns[i] > first.start_ns]
        publish_all(mosquitto.port, messages(rec, tail), timeout_s=120)
        fired_total = len(periods)
        wait_until(
            lambda: len(events(influxdb.url, line, "firing")) >= fired_total,
            60,
            f"{fired_total} alerts in the history",
        )
    finally:
        alerts.close()
    # Each transition reached the webhook once, however often it was tried.
    ok = [p.key for p in webhook.matching() if p.status == 200]
    assert len(ok) == len(set(ok)) and ok.count(key) == 1

    listed = api.get("/api/alerts", query_string={"line": line, "hours": 6}).get_json()["alerts"]
    by_id = {a["alert_id"]: a for a in listed}
    assert by_id[first_id]["acknowledged_by"] == MANAGER
    for alert in listed:
        if alert["kind"] != PROCESS_ANOMALY:
            continue
        if alert["device"] == device_a:
            label = {"label": FALSE_ALARM, "by": MANAGER, "note": "new recipe R7 runs hot"}
        else:
            started = datetime.fromisoformat(alert["started"]).timestamp() * NS
            if not scenario.fault_start_ns - 60 * NS <= started <= scenario.fault_end_ns:
                continue
            label = {"label": REAL_FAULT, "by": MANAGER, "fault_type": scenario.fault_kind}
        resp = api.post(f"/api/alerts/{alert['alert_id']}/label", json=label)
        assert resp.status_code == 201, resp.get_json()

    # 4. Retrain on that history, then judge both models on it.
    models = tmp_path / "models"
    shutil.copytree(active_models, models, symlinks=True)
    before = (models / "current").resolve().name
    out = tmp_path / "retrain.json"
    window = ("--since", iso(scenario.since_ns), "--until", iso(scenario.until_ns))
    result = python_module(
        "model", "retrain", "--influx-url", influxdb.url, "--database", TEST_DB,
        "--line", line, *window, "--models-dir", str(models), "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["promoted"] and not report["forced"], result.stdout
    after = (models / "current").resolve().name
    assert after != before

    judged = tmp_path / "backtest.json"
    result = python_module(
        "backtest", "--influx-url", influxdb.url, "--database", TEST_DB, "--line", line,
        *window, "--model", f"old={models / before}", "--model", f"new={models / after}",
        "--json", str(judged),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(judged.read_text())["models"]
    old, new = figures["old"]["labels"], figures["new"]["labels"]
    assert old["alerts_on_false_alarms"] > 0 and new["alerts_on_false_alarms"] == 0
    assert new["real_faults_caught"] == old["real_faults_caught"] == 1
    assert notifier.stop() == 0
