"""The notification service's typed configuration, loaded once at start-up.

File: TOML (``config/notifier.toml``).  Scalar settings of the sections can be
overridden from the environment as ``NOTIFIER_<SECTION>_<KEY>``, e.g.
``NOTIFIER_MQTT_HOST`` or ``NOTIFIER_MQTT_PASSWORD_FILE``.  Channels and routes are
lists (``[[webhook]]``, ``[[email]]``, ``[[route]]``) and live in the file only.
Secrets (SMTP password, webhook token or secret URL) are read from files named by
``*_file`` keys, never from the config itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.config import ConfigError, load_config, read_secret
from common.mqtt import MqttSettings
from contract.alerting import ACKNOWLEDGED, FIRING, REPEATED, RESOLVED

ENV_PREFIX = "NOTIFIER"
DEFAULT_CLIENT_ID = "factory-notifier"
# The events the gateway publishes on MQTT (`silenced` is history only).
NOTIFIED_EVENTS = (FIRING, REPEATED, ACKNOWLEDGED, RESOLVED)


def secret_from_file(file: str, what: str) -> str:
    """A secret from a file; ``$CREDENTIALS_DIRECTORY`` (systemd) may start the path."""
    return read_secret("", os.path.expandvars(file), what) if file else ""


@dataclass(frozen=True)
class WebhookChannel:
    """An HTTP endpoint that takes a JSON POST (Slack, Teams, Mattermost, ntfy...)."""

    name: str
    enabled: bool = True
    # The URL, or a file holding it (Slack/Teams webhook URLs are secrets themselves).
    url: str = ""
    url_file: str = ""
    # Extra headers, e.g. {"Title" = "Factory"} for ntfy.
    headers: dict[str, str] = field(default_factory=dict)
    # Optional secret sent as `<token_header>: <token_prefix><token>`.
    token_file: str = ""
    token_header: str = "Authorization"
    token_prefix: str = "Bearer "
    # One request (connect + answer) may take this long; longer counts as a timeout.
    timeout_s: float = 5.0
    # Check the server's certificate against this CA bundle (empty: the system's).
    ca_file: str = ""
    # "json": the documented JSON body (chat webhooks). "text": the message text alone as
    # text/plain, for push services that show the body as it is (ntfy), with the subject
    # in a `Title` header.
    body: str = "json"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("webhook: name is required")
        if self.body not in ("json", "text"):
            raise ValueError(f"webhook {self.name}: body must be 'json' or 'text'")
        if bool(self.url) == bool(self.url_file):
            raise ValueError(f"webhook {self.name}: set exactly one of url, url_file")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook {self.name}: url must start with http:// or https://")
        if self.timeout_s <= 0:
            raise ValueError(f"webhook {self.name}: timeout_s must be > 0")

    def resolved_url(self) -> str:
        url = self.url or secret_from_file(self.url_file, f"webhook {self.name} url_file")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook {self.name}: url_file must hold an http(s) URL")
        return url


@dataclass(frozen=True)
class EmailChannel:
    """An SMTP server (submission port, STARTTLS) that mails routes' recipients."""

    name: str
    enabled: bool = True
    host: str = "localhost"
    port: int = 587
    # STARTTLS is required unless switched off (a local relay on 127.0.0.1:25).
    starttls: bool = True
    # Private CA for the server's certificate (empty: the system's CAs).
    ca_file: str = ""
    # Login (after STARTTLS) when username is set; the password comes from a file.
    username: str = ""
    password_file: str = ""
    from_addr: str = "factory-notifier@localhost"
    timeout_s: float = 10.0
    # Domain of the deterministic Message-ID (<hash@domain>).
    message_id_domain: str = "factory-notifier.local"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("email: name is required")
        if not 0 < self.port < 65536:
            raise ValueError(f"email {self.name}: port out of range")
        if self.username and not self.password_file:
            raise ValueError(f"email {self.name}: username needs password_file")
        if self.username and not self.starttls:
            raise ValueError(f"email {self.name}: refusing to log in without STARTTLS")
        if self.timeout_s <= 0:
            raise ValueError(f"email {self.name}: timeout_s must be > 0")


