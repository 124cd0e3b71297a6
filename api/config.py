"""The API's typed configuration, loaded once at start-up.

File: TOML (``config/api.toml``).  Every setting can be overridden from the environment
as ``API_<KEY>`` or ``API_<SECTION>_<KEY>``, e.g. ``API_PORT=5001``,
``API_MODEL_PATH=var/models/current``, ``API_KEYS=key1,key2``, ``API_KEYS_FILE=...``,
``API_INFLUX_URL=http://db:8086`` or ``API_INFLUX_TOKEN_FILE=...``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError, load_config, read_secret
from common.mqtt import MqttSettings

ENV_PREFIX = "API"


@dataclass(frozen=True)
class ModelConfig:
    # A version directory, a models directory (uses its `current`), or the `current` link.
    path: str = "var/models/current"
    # How often (at most) each worker checks whether `current` points somewhere new
    # (one readlink); 0 disables the check and leaves SIGHUP as the only reload.
    check_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.check_interval_s < 0:
            raise ValueError("model.check_interval_s must be >= 0")


@dataclass(frozen=True)
class LimitsConfig:
    # Records in one /predict request; more gets 413.
    max_records: int = 1000
    # Request body size; more gets 413 before it is parsed.
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_body_bytes < 64:
            raise ValueError("limits.max_records must be >= 1 and limits.max_body_bytes >= 64")


@dataclass(frozen=True)
class InfluxQueryConfig:
    # Where the gateway writes (InfluxQL over /query: InfluxDB 1.x, or 2.x/3.x with a
    # DBRP mapping for the bucket). Empty url: /api/recent answers 503.
    url: str = "http://localhost:8086"
    database: str = "factory"
    retention_policy: str = ""
    measurement: str = "reading"
    # How feedback labels (POST /api/alerts/<id>/label) are written, as the gateway's
    # [influx]: 1 = /write of InfluxDB 1.x (database, retention_policy); 2 = the v2
    # write API (org, bucket, token).
    api: int = 1
    org: str = ""
    bucket: str = "factory"
    # InfluxDB 1.x user, or a 2.x/3.x token (sent as "Authorization: Token ...").
    username: str = ""
    password: str = ""
    password_file: str = ""
    token: str = ""
    token_file: str = ""
    timeout_s: float = 5.0
    # /api/recent bounds: the window a caller may ask for and points per device.
    max_minutes: int = 24 * 60
    max_points_per_device: int = 2000

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError("influx.url must start with http:// or https://")
        if self.max_minutes < 1 or self.max_points_per_device < 1:
            raise ValueError("influx.max_minutes and influx.max_points_per_device must be >= 1")
        if self.api not in (1, 2):
            raise ValueError("influx.api must be 1 or 2")

    def secret_token(self) -> str:
        return read_secret(self.token, self.token_file, "influx.token")

    def secret_password(self) -> str:
        return read_secret(self.password, self.password_file, "influx.password")


@dataclass(frozen=True)
class ReadyConfig:
    # /ready also requires these to answer (off: /ready only needs a loaded model).
    check_influx: bool = False
    check_mqtt: bool = False
    # Dependency checks are cached this long so probes cannot hammer the broker/database.
    cache_s: float = 5.0
    timeout_s: float = 2.0


@dataclass(frozen=True)
class AlertsConfig:
    # GET /api/alerts: the longest window a caller may ask for, and alerts per answer.
    max_hours: int = 30 * 24
    max_alerts: int = 200
    # How far back an alert id is found (acknowledge, label), and how long a
    # still-firing alert stays listed after its last event.
    lookback_days: int = 30
    # Events read per InfluxDB query: bounds the work of one request.
    max_events: int = 20000
    # Acknowledgements: the broker must accept the connection and PUBACK within this.
    ack_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if min(self.max_hours, self.max_alerts, self.lookback_days, self.max_events) < 1:
            raise ValueError(
                "alerts.max_hours, max_alerts, lookback_days and max_events must be >= 1"
            )
        if self.ack_timeout_s <= 0:
            raise ValueError("alerts.ack_timeout_s must be > 0")


@dataclass(frozen=True)
class ServerConfig:
    # Gunicorn workers: each is a process with its own copy of the model.
    workers: int = 2
    # "gthread" (default): keep-alive, `threads` requests at once per worker, so a slow
    # InfluxDB query does not stall a worker; fastest for clients that keep their
    # connection (bench/bench_api.py).  "sync": one request at a time per worker and a
    # new connection per request; faster for clients that reconnect every time.
    worker_class: str = "gthread"
    threads: int = 2
    timeout_s: int = 30
    graceful_timeout_s: int = 30
    keepalive_s: int = 5
    backlog: int = 256
    # Log every request (gunicorn access log on stderr, with microseconds).
    access_log: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1 or self.threads < 1:
            raise ValueError("server.workers and server.threads must be >= 1")
        if self.worker_class not in ("sync", "gthread"):
            raise ValueError("server.worker_class must be 'sync' or 'gthread'")


@dataclass(frozen=True)
class ApiConfig:
    # Existing clients call port 5000.  127.0.0.1 keeps it local; use 0.0.0.0 to serve
    # the plant network (then set API keys).
    host: str = "127.0.0.1"
    port: int = 5000
    log_level: str = "INFO"
    # API keys accepted in the X-API-Key header. Empty (and no keys_file): no keys needed.
    keys: tuple[str, ...] = ()
    # One key per line (# comments allowed); re-read when workers restart (SIGHUP).
    keys_file: str = ""
    # The web page polls /api/recent this often.
    page_refresh_s: float = 5.0
    model: ModelConfig = field(default_factory=ModelConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    influx: InfluxQueryConfig = field(default_factory=InfluxQueryConfig)
    ready: ReadyConfig = field(default_factory=ReadyConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.page_refresh_s <= 0:
            raise ValueError("page_refresh_s must be > 0")

    def api_keys(self) -> tuple[str, ...]:
        """Inline keys plus those in ``keys_file``; empty means the API is open."""
        keys = [k for k in self.keys if k]
        if self.keys_file:
            try:
                text = Path(self.keys_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"keys_file: cannot read {self.keys_file}: {exc.strerror}"
                ) from None
            for raw in text.splitlines():
                key = raw.strip()
                if key and not key.startswith("#"):
                    keys.append(key)
        return tuple(keys)


def load_api_config(path: str | Path | None, env: dict[str, str] | None = None) -> ApiConfig:
    return load_config(ApiConfig, path, ENV_PREFIX, os.environ if env is None else env)


def summary(cfg: ApiConfig) -> dict[str, object]:
    """The effective config for logs / --check-config: secrets and keys masked."""
    from common.config import redacted

    out = redacted(cfg)
    assert isinstance(out, dict)
    out["keys"] = f"{len(cfg.keys)} inline" if cfg.keys else "none"
    return out
