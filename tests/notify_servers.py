"""Real servers and a real notifier process for the notification tests (and the bench).

- :class:`WebhookServer`: a ThreadingHTTPServer in a thread that records every POST and
  can be switched to answer 200, fail with a status, hang, or hang until released.
- :class:`SmtpServer`: aiosmtpd with STARTTLS (a throwaway CA from trustme) and AUTH.
- :class:`NotifierProcess`: ``python -m notify`` with a config for them.
- :class:`AlertPublisher`: publishes alert messages (QoS 1) built with the contract.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import urllib3
from paho.mqtt.enums import CallbackAPIVersion

from contract import alert_topic
from contract.alerting import alert_id as make_alert_id
from contract.payloads import alert_payload, rfc3339
from devstack.process import ManagedProcess, free_port, wait_until
from tests.helpers import ROOT, unique

# --- webhook ----------------------------------------------------------------------------


@dataclass
class Posted:
    path: str
    headers: dict[str, str]
    body: Any  # the JSON body, or the text of a text/plain one
    status: int  # what the server answered (0: never answered, e.g. hung)
    at: float = 0.0  # time.monotonic() when it arrived

    @property
    def key(self) -> str:
        return self.headers.get("Idempotency-Key", "")


class WebhookServer:
    """Modes: "ok" (200), an int status (e.g. 500, 404), "hang" (answers nothing until
    ``timeout``... i.e. longer than the client waits), "hold" (answers 200 only when
    :meth:`release` is called)."""

    def __init__(self) -> None:
        self.mode: str | int = "ok"
        self.posts: list[Posted] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                text = self.headers.get("Content-Type", "").startswith("text/plain")
                body = raw.decode("utf-8") if text else json.loads(raw or b"null")
                mode = server.mode
                post = Posted(self.path, dict(self.headers.items()), body, 0, time.monotonic())
                with server._lock:
                    server.posts.append(post)
                if mode == "hang":
                    # Longer than any client timeout in the tests; ends at shutdown.
                    server._closing.wait(60)
                    return
                if mode == "hold":
                    server._release.wait(60)
                    mode = 200
                status = 200 if mode == "ok" else int(mode)
                post.status = status
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    post.status = 0  # the client was gone (killed)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self) -> None:
        self._release.set()

    def matching(self, pred: Callable[[Posted], bool] = lambda p: True) -> list[Posted]:
        with self._lock:
            return [p for p in self.posts if pred(p)]

    def delivered(self, pred: Callable[[Posted], bool] = lambda p: True) -> list[Posted]:
        return self.matching(lambda p: p.status == 200 and pred(p))

    def wait_for(
        self, pred: Callable[[Posted], bool], count: int = 1, timeout_s: float = 15
    ) -> list[Posted]:
        wait_until(lambda: len(self.matching(pred)) >= count, timeout_s, f"{count} webhook posts")
        return self.matching(pred)

    def stop(self) -> None:
        self._closing.set()
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


# --- SMTP -------------------------------------------------------------------------------

SMTP_USER = "notifier"
SMTP_PASSWORD = "s3cret-smtp-password"


class SmtpServer:
    """aiosmtpd requiring STARTTLS and AUTH (LOGIN/PLAIN) with the test user."""

    def __init__(self, tmp: Path):
        import trustme
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = tmp / "smtp-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        # (recipients, message, time.monotonic() when it arrived)
        self.messages: list[tuple[list[str], Message, float]] = []
        self.logins: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope) -> str:
                msg = message_from_bytes(envelope.original_content or envelope.content)
                with server._lock:
                    server.messages.append((list(envelope.rcpt_tos), msg, time.monotonic()))
                return "250 OK"

        def authenticator(smtp, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login == SMTP_USER.encode()
                and auth_data.password == SMTP_PASSWORD.encode()
            )
            if ok:
                with server._lock:
                    server.logins.append(SMTP_USER)
            return AuthResult(success=ok)

        self.port = free_port()
        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=True,
        )
        self.controller.start()

    def matching(self, pred: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        with self._lock:
            return [m for _, m, _ in self.messages if pred(m)]

    def wait_for(
        self, pred: Callable[[Message], bool], count: int = 1, timeout_s: float = 15
    ) -> list[Message]:
        wait_until(lambda: len(self.matching(pred)) >= count, timeout_s, f"{count} e-mails")
        return self.matching(pred)

    def stop(self) -> None:
        self.controller.stop()


# --- notifier process -------------------------------------------------------------------


def webhook_channel(name: str, url: str, timeout_s: float = 2.0, extra: str = "") -> str:
    return f'[[webhook]]\nname = "{name}"\nurl = "{url}"\ntimeout_s = {timeout_s}\n{extra}\n'


def email_channel(name: str, smtp: SmtpServer, password_file: Path) -> str:
    return (
        f'[[email]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {smtp.port}\n'
        f'ca_file = "{smtp.ca_file}"\nusername = "{SMTP_USER}"\n'
        f'password_file = "{password_file}"\nfrom_addr = "factory@test.local"\n'
        "timeout_s = 5.0\n"
    )


def route(name: str, channels: list[str], **keys: Any) -> str:
    lines = [f'[[route]]\nname = "{name}"\nchannels = {json.dumps(channels)}']
    for key, value in keys.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


class NotifierProcess:
    """``python -m notify`` on the test broker, with its own session and outbox."""

    def __init__(
        self,
        tmp: Path,
        mqtt_port: int,
        body: str,
        *,
        rate_limit: str = "window_s = 600.0\nper_device = 100\nplant = 1000",
        retry: str = "min_s = 0.2\nmax_s = 1.0\nmax_age_s = 3600.0",
        outbox: str = "",
        env: dict[str, str] | None = None,
    ):
        self.name = unique("notifier")
        self.metrics_port = free_port()
        self.outbox_path = tmp / f"{self.name}.sqlite"
        self.config = tmp / f"{self.name}.toml"
        self.config.write_text(
            f"""log_level = "INFO"
