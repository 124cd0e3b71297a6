"""The gateway's typed configuration, loaded once at start-up.

File: TOML (``config/gateway.toml``).  Every setting can be overridden from the
environment as ``GATEWAY_<SECTION>_<KEY>``, e.g. ``GATEWAY_INFLUX_URL``,
``GATEWAY_MQTT_PASSWORD`` or ``GATEWAY_INFLUX_TOKEN_FILE``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from common.config import load_config
from common.mqtt import MqttSettings
from contract import DEFAULT_FIELDS, DecodeLimits, FieldSpec
from contract.schema import check_field_name
from contract.topics import NAME_RULE, valid_name

ENV_PREFIX = "GATEWAY"


@dataclass(frozen=True)
class FieldConfig:
    name: str
    unit: str = ""
    min: float = float("-inf")
    max: float = float("inf")
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_field_name(self.name)  # refused at load, not at the first reading

    def spec(self) -> FieldSpec:
        return FieldSpec(self.name, self.unit, self.min, self.max, self.aliases)


@dataclass(frozen=True)
class DecodeConfig:
    max_payload_bytes: int = 64 * 1024
    # Readings stamped further in the future than this are rejected (clock skew).
    max_future_s: float = 300.0
    # Readings older than this are rejected (also bounds what a spool replays).
    max_age_s: float = 30 * 86400.0
    # Extra reading fields beyond the three defaults (e.g. vibration for a new model).
    extra_fields: tuple[FieldConfig, ...] = ()


@dataclass(frozen=True)
class PipelineConfig:
    # Micro-batch bounds: score when this many readings are waiting...
    batch_max: int = 500
    # ...or when the oldest waiting reading is this old.
    batch_max_wait_ms: float = 20.0
    # Batches handed to the writer; when full, scoring waits (back-pressure).
    write_queue_batches: int = 64
    # The most readings held in memory (waiting, being scored, or not yet stored), enforced
    # by the gateway whatever the broker sends.  A reading is held from receipt until
    # stored (~0.3-0.4 s), so this also caps throughput near max_held_readings / 0.4 s.
    max_held_readings: int = 10_000

    def __post_init__(self) -> None:
        if self.max_held_readings < 1:
            raise ValueError("pipeline.max_held_readings must be >= 1")


@dataclass(frozen=True)
class AlertRule:
    """Overrides for devices matching ``line``/``device`` (glob patterns); unset = default."""

    line: str = "*"
    device: str = "*"
    enter_score: float | None = None
    exit_ratio: float | None = None
    fire_after: int | None = None
    min_duration_s: float | None = None
    resolve_after: int | None = None
    renotify_s: float | None = None


@dataclass(frozen=True)
class AlertConfig:
    # Score at which an alert enters `pending` (0: the model's own threshold).
    enter_score: float = 0.0
    # Hysteresis: a firing alert resolves below enter x exit_ratio.
    exit_ratio: float = 0.8
    # Readings above the enter threshold, and seconds since the first, before firing.
    fire_after: int = 1
    min_duration_s: float = 0.0
    # Consecutive readings below the exit threshold before a firing alert resolves.
    resolve_after: int = 5
    # While firing, repeat the alert at most this often (0: never).
    renotify_s: float = 300.0
    # Publish each device's current alert state, retained, on factory/state/<line>/<device>.
    retain_state: bool = True
    rules: tuple[AlertRule, ...] = ()

    def __post_init__(self) -> None:
        if self.fire_after < 1 or self.resolve_after < 1:
            raise ValueError("alerts.fire_after and alerts.resolve_after must be >= 1")
        if not 0 < self.exit_ratio <= 1:
            raise ValueError("alerts.exit_ratio must be in (0, 1]")


@dataclass(frozen=True)
class SensorFaultConfig:
    """Sensor faults are published as kind `sensor_fault`, apart from machine anomalies."""

    enabled: bool = True
    # A field reporting the identical value this many readings in a row is stuck.
    stuck_after: int = 30
    # Changes faster than this (units per second) are physically impossible for the
    # sensor class (a DHT22 needs seconds to follow a real change).
    max_rate: dict[str, float] = field(
        default_factory=lambda: {"temperature_c": 5.0, "humidity_pct": 20.0}
    )
    # No reading from a known device for this long: dropout (0 disables the deadman).
    deadman_s: float = 30.0
    # Devices silent for this long are forgotten (decommissioned, renamed).
    forget_after_s: float = 86400.0
    # This many rejected messages from one device within error_window_s: a burst.
    error_burst: int = 5
    error_window_s: float = 60.0
    # Consecutive good readings before a sensor fault resolves.
    resolve_after: int = 5


@dataclass(frozen=True)
class InfluxConfig:
    # 1: InfluxDB 1.x HTTP API (/write); 2: v2 write API via influxdb-client (2.x/3.x/Cloud).
    api: int = 1
    url: str = "http://localhost:8086"
    # v1
    database: str = "factory"
    retention_policy: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    # Create the database at start-up if missing (v1 only; needs admin rights).
    create_database: bool = True
    # v2
    org: str = ""
    bucket: str = "factory"
    token: str = ""
    token_file: str = ""
    # Write batching
    batch_max_points: int = 5000
    flush_interval_ms: float = 200.0
    # A write InfluxDB has not answered in spool_after_s goes to the spool (if any), so a
    # hung InfluxDB is an outage within about a second; spool drains wait timeout_s.
    spool_after_s: float = 1.0
    timeout_s: float = 10.0
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.api not in (1, 2):
            raise ValueError("influx.api must be 1 or 2")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("influx.url must start with http:// or https://")
        if not 0 < self.spool_after_s <= self.timeout_s:
            raise ValueError("need 0 < influx.spool_after_s <= influx.timeout_s")


@dataclass(frozen=True)
class SpoolConfig:
    # Where points wait while InfluxDB is unreachable (empty string: no spool; then
    # nothing is acknowledged to the broker until InfluxDB takes it).
    path: str = "var/spool/gateway.sqlite"
    # When full, the gateway stops acknowledging readings; the broker keeps them.
    max_bytes: int = 512 * 1024 * 1024
    # Spooled points older than this are dropped (and counted).
    max_age_s: float = 7 * 86400.0


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = True
    # Readings in the sliding window compared with the training distribution.
    window: int = 32_400
    check_interval_s: float = 60.0
    # Alert-rate drift: anomalous share over the last alert_rate_window readings above
    # max(alert_rate_factor x the model's validation false-alarm rate, alert_rate_min).
    alert_rate_window: int = 5_000
    alert_rate_factor: float = 5.0
    alert_rate_min: float = 0.05


@dataclass(frozen=True)
class ClusterConfig:
    """Several gateways sharing the stream (see README "Scale out")."""

    enabled: bool = False
    # Devices hash into this many partitions; keep it the same on every gateway and
    # well above the number of gateways (changing it reshuffles device ownership).
    partitions: int = 16
    # Shared-subscription group and prefix of the partition session ids.
    group: str = "factory"
    # A dead gateway's ingest session is drained until quiet for this long, then ended.
    rescue_idle_s: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= 1024:
            raise ValueError("cluster.partitions must be 1..1024")
        if not self.group or any(c in self.group for c in "+#/ $"):
            raise ValueError("cluster.group must be a plain name")


@dataclass(frozen=True)
class MetricsConfig:
    # Prometheus exposition port (0 disables).
    port: int = 9108
    host: str = "127.0.0.1"
    # How often gateway health is also written to InfluxDB (measurement `gateway`); 0 disables.
    influx_interval_s: float = 5.0


@dataclass(frozen=True)
class ModelConfig:
    # A version directory, a models directory (uses its `current`), or the `current` link.
    path: str = "var/models/current"
    # How often to check whether `path` points at a new version (0: only on SIGHUP).
    watch_interval_s: float = 2.0
    # Shadow mode: also score with this model and count disagreements; only the
    # active model acts (empty: off).  It must use plain reading fields.
    shadow_path: str = ""


@dataclass(frozen=True)
class GatewayConfig:
    id: str = field(default_factory=socket.gethostname)
    log_level: str = "INFO"
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    sensor_faults: SensorFaultConfig = field(default_factory=SensorFaultConfig)
    influx: InfluxConfig = field(default_factory=InfluxConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        if not valid_name(self.id):
            raise ValueError(f"gateway id must be {NAME_RULE}")

    def decode_limits(self, required: tuple[str, ...]) -> DecodeLimits:
        fields = DEFAULT_FIELDS + tuple(f.spec() for f in self.decode.extra_fields)
        return DecodeLimits(
            fields=fields,
            required=required,
            max_payload_bytes=self.decode.max_payload_bytes,
            max_future_s=self.decode.max_future_s,
            max_age_s=self.decode.max_age_s,
        )


def load_gateway_config(path: str | Path | None) -> GatewayConfig:
    return load_config(GatewayConfig, path, ENV_PREFIX)
