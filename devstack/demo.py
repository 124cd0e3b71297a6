"""``make demo``: the whole system on one machine, with simulated faulty sensors.

Uses a broker on :1883 and InfluxDB on :8086 if they already answer there, otherwise
starts its own in ``var/run``.  Trains a model if there is none.  Then starts the
gateway, the API, the notification service (posting to a local webhook inbox that
writes ``var/log/notifications.log``, standing in for a chat or a phone) and the
simulated sensors, prints where to look, and on Ctrl-C stops everything it started,
newest first.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from common.logs import setup_logging
from contract import (
    ALERTS_SUBSCRIPTION,
    DEADLETTER_SUBSCRIPTION,
    READING_SUBSCRIPTION,
    reading_topic,
)
from devstack.influxdb import InfluxDB, ping
from devstack.mosquitto import Mosquitto
from devstack.process import ManagedProcess, port_open

log = logging.getLogger("demo")

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
MODELS = VAR / "models"
MQTT_PORT = 1883
INFLUX_PORT = 8086
API_PORT = 5000
INBOX_PORT = 8099
NOTIFIER_METRICS_PORT = 9110
NOTIFICATIONS = VAR / "log" / "notifications.log"


def notifier_config(path: Path = VAR / "run" / "notifier-demo.toml") -> Path:
    """The demo's notifier: every alert to the local webhook inbox."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""# Written by make demo (devstack/demo.py); the shipped one is config/notifier.toml.
page_url = "http://localhost:{API_PORT}/"
[mqtt]
host = "127.0.0.1"
port = {MQTT_PORT}
client_id = "factory-notifier-demo"
[outbox]
path = "{VAR / "notify" / "outbox.sqlite"}"
[metrics]
port = {NOTIFIER_METRICS_PORT}
[[webhook]]
name = "demo-inbox"
url = "http://127.0.0.1:{INBOX_PORT}/hook"
[[route]]
name = "everything"
channels = ["demo-inbox"]
""",
        encoding="utf-8",
    )
    return path


def _run(argv: list[str], what: str) -> None:
    import subprocess

    log.info("%s ...", what)
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode})")


def ensure_model() -> None:
    if (MODELS / "current").exists():
        log.info("model: %s", (MODELS / "current").resolve().name)
        return
    data = VAR / "data" / "sim-train.csv"
    data.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            "-m",
            "sensors.simulate",
            "--csv",
            str(data),
            "--lines",
            "2",
            "--devices",
            "4",
            "--interval",
            "1",
            "--duration",
            "21600",
            "--seed",
            "1",
            "--faults",
            "all",
        ],
        "generating 6 h of labelled simulator data",
    )
    _run(
        [
            "-m",
            "model",
            "train",
            "--csv",
            str(data),
            "--models-dir",
            str(MODELS),
            "--label-column",
            "is_anomaly",
            "--fault-column",
            "fault",
            "--timestamp-column",
            "ts",
        ],
        "training the model",
    )


def _module(name: str, args: list[str], ready, env: dict[str, str] | None = None) -> ManagedProcess:
    return ManagedProcess(
        name,
        [sys.executable, "-m", *args],
        VAR / "log" / f"{name}.log",
        ready=ready,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--train-only", action="store_true", help="only make sure a model exists")
    parser.add_argument("--devices", type=int, default=3, help="simulated devices per line")
    parser.add_argument("--lines", type=int, default=2)
    args = parser.parse_args(argv)
    setup_logging()
    ensure_model()
    if args.train_only:
        return 0

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started: list = []
    try:
        if port_open("127.0.0.1", MQTT_PORT):
            log.info("using the MQTT broker already on :%d", MQTT_PORT)
        else:
            started.append(Mosquitto(VAR / "run" / "mosquitto", MQTT_PORT).start())
        if ping(f"http://127.0.0.1:{INFLUX_PORT}"):
            log.info("using the InfluxDB already on :%d", INFLUX_PORT)
        else:
            started.append(InfluxDB(VAR / "run" / "influxdb", INFLUX_PORT).start())

        gateway = _module(
            "gateway",
            ["gateway", "--config", "config/gateway.toml"],
            ready=lambda: port_open("127.0.0.1", 9108),
            env={"GATEWAY_ID": "demo", "GATEWAY_MODEL_PATH": str(MODELS / "current")},
        )
        started.append(gateway.start(60))
        if (ROOT / "api" / "__main__.py").exists():
            api = _module(
                "api",
                ["api", "--port", str(API_PORT)],
                ready=lambda: port_open("127.0.0.1", API_PORT),
                env={"API_MODEL_PATH": str(MODELS / "current")},
            )
            started.append(api.start(60))
        inbox = _module(
            "webhook-inbox",
            ["devstack.webhook_inbox", "--port", str(INBOX_PORT), "--out", str(NOTIFICATIONS)],
            ready=lambda: port_open("127.0.0.1", INBOX_PORT),
        )
        started.append(inbox.start(30))
        notifier = _module(
            "notifier",
            ["notify", "--config", str(notifier_config())],
            ready=lambda: port_open("127.0.0.1", NOTIFIER_METRICS_PORT),
        )
        started.append(notifier.start(60))
        sensors = _module(
            "sensors",
            [
                "sensors.simulate",
                "--lines",
                str(args.lines),
                "--devices",
                str(args.devices),
                "--interval",
                "1",
                "--speed",
                "1",
                "--faults",
                "all",
                "--fault-rate",
                "12",  # fault starts per machine-hour: something to see every few minutes
            ],
            ready=lambda: True,
        )
        started.append(sensors.start())
        _print_where_to_look(api_started=(ROOT / "api" / "__main__.py").exists())
        while not stop.wait(1.0):
            dead = [p for p in started if isinstance(p, ManagedProcess) and not p.running]
            if dead:
                log.error("%s exited; see %s", dead[0].name, dead[0].log_path)
                return 1
        return 0
    finally:
        log.info("stopping everything the demo started")
        for proc in reversed(started):
            proc.stop()
        log.info("demo stopped")


def _print_where_to_look(api_started: bool) -> None:
    lines = [
        "",
        "The factory demo is running: simulated sensors -> Mosquitto -> gateway -> InfluxDB.",
        "",
        f"  Alerts (live):        mosquitto_sub -v -t '{ALERTS_SUBSCRIPTION}'",
        f"  Rejected messages:    mosquitto_sub -v -t '{DEADLETTER_SUBSCRIPTION}'",
        f"  Raw readings:         mosquitto_sub -v -t '{READING_SUBSCRIPTION}'",
        f"  Send a faulty one:    mosquitto_pub -t {reading_topic('line1', 'press-01')} "
        '-m \'{"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}\'',
        "  Stored readings:      influx -database factory -execute "
        "'SELECT * FROM reading ORDER BY time DESC LIMIT 10'",
        "  Anomalies:            influx -database factory -execute "
        "'SELECT * FROM reading WHERE is_anomaly = true ORDER BY time DESC LIMIT 10'",
        "  Gateway metrics:      curl -s localhost:9108/metrics | grep ^gateway_",
    ]
    if api_started:
        lines.append(
            f"  API and web page:     http://localhost:{API_PORT}/  "
            "(Alerts: acknowledge, real fault / false alarm)"
        )
    lines.append(f"  Notifications:        tail -f {NOTIFICATIONS}  (what a phone would get)")
    lines += [f"  Logs:                 {VAR / 'log'}/", "", "Press Ctrl-C to stop.", ""]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
