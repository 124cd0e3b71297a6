"""A stored history with operators' labels, built like the plant would have produced it.

Reusable scenario for tests that need feedback labels in InfluxDB:

1. :func:`train_active_model` trains the default (``dynamics``) detector on clean
   simulated machines (the simulator's own fault mix, labelled) and activates it.
2. :func:`build_history` simulates one line of three machines at 1 Hz:

   * ``pattern`` (device A) runs a **new product recipe**: its die runs at about
     ``recipe_c`` (115 °C) instead of the 60-75 °C every training machine ran at.
     It is steady, healthy operation, but beyond any temperature the model saw, so
     the model's level check flags every production cycle;
   * ``fault`` (device B) has one genuine fault from the simulator's fault injection
     (``fault_kind``, a humidity excursion by default) at ``fault_at`` of the window;
   * ``normal`` (device C) runs as usual.

3. :func:`store_history` replays it through the active model with the gateway's own
   decision code (:func:`backtest.replay.replay`, the rules of ``config/gateway.toml``)
   and writes what the gateway would have written: the scored readings
   (:class:`contract.lineprotocol.ReadingEncoder`), ``sensor_fault`` transitions and
   ``alert_event`` points (firing, resolved; ids from :func:`contract.alerting.alert_id`).
4. :func:`label_alerts` writes the operators' ``alert_label`` points: every
   process-anomaly alert of A is a ``false_alarm``, B's alert during its fault a
   ``real_fault`` (fault type = the injected kind).

Everything is deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import urllib3

from backtest.replay import AlertPeriod, Recording, Replay, alert_periods, replay
from contract import Reading
from contract.alerting import FALSE_ALARM, FIRING, REAL_FAULT, RESOLVED, alert_id
from contract.lineprotocol import ReadingEncoder, encode_point
from contract.schema import (
    ACTIVE,
    ALERT_EVENT,
    ALERT_ID,
    ALERT_LABEL,
    BY,
    DETAIL,
    DEVICE,
    ENDED_NS,
    EVENT,
    FAULT,
    FAULT_TYPE,
    KIND,
    LABEL,
    LABELLED_NS,
    LINE,
    NOTE,
    SCORE,
    SENSOR_FAULT,
    STARTED_NS,
)
from gateway.config import load_gateway_config
from gateway.detection import PROCESS_ANOMALY
from model.artifact import save_artifact
from model.dataset import Dataset
from model.scorer import Scorer, load_scorer
from model.training import train
from sensors.faults import HUMIDITY_EXCURSION, FaultInjector
from sensors.machine_model import HUMIDITY, SOUND, TEMPERATURE, MachineModel
from sensors.simulator import Simulator

NS = 1_000_000_000
FIELDS = (TEMPERATURE, HUMIDITY, SOUND)
ROOT = Path(__file__).resolve().parent.parent
GATEWAY_CONFIG = ROOT / "config" / "gateway.toml"
# 2026-09-01T00:00:00Z
DEFAULT_START_S = 1_788_220_800


def _arrays(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    keys = np.array([f"{r.line}/{r.device}" for r in rows], dtype=object)
    ts = np.array([round(r.ts * 1000) * 1_000_000 for r in rows], dtype=np.int64)
    X = np.array([[r.values[f] for f in FIELDS] for r in rows], dtype=np.float64)
    y = np.array([r.is_anomaly for r in rows], dtype=np.int8)
    faults = np.array([r.fault for r in rows], dtype=object)
    return keys, ts, X, y, faults


def train_active_model(
    models_dir: Path,
    *,
    seed: int = 101,
    devices: int = 6,
    hours: float = 4.0,
    params: dict | None = None,
) -> str:
    """Train the default detector on a labelled simulated plant (every fault type, the
    simulator's default rate) as ``python -m model train`` would; activate it."""
    sim = Simulator(lines=1, devices_per_line=devices, seed=seed, start_ts=1_780_000_000.0)
    rows = list(sim.run(max_steps=int(hours * 3600)))
    keys, ts, X, y, faults = _arrays(rows)
    data = Dataset(X, y, faults, None, FIELDS, source=f"simulator seed {seed}", groups=keys,
                   ts_ns=ts, label_column="is_anomaly", fault_column="fault")  # fmt: skip
    pipeline, meta = train(data, detector="dynamics", params=dict(params or {}),
                           validation_fraction=0.2, test_fraction=0.0)  # fmt: skip
    return save_artifact(models_dir, pipeline, meta, activate=True).name


@dataclass
class Scenario:
    line: str
    devices: dict[str, str]  # role (pattern, fault, normal) -> device name
    recording: Recording  # all devices, time order
    fault_kind: str
    fault_start_ns: int  # the injected fault, on device ``devices["fault"]``
    fault_end_ns: int
    since_ns: int
    until_ns: int
    recipe_c: float
    # Filled by store_history / label_alerts:
    model_version: str = ""
    replayed: Replay | None = None
    alerts: list[AlertPeriod] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)

    def key(self, role: str) -> str:
        return f"{self.line}/{self.devices[role]}"

    def alerts_of(self, role: str, kind: str = PROCESS_ANOMALY) -> list[AlertPeriod]:
        return [a for a in self.alerts if a.device == self.key(role) and a.kind == kind]