@dataclass(frozen=True)
class Route:
    """Alerts matching every glob (fnmatch) and one of ``events`` go to ``channels``.

    All matching routes apply; a person reached twice for the same transition (same
    channel and recipient) gets it once.
    """

    name: str
    channels: tuple[str, ...]
    line: str = "*"
    device: str = "*"
    kind: str = "*"
    events: tuple[str, ...] = NOTIFIED_EVENTS
    # E-mail recipients (for the route's e-mail channels).
    to: tuple[str, ...] = ()
    # From address for this route's e-mails (empty: the channel's from_addr).
    from_addr: str = ""
    # False: resolutions are not sent at all on this route.
    send_resolved: bool = True

    def __post_init__(self) -> None:
        if not self.name or not self.channels:
            raise ValueError("route: name and channels are required")
        unknown = set(self.events) - set(NOTIFIED_EVENTS)
        if unknown:
            raise ValueError(f"route {self.name}: unknown events {sorted(unknown)}")


@dataclass(frozen=True)
class RateLimitConfig:
    """Immediate notifications per fixed window; the rest is folded into a digest."""

    window_s: float = 600.0
    # Firing/repeated notifications per device (line, device) per window.
    per_device: int = 3
    # Firing/repeated notifications for the whole plant per window (a storm beyond).
    plant: int = 20

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.per_device < 1 or self.plant < 1:
            raise ValueError("rate_limit: need window_s > 0, per_device >= 1, plant >= 1")


@dataclass(frozen=True)
class RetryConfig:
    """Exponential backoff with jitter between attempts of one notification."""

    min_s: float = 1.0
    max_s: float = 300.0
    factor: float = 2.0
    # Share of the delay randomised (0.2: 80-100 % of it), so retries do not bunch.
    jitter: float = 0.2
    # A notification not delivered this long after it was queued is dead.
    max_age_s: float = 86400.0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError("retry: need 0 < min_s <= max_s, factor >= 1, 0 <= jitter < 1")


@dataclass(frozen=True)
class OutboxConfig:
    path: str = "var/notify/outbox.sqlite"
    # Pending + held notifications at which intake pauses (the broker keeps the rest).
    max_pending: int = 10_000
    # Delivered rows are kept this long (deduplication of redeliveries, inspection).
    keep_delivered_s: float = 7 * 86400.0
    # Dead rows are kept this long for inspection.
    keep_dead_s: float = 30 * 86400.0

    def __post_init__(self) -> None:
        if self.max_pending < 1:
            raise ValueError("outbox.max_pending must be >= 1")


@dataclass(frozen=True)
class MetricsConfig:
    # Prometheus exposition port (0 disables).
    port: int = 9110
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class NotifierConfig:
    log_level: str = "INFO"
    # The web page where people acknowledge and label alerts (the API's, e.g.
    # "http://gateway-pi:5000/"); when set, alert messages end with a link to it.
    page_url: str = ""
    # client_id empty = "factory-notifier" (the persistent session's name).
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    webhook: tuple[WebhookChannel, ...] = ()
    email: tuple[EmailChannel, ...] = ()
    route: tuple[Route, ...] = ()

    def __post_init__(self) -> None:
        names = [c.name for c in self.webhook] + [c.name for c in self.email]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"channel names must be unique: {sorted(duplicates)}")
        for route in self.route:
            unknown = set(route.channels) - set(names)
            if unknown:
                raise ValueError(f"route {route.name}: unknown channels {sorted(unknown)}")
            mail = [c for c in self.email if c.name in route.channels]
            if mail and not route.to:
                raise ValueError(f"route {route.name}: e-mail channels need `to` addresses")

    def enabled_channels(self) -> list[WebhookChannel | EmailChannel]:
        return [c for c in (*self.webhook, *self.email) if c.enabled]


def load_notifier_config(path: str | Path | None) -> NotifierConfig:
    cfg = load_config(NotifierConfig, path, ENV_PREFIX)
    if not cfg.mqtt.client_id:
        # A fixed id: the broker keeps our persistent session (and queued alerts) by it.
        cfg = replace(cfg, mqtt=replace(cfg.mqtt, client_id=DEFAULT_CLIENT_ID))
    return cfg