[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "{self.name}"
[outbox]
path = "{self.outbox_path}"
{outbox}
[rate_limit]
{rate_limit}
[retry]
{retry}
[metrics]
port = {self.metrics_port}
{body}
"""
        )
        self.log = tmp / f"{self.name}.log"
        self.env = {**os.environ, "LOG_LEVEL": "INFO", **(env or {})}
        self.process: ManagedProcess | None = None

    def start(self, timeout_s: float = 30) -> NotifierProcess:
        self.process = ManagedProcess(
            self.name,
            [sys.executable, "-m", "notify", "--config", str(self.config)],
            self.log,
            ready=lambda: self.metric("notifier_ready") == 1,
            env=self.env,
            cwd=ROOT,
        ).start(timeout_s)
        return self

    def stop(self) -> int | None:
        return self.process.stop() if self.process else None

    def kill(self) -> None:
        if self.process:
            self.process.kill()

    def metric(self, name: str, labels: str = "") -> float:
        """A sample from /metrics (``labels`` like 'channel="a"'); -1 if unavailable."""
        try:
            text = urllib3.request(
                "GET", f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2, retries=False
            ).data.decode()
        except urllib3.exceptions.HTTPError:
            return -1.0
        prefix = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return -1.0

    def wait_metric(
        self, name: str, pred: Callable[[float], bool], labels: str = "", timeout_s: float = 15
    ) -> float:
        wait_until(lambda: pred(self.metric(name, labels)), timeout_s, f"{name}{{{labels}}}")
        return self.metric(name, labels)

    def tail(self) -> str:
        return self.process.tail(60) if self.process else ""


# --- publishing alerts -------------------------------------------------------------------


class AlertPublisher:
    """One MQTT client publishing alert messages the way the gateway does (QoS 1)."""

    def __init__(self, port: int):
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=unique("alert-pub"),
            protocol=mqtt.MQTTv5,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish_raw(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def publish(self, payload: bytes, line: str, device: str) -> None:
        self.publish_raw(alert_topic(line, device), payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def alert_message(
    line: str,
    device: str,
    event: str = "firing",
    *,
    kind: str = "process_anomaly",
    started_ns: int = 1_796_551_200_000_000_000,
    ts_ns: int | None = None,
    **extra: object,
) -> tuple[bytes, str]:
    """An alert message as the gateway publishes it, and its alert id."""
    ident = make_alert_id(line, device, kind, started_ns, str(extra.get("fault", "")))
    state = "resolved" if event == "resolved" else "firing"
    payload = alert_payload(
        device=device,
        line=line,
        ts_ns=ts_ns or started_ns,
        kind=kind,
        state=state,
        score=3.2,
        threshold=1.0,
        values={"temperature_c": 80.1, "humidity_pct": 40.0, "sound_db": 70.0},
        model_version="v12",
        alert_id=ident,
        event=event,
        started=rfc3339(started_ns),
        **extra,
    )
    return payload, ident