def build_history(
    line: str,
    *,
    seed: int = 7,
    hours: float = 3.0,
    recipe_c: float = 115.0,
    fault_kind: str = HUMIDITY_EXCURSION,
    fault_at: float = 0.55,
    start_s: int = DEFAULT_START_S,
    device_prefix: str = "press",
) -> Scenario:
    """Readings of three machines (module doc); device i is offset by i/3 s."""
    names = {role: f"{device_prefix}-{c}" for role, c in
             (("pattern", "a"), ("fault", "b"), ("normal", "c"))}  # fmt: skip
    steps = int(hours * 3600)
    fault_step = int(fault_at * steps)
    per_device = []
    for index, role in enumerate(("pattern", "fault", "normal")):
        model = MachineModel(np.random.default_rng([seed, index, 1]))
        if role == "pattern":
            # The new recipe: a hotter die (and a little jitter of its own per run).
            model.params = dataclasses.replace(model.params, running_c=recipe_c)
            model._new_phase_targets()
        injector = FaultInjector(np.random.default_rng([seed, index, 2]), (fault_kind,), 0.0,
                                 1.0, model.params.sound_std_db)  # fmt: skip
        rows = []
        for step in range(steps):
            if role == "fault":
                injector.start_probability = 1.0 if step == fault_step else 0.0
            values, label = injector.apply(model.step(1.0))
            if values is None:
                continue
            ts = start_s + step + index / 3
            rows.append((round(ts * 1000) * 1_000_000, values, label))
        per_device.append((role, rows))
    lines, devices, ts, X, faults = [], [], [], [], []
    for role, rows in per_device:
        for t, values, label in rows:
            lines.append(line)
            devices.append(names[role])
            ts.append(t)
            X.append([values[f] for f in FIELDS])
            faults.append(label)
    ts_a = np.array(ts, dtype=np.int64)
    order = np.lexsort((np.array(devices), ts_a))
    faults_a = np.array(faults, dtype=object)[order]
    rec = Recording(
        lines=np.array(lines, dtype=object)[order],
        devices=np.array(devices, dtype=object)[order],
        ts_ns=ts_a[order],
        values=np.array(X)[order],
        fields=FIELDS,
        labels=(faults_a != "none").astype(np.int8),
        faults=faults_a,
    )
    hit = np.flatnonzero(faults_a == fault_kind)
    assert hit.size, "the fault was not injected"
    return Scenario(
        line=line,
        devices=names,
        recording=rec,
        fault_kind=fault_kind,
        fault_start_ns=int(rec.ts_ns[hit[0]]),
        fault_end_ns=int(rec.ts_ns[hit[-1]]),
        since_ns=int(rec.ts_ns[0]),
        until_ns=int(rec.ts_ns[-1]) + NS,
        recipe_c=recipe_c,
    )


def write_lines(url: str, database: str, lines: list[str], batch: int = 5000) -> None:
    for i in range(0, len(lines), batch):
        resp = urllib3.request(
            "POST",
            f"{url}/write?db={database}&precision=ns",
            body="\n".join(lines[i : i + batch]).encode(),
        )
        assert resp.status == 204, resp.data


def replay_scenario(scenario: Scenario, scorer: Scorer, gateway_config: Path = GATEWAY_CONFIG):
    cfg = load_gateway_config(gateway_config)
    result = replay(scenario.recording, scorer, cfg.alerts, cfg.sensor_faults)
    return result, alert_periods(result, scenario.until_ns)


