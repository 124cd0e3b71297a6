"""The naive per-message gateway, for comparison in ``bench.bench_gateway`` only.

    python -m bench.naive_gateway --port 1883 --influx-url http://127.0.0.1:8086 \\
        --database bench_naive --model var/bench/models/current

This is the usual demo pattern, written as well as that pattern allows: a paho
subscriber (QoS 1, acknowledged when the callback returns) that for each message does
``json.loads``, one sklearn ``pipeline.score_samples`` call on a single row (the same
model's ``model.joblib`` pipeline, loaded once), one InfluxDB v1 ``/write`` over a
keep-alive connection, and publishes an alert per anomaly.  Anomaly = sklearn's own
rule (``score_samples < offset_``, what ``predict`` does).  No validation, no
batching, no dead letters: do not use it for anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import joblib
import paho.mqtt.client as mqtt
import urllib3
from paho.mqtt.enums import CallbackAPIVersion

from common.logs import setup_logging
from contract import READING_SUBSCRIPTION, alert_topic, split_reading_topic
from model.artifact import MODEL_FILE, read_metadata, resolve

log = logging.getLogger("bench.naive_gateway")
READY_MESSAGE = "naive gateway subscribed"


@dataclass(frozen=True)
class NaiveSettings:
    host: str
    port: int
    influx_url: str
    database: str
    model: Path
    client_id: str


class NaiveGateway:
    def __init__(self, settings: NaiveSettings):
        self.settings = settings
        version_dir = resolve(settings.model)
        self.features = [f["name"] for f in read_metadata(version_dir)["features"]]
        self.pipeline = joblib.load(version_dir / MODEL_FILE)["pipeline"]
        self.offset = float(self.pipeline[-1].offset_)
        query = urlencode({"db": settings.database, "precision": "ns"})
        self.write_url = f"{settings.influx_url.rstrip('/')}/write?{query}"
        self.http = urllib3.PoolManager(maxsize=1)
        self.handled = 0
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(READING_SUBSCRIPTION, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        log.info(READY_MESSAGE)

    def _on_message(self, client, userdata, msg) -> None:
        data = json.loads(msg.payload)
        line, device = split_reading_topic(msg.topic)
        values = {f: float(data[f]) for f in self.features}
        score = float(self.pipeline.score_samples([list(values.values())])[0])
        is_anomaly = score < self.offset
        ts_ns = round(data["ts"] * 1e9) if "ts" in data else time.time_ns()
        fields = ",".join(f"{k}={v!r}" for k, v in values.items())
        point = (
            f"reading,line={line},device={device},model_version=naive "
            f"{fields},score={score!r},is_anomaly={str(is_anomaly).lower()} {ts_ns}"
        )
        resp = self.http.request("POST", self.write_url, body=point.encode())
        if resp.status != 204:
            log.error("InfluxDB write failed: HTTP %d %s", resp.status, resp.data[:200])
        if is_anomaly:
            alert = {"device": device, "line": line, "ts": data.get("ts"), "score": score}
            client.publish(alert_topic(line, device), json.dumps(alert), qos=1)
        self.handled += 1

    def run(self) -> None:
        self.client.connect(self.settings.host, self.settings.port, keepalive=30)
        self.client.loop_forever()
        log.info("naive gateway stopped after %d messages", self.handled)

    def stop(self) -> None:
        self.client.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--influx-url", default="http://127.0.0.1:8086")
    parser.add_argument("--database", default="bench_naive")
    parser.add_argument("--model", type=Path, default=Path("var/bench/models/current"))
    parser.add_argument("--client-id", default="naive-gateway")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    gateway = NaiveGateway(
        NaiveSettings(
            args.host, args.port, args.influx_url, args.database, args.model, args.client_id
        )
    )
    signal.signal(signal.SIGTERM, lambda *_: gateway.stop())
    signal.signal(signal.SIGINT, lambda *_: gateway.stop())
    gateway.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
