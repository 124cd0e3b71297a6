"""The shipped broker security (deploy/mosquitto/) against a real Mosquitto.

The broker runs the files an install puts on the Pi: a main config shaped like
Debian's /etc/mosquitto/mosquitto.conf that includes conf.d/, with
deploy/mosquitto/factory.conf and factory-tls.conf in it (only paths and ports
changed), users and ACL made with the real factory-mqtt-user helper, and certificates
from the real make-certs.sh.  The gateway is the real ``python -m gateway``.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devstack.process import ManagedProcess, free_port, port_open, wait_until
from tests.conftest import TEST_DB, GatewayProcess
from tests.helpers import ROOT, Collector, count_points, unique, wait_for_points

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy" / "mosquitto"
HELPER = DEPLOY / "factory-mqtt-user"
NORMAL = '{"temperature_c": 62.0, "humidity_pct": 44.0, "sound_db": 76.0}'
ANOMALOUS = '{"temperature_c": 95, "humidity_pct": 12, "sound_db": 104}'


def _render(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"shipped config no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class SecuredBroker:
    """Mosquitto with the shipped factory.conf (+ TLS listener) on free ports."""

    run_dir: Path
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    process: ManagedProcess | None = None

    @property
    def passwd(self) -> Path:
        return self.run_dir / "factory.passwd"

    @property
    def acl(self) -> Path:
        return self.run_dir / "factory.acl"

    @property
    def certs(self) -> Path:
        return self.run_dir / "certs"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "mosquitto.pid"

    def secret(self, name: str) -> Path:
        return self.run_dir / "credentials" / f"{name.replace('/', '_')}.mqtt-password"

    def password(self, name: str) -> str:
        return self.secret(name).read_text().strip()

    def user(self, *command: str, save_as: str | None = None) -> subprocess.CompletedProcess:
        """Run the real helper on this broker's files (it reloads the broker itself)."""
        args = ["--passwd", str(self.passwd), "--acl", str(self.acl)]
        args += ["--pid-file", str(self.pid_file)]
        if save_as:
            self.secret(save_as).parent.mkdir(exist_ok=True)
            args += ["--save", str(self.secret(save_as))]
        result = subprocess.run(
            [str(HELPER), *args, *command], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        return result

    def write_config(self) -> Path:
        conf_d = self.run_dir / "conf.d"
        conf_d.mkdir(parents=True, exist_ok=True)
        paths = {
            "/etc/mosquitto/factory.passwd": str(self.passwd),
            "/etc/mosquitto/factory.acl": str(self.acl),
        }
        factory = _render(
            (DEPLOY / "factory.conf").read_text(),
            {**paths, "listener 1883\n": f"listener {self.port} {self.host}\n"},
        )
        (conf_d / "factory.conf").write_text(factory)
        tls = _render(
            (DEPLOY / "factory-tls.conf").read_text(),
            {
                "listener 8883\n": f"listener {self.tls_port} {self.host}\n",
                "/etc/mosquitto/certs/factory/": f"{self.certs}/",
            },
        )
        (conf_d / "factory-tls.conf").write_text(tls)
        # What Debian's /etc/mosquitto/mosquitto.conf says, with our paths.
        main = [
            f"pid_file {self.pid_file}",
            "persistence true",
            f"persistence_location {self.run_dir}/",
            "log_dest stderr",
            "log_type all",
            f"include_dir {conf_d}",
        ]
        if os.geteuid() == 0:
            main.append("user root")  # else it drops to `mosquitto` and cannot write here
        conf = self.run_dir / "mosquitto.conf"
        conf.write_text("\n".join(main) + "\n")
        return conf

    def start(self) -> SecuredBroker:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.write_config()
        self.process = ManagedProcess(
            "mosquitto-secured",
            [binary, "-c", str(conf)],
            self.run_dir / "mosquitto.log",
            ready=lambda: port_open(self.host, self.port) and port_open(self.host, self.tls_port),
        ).start()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[SecuredBroker]:
    run_dir = tmp_path_factory.mktemp("mosquitto-secured")
    b = SecuredBroker(run_dir)
    made = subprocess.run(
        [str(DEPLOY / "make-certs.sh"), "--days", "2", str(b.certs)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    b.user("add-gateway", save_as="gateway")
    b.user("add-dashboard", save_as="dashboard")
    b.user("add-operator", save_as="api")
    b.start()
    yield b
    b.stop()


# --- small MQTT v5 probes -------------------------------------------------------------


def _client(
    username: str | None, password: str | None, ca_file: Path | None = None, client_id: str = ""
) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id or unique("probe"),
        protocol=mqtt.MQTTv5,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return client


def connack(port: int, username: str | None, password: str | None, ca_file=None) -> str:
    """Connect once; the broker's CONNACK reason ("Success", "Not authorized", ...)."""
    client = _client(username, password, ca_file)
    result: list[str] = []
    done = threading.Event()

    def on_connect(c, userdata, flags, reason_code, props) -> None:
        result.append(str(reason_code))
        done.set()

    def on_disconnect(c, userdata, flags, reason_code, props) -> None:
        if not done.is_set():
            result.append(str(reason_code))
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_until(done.is_set, 10, "CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]


def publish(port: int, username: str, password: str, topic: str, payload: str, ca_file=None) -> str:
    """Publish at QoS 1 and return the PUBACK reason ("Success" or "Not authorized")."""
    client = _client(username, password, ca_file)
    acks: list[str] = []
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.on_publish = lambda c, u, mid, reason_code, props: acks.append(str(reason_code))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_until(connected.is_set, 10, "connection")
        client.publish(topic, payload, qos=1)
        wait_until(lambda: bool(acks), 10, "PUBACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return acks[0]


def add_sensor(broker: SecuredBroker, line: str, device: str) -> str:
    """A new sensor user through the helper; waits until the reloaded broker knows it."""
    user = f"{line}/{device}"
    broker.user("add-sensor", line, device, save_as=user)
    password = broker.password(user)
    wait_until(
        lambda: connack(broker.port, user, password) == "Success", 10, f"login of new user {user}"
    )
    return password


class SecuredGateway(GatewayProcess):
    """The real gateway on the secured broker.  Nobody but the dashboard may read
    anything but alerts, so readiness is the gateway's own "subscribed" log line."""

    def start(self, timeout_s: float = 30) -> SecuredGateway:
        self.process = ManagedProcess(
            self.id,
            [sys.executable, "-m", "gateway", "--config", str(self.config)],
            self.log,
            ready=lambda: self.log.exists() and "subscribed to" in self.log.read_text(),
            env=self._env,
            cwd=ROOT,
        ).start(timeout_s)
        return self


@pytest.fixture
def secured_gateway(tmp_path, broker, influxdb, models_dir):
    started: list[SecuredGateway] = []

    def _start(env: dict[str, str]) -> SecuredGateway:
        gw = SecuredGateway(tmp_path, broker, influxdb.url, models_dir, env=env).start()
        started.append(gw)
        return gw

    yield _start
    for gw in started:
        gw.stop()


# --- tests ----------------------------------------------------------------------------


def test_anonymous_and_wrong_passwords_are_refused(broker):
    assert connack(broker.port, None, None) == "Not authorized"
    assert connack(broker.port, "gateway", "not-the-password") == "Not authorized"
    assert connack(broker.port, "nobody", "x") == "Not authorized"
    assert connack(broker.port, "gateway", broker.password("gateway")) == "Success"


def test_sensor_may_publish_only_its_own_reading_topic(broker):
    line, mine, other = unique("line"), unique("press"), unique("press")
    password = add_sensor(broker, line, mine)
    user = f"{line}/{mine}"
    watcher = Collector(
        broker.port,
        [f"factory/{line}/+/reading"],
        username="gateway",
        password=broker.password("gateway"),
    )
    try:
        # Refused with a reason (MQTT 5), and never delivered to the gateway.
        spoofed = f"factory/{line}/{other}/reading"
        assert publish(broker.port, user, password, spoofed, NORMAL) == "Not authorized"
        assert publish(broker.port, user, password, f"factory/alerts/{line}/{mine}", "{}") == (
            "Not authorized"
        )
        own = f"factory/{line}/{mine}/reading"
        assert publish(broker.port, user, password, own, NORMAL) == "Success"
        watcher.wait_for(lambda m: m.topic == own)
        # The broker handles one client's messages in order: had the earlier spoof been
        # let through, it would have reached the watcher before the sensor's own.
        assert [m.topic for m in watcher.messages] == [own]
    finally:
        watcher.close()


def test_dashboard_reads_alerts_only_and_cannot_publish(broker):
    dash_pw = broker.password("dashboard")
    gw_pw = broker.password("gateway")
    line, device = unique("line"), unique("press")
    sensor_pw = add_sensor(broker, line, device)
    dashboard = Collector(broker.port, ["factory/#"], username="dashboard", password=dash_pw)
    try:
        fake_alert = f"factory/alerts/{line}/{device}"
        assert publish(broker.port, "dashboard", dash_pw, fake_alert, "{}") == "Not authorized"
        reading = f"factory/{line}/{device}/reading"
        assert publish(broker.port, f"{line}/{device}", sensor_pw, reading, NORMAL) == "Success"
        status = f"factory/gateway/{unique('gw')}/status"
        assert publish(broker.port, "gateway", gw_pw, status, "online") == "Success"
        assert publish(broker.port, "gateway", gw_pw, fake_alert, '{"real": 1}') == "Success"
        dashboard.wait_for(lambda m: m.topic == fake_alert)
        # Everything above went through the broker before this alert.
        assert [(m.topic, m.payload) for m in dashboard.messages] == [(fake_alert, b'{"real": 1}')]
    finally:
        dashboard.close()


def test_the_api_user_may_only_acknowledge_and_the_gateway_reads_it(broker):
    api_pw = broker.password("api")
    line, device = unique("line"), unique("press")
    gateway = Collector(
        broker.port, ["factory/ack/#"], username="gateway", password=broker.password("gateway")
    )
    try:
        ack = f"factory/ack/{line}/{device}"
        body = '{"alert_id": "0123456789abcdef", "by": "anna"}'
        for topic in (f"factory/{line}/{device}/reading", f"factory/alerts/{line}/{device}"):
            assert publish(broker.port, "api", api_pw, topic, NORMAL) == "Not authorized"
        assert publish(broker.port, "api", api_pw, ack, body) == "Success"
        (got,) = gateway.wait_for(lambda m: m.topic == ack)
        assert got.payload == body.encode()
    finally:
        gateway.close()


def test_gateway_may_read_the_broker_version(broker):
    """Cluster gateways check it for a Mosquitto that can stall shared subscriptions."""
    reader = Collector(
        broker.port,
        ["$SYS/broker/version"],
        username="gateway",
        password=broker.password("gateway"),
    )
    try:
        reader.wait_for(lambda m: m.payload.startswith(b"mosquitto version "))
    finally:
        reader.close()


def test_gateway_end_to_end_with_its_credentials(broker, influxdb, secured_gateway):
    line, device, other = unique("line"), unique("press"), unique("press")
    password = add_sensor(broker, line, device)
    secured_gateway(
        {
            "GATEWAY_MQTT_USERNAME": "gateway",
            "GATEWAY_MQTT_PASSWORD_FILE": str(broker.secret("gateway")),
        }
    )
    dashboard = Collector(
        broker.port,
        [f"factory/alerts/{line}/#"],
        username="dashboard",
        password=broker.password("dashboard"),
    )
    try:
        user = f"{line}/{device}"
        spoofed = f"factory/{line}/{other}/reading"
        assert publish(broker.port, user, password, spoofed, ANOMALOUS) == "Not authorized"
        own = f"factory/{line}/{device}/reading"
        for body in (NORMAL, NORMAL, NORMAL, ANOMALOUS):
            assert publish(broker.port, user, password, own, body) == "Success"
        stored = wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 4)
        (alert,) = dashboard.wait_for(
            lambda m: (
                m.topic == f"factory/alerts/{line}/{device}"
                and m.json()["kind"] == "process_anomaly"
            )
        )
    finally:
        dashboard.close()
    assert stored == 4
    assert alert.json()["state"] == "firing"
    # Published before the real ones, by the same client: it would be stored by now.
    assert count_points(influxdb.url, TEST_DB, f"device='{other}'") == 0


def test_tls_listener_with_the_generated_ca(broker, influxdb, secured_gateway, tmp_path):
    ca = broker.certs / "ca.crt"
    line, device = unique("line"), unique("press")
    password = add_sensor(broker, line, device)
    user = f"{line}/{device}"
    assert connack(broker.tls_port, user, password, ca_file=ca) == "Success"
    # A client that trusts another CA refuses the broker's certificate.
    other = subprocess.run(
        [str(DEPLOY / "make-certs.sh"), str(tmp_path / "other-ca")],
        capture_output=True,
        check=False,
    )
    assert other.returncode == 0
    with pytest.raises(ssl.SSLCertVerificationError):
        connack(broker.tls_port, user, password, ca_file=tmp_path / "other-ca" / "ca.crt")
    # A client certificate from the same CA is accepted too (mutual TLS when wanted).
    made = subprocess.run(
        [str(DEPLOY / "make-certs.sh"), str(broker.certs), "--client", user],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    client_cert = broker.certs / "clients" / f"{line}_{device}"
    pub = subprocess.run(
        [
            shutil.which("mosquitto_pub") or "mosquitto_pub",
            *("-h", "127.0.0.1", "-p", str(broker.tls_port), "--cafile", str(ca)),
            *("--cert", f"{client_cert}.crt", "--key", f"{client_cert}.key"),
            *("-u", user, "-P", password, "-q", "1", "-V", "5"),
            *("-t", f"factory/{line}/{device}/reading", "-m", NORMAL),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    assert pub.returncode == 0, pub.stderr

    # The gateway over TLS (config tls/ca_file via the environment), end to end.
    secured_gateway(
        {
            "GATEWAY_MQTT_USERNAME": "gateway",
            "GATEWAY_MQTT_PASSWORD_FILE": str(broker.secret("gateway")),
            "GATEWAY_MQTT_PORT": str(broker.tls_port),
            "GATEWAY_MQTT_TLS": "true",
            "GATEWAY_MQTT_CA_FILE": str(ca),
        }
    )
    reading = f"factory/{line}/{device}/reading"
    assert publish(broker.tls_port, user, password, reading, NORMAL, ca_file=ca) == "Success"
    assert wait_for_points(influxdb.url, TEST_DB, f"device='{device}'", 1) == 1


def test_rotated_and_removed_users_on_reload(broker):
    line, device = unique("line"), unique("press")
    old = add_sensor(broker, line, device)
    user = f"{line}/{device}"
    broker.user("rotate", user, save_as=user)
    new = broker.password(user)
    assert new != old
    wait_until(lambda: connack(broker.port, user, old) == "Not authorized", 10, "old password out")
    assert connack(broker.port, user, new) == "Success"
    broker.user("remove", user)
    wait_until(lambda: connack(broker.port, user, new) == "Not authorized", 10, "user removed")
    assert f"user {user}\n" not in broker.acl.read_text()
    listed = broker.user("list").stdout
    assert "gateway\tgateway" in listed and user not in listed


def test_helper_rejects_names_outside_the_contract(broker):
    for line, device in [("alerts", "x"), ("line1", "a/b"), ("line1", "a+"), ("line 1", "x")]:
        result = subprocess.run(
            [
                *(str(HELPER), "--passwd", str(broker.passwd), "--acl", str(broker.acl)),
                *("--no-reload", "add-sensor", line, device),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0, (line, device)
        assert f"user {line}/{device}" not in broker.acl.read_text()


def test_queued_readings_survive_a_broker_restart(broker):
    """Persistence is on: a reading queued for an absent gateway outlives a restart."""
    line, device = unique("line"), unique("press")
    password = add_sensor(broker, line, device)
    gw_pw = broker.password("gateway")
    session_id = unique("parked-gateway")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600

    def session(on_message=None) -> mqtt.Client:
        client = _client("gateway", gw_pw, client_id=session_id)
        client.on_message = on_message
        client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        return client

    subscribed = threading.Event()
    parked = session()
    parked.on_subscribe = lambda *a: subscribed.set()
    parked.subscribe(f"factory/{line}/+/reading", qos=1)
    parked.loop_start()
    wait_until(subscribed.is_set, 10, "subscription")
    parked.disconnect()
    parked.loop_stop()

    topic = f"factory/{line}/{device}/reading"
    assert publish(broker.port, f"{line}/{device}", password, topic, NORMAL) == "Success"
    broker.stop()
    broker.start()

    got: list[bytes] = []
    back = session(lambda c, u, msg: got.append(msg.payload))
    back.loop_start()
    try:
        wait_until(lambda: bool(got), 10, "the queued reading after the restart")
    finally:
        back.disconnect()
        back.loop_stop()
    assert got == [NORMAL.encode()]