def store_history(
    scenario: Scenario,
    url: str,
    database: str,
    models_dir: Path,
    gateway_config: Path = GATEWAY_CONFIG,
) -> Scenario:
    """Score the history with the active model as the gateway would, and write the
    readings, sensor-fault transitions and alert events to InfluxDB."""
    scorer = load_scorer(models_dir)
    result, periods = replay_scenario(scenario, scorer, gateway_config)
    scenario.model_version = scorer.version
    scenario.replayed = result
    scenario.alerts = periods
    rec = scenario.recording
    encoder = ReadingEncoder()
    points = []
    for i in range(len(rec)):
        reading = Reading(str(rec.lines[i]), str(rec.devices[i]), int(rec.ts_ns[i]),
                          dict(zip(FIELDS, rec.values[i].tolist(), strict=True)))  # fmt: skip
        points.append(encoder.scored(reading, scorer.version, float(result.scores[i]),
                                     bool(result.flags[i])))  # fmt: skip
    score_at = {(f"{rec.lines[i]}/{rec.devices[i]}", int(rec.ts_ns[i])): float(result.scores[i])
                for i in range(len(rec))}  # fmt: skip
    for p in periods:
        line, device = p.device.split("/", 1)
        fault = p.detail if p.kind != PROCESS_ANOMALY else ""
        ident = alert_id(line, device, p.kind, p.start_ns, fault)
        tags = {LINE: line, DEVICE: device, KIND: p.kind, FAULT: fault}
        fields: dict = {ALERT_ID: ident, STARTED_NS: p.start_ns}
        if p.kind == PROCESS_ANOMALY:
            fields[SCORE] = score_at.get((p.device, p.start_ns), 0.0)
        points.append(encode_point(ALERT_EVENT, {**tags, EVENT: FIRING}, fields, p.start_ns))
        if p.resolved:
            points.append(encode_point(ALERT_EVENT, {**tags, EVENT: RESOLVED}, fields, p.end_ns))
        if p.kind != PROCESS_ANOMALY:  # the gateway's sensor_fault transitions
            st = {LINE: line, DEVICE: device, KIND: fault}
            points.append(encode_point(SENSOR_FAULT, st, {ACTIVE: 1, DETAIL: fault}, p.start_ns))
            if p.resolved:
                points.append(encode_point(SENSOR_FAULT, st, {ACTIVE: 0, DETAIL: ""}, p.end_ns))
    write_lines(url, database, points)
    return scenario


def label_alerts(
    scenario: Scenario,
    url: str,
    database: str,
    *,
    by: str = "operator",
    labelled_ns: int | None = None,
    pattern_label: str = FALSE_ALARM,
) -> list[dict]:
    """Operators' labels (module doc), written as the API writes them; returns them."""
    labelled_ns = labelled_ns if labelled_ns is not None else scenario.until_ns + 3600 * NS
    labels = []
    for p in scenario.alerts_of("pattern"):
        labels.append((p, pattern_label, "", "new recipe R7 runs at 115 C: normal"))
    for p in scenario.alerts_of("fault"):
        if p.start_ns <= scenario.fault_end_ns + 30 * NS and p.end_ns >= scenario.fault_start_ns:
            labels.append((p, REAL_FAULT, scenario.fault_kind, "confirmed on site"))
    points, out = [], []
    for p, label, fault_type, note in labels:
        line, device = p.device.split("/", 1)
        ident = alert_id(line, device, p.kind, p.start_ns)
        ended = p.end_ns if p.resolved else 0
        fields = {ALERT_ID: ident, LABEL: label, FAULT_TYPE: fault_type, NOTE: note, BY: by,
                  STARTED_NS: p.start_ns, ENDED_NS: ended, LABELLED_NS: labelled_ns}  # fmt: skip
        points.append(encode_point(ALERT_LABEL, {LINE: line, DEVICE: device, KIND: p.kind},
                                   fields, p.start_ns))  # fmt: skip
        out.append({"alert_id": ident, "device": p.device, "label": label,
                    "start_ns": p.start_ns, "end_ns": p.end_ns})  # fmt: skip
    write_lines(url, database, points)
    scenario.labels = out
    return out
