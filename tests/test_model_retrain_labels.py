"""Operators' feedback labels teach the model (model.alert_labels, model.retrain,
backtest.labels, ``python -m backtest --influx-url``), against a real ``influxd``.

The scenario (tests/labelled_history.py, history seed 7, model seed 101): press A runs a
new recipe at 115 °C that the active model flags every production cycle (all its
alerts labelled false alarms); press B has one genuine humidity excursion (labelled a
real fault); press C runs normally.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backtest import __main__ as backtest_cli
from backtest.labels import judge_labels
from backtest.replay import AlertPeriod
from contract.alerting import FALSE_ALARM, REAL_FAULT
from contract.lineprotocol import encode_point
from contract.schema import ALERT_EVENT, ALERT_LABEL
from model import cli
from model.alert_labels import LabelledAlert, read_labels
from model.artifact import active_version
from model.cli_versions import format_retrain
from model.config import RetrainSettings
from model.influx_history import HistoryFilter, InfluxV1
from model.label_gate import label_checks
from model.retrain import LABELS_GATE, RetrainRequest, run_retrain
from model.scorer import load_scorer
from tests.helpers import unique
from tests.labelled_history import (
    GATEWAY_CONFIG,
    NS,
    Scenario,
    build_history,
    label_alerts,
    replay_scenario,
    store_history,
    train_active_model,
    write_lines,
)

# --- pure parts ----------------------------------------------------------------------


def _label(label: str, start: int, end: int, device: str = "d", kind: str = "process_anomaly"):
    return LabelledAlert(f"{start:016x}", "l", device, kind, label, "", start * NS, end * NS)


def _alert(start: int, end: int, device: str = "d", kind: str = "process_anomaly"):
    return AlertPeriod(f"l/{device}", kind, "", start * NS, end * NS, True)


def test_judge_labels_by_hand() -> None:
    labels = [
        _label(FALSE_ALARM, 100, 200),
        _label(FALSE_ALARM, 1000, 1100),
        _label(REAL_FAULT, 500, 600),
        _label(REAL_FAULT, 2000, 2100),
        _label(REAL_FAULT, 3000, 3100, kind="sensor_fault"),
    ]
    alerts = [
        _alert(90, 120),  # already firing when the false alarm started: on it
        _alert(150, 160),  # a second one on the same false alarm
        _alert(620, 700),  # 20 s after the fault's end: within the 30 s grace, caught
        _alert(2200, 2300),  # 100 s after the second fault: missed, unlabelled
        _alert(500, 510, device="other"),  # another device: unlabelled
        _alert(3000, 3010, kind="sensor_fault"),  # judged by its own kind
    ]
    f = judge_labels(alerts, labels, grace_s=30, kinds=("process_anomaly",))
    assert (f.false_alarm_periods, f.false_alarm_periods_alerted, f.alerts_on_false_alarms) == (
        2,
        1,
        2,
    )
    assert (f.real_faults, f.real_faults_caught) == (2, 1)
    assert f.missed == [f"{2000:016x}"]
    assert f.unlabelled_alerts == 2 and f.alerts == 5
    everything = judge_labels(alerts, labels, grace_s=30)
    assert (everything.real_faults, everything.real_faults_caught) == (3, 2)


def test_label_checks_by_hand() -> None:
    def figures(on_false: int, caught: list[str]) -> dict:
        return {"false_alarm_periods": 4, "false_alarm_periods_alerted": min(on_false, 4),
                "alerts_on_false_alarms": on_false, "real_faults": 2,
                "real_faults_caught": len(caught), "caught": caught}  # fmt: skip

    def ok(candidate: dict, active: dict) -> list[bool]:
        return [c["ok"] for c in label_checks(candidate, active)]

    assert ok(figures(1, ["a", "b"]), figures(5, ["a", "b"])) == [True, True]
    # Not fewer alerts on labelled false alarms; a confirmed fault lost.
    assert ok(figures(5, ["a", "b"]), figures(5, ["a"])) == [False, True]
    assert ok(figures(0, ["b"]), figures(5, ["a"])) == [True, False]
    # The active model raised none on them: the candidate may raise none either.
    assert ok(figures(0, []), figures(0, [])) == [True, True]
    assert ok(figures(1, []), figures(0, [])) == [False, True]


# --- the scenario, stored in a fresh database -------------------------------------------


@pytest.fixture(scope="module")
def stored(influxdb, tmp_path_factory) -> dict:
    database = unique("labels").replace("-", "_")
    influxdb.create_database(database)
    base = tmp_path_factory.mktemp("labels")
    models = base / "models"
    original = train_active_model(models)
    scenario = build_history(unique("lab"), seed=7)
    store_history(scenario, influxdb.url, database, models)
    label_alerts(scenario, influxdb.url, database)
    return {"url": influxdb.url, "database": database, "models": models, "base": base,
            "original": original, "scenario": scenario}  # fmt: skip


def request(stored: dict, models: Path, **kwargs) -> RetrainRequest:
    sc: Scenario = stored["scenario"]
    return RetrainRequest(
        models_dir=models,
        since_ns=sc.since_ns,
        until_ns=sc.until_ns,
        settings=RetrainSettings(influx_url=stored["url"], database=stored["database"]),
        line=sc.line,
        gateway_config=GATEWAY_CONFIG,
        **kwargs,
    )


def copy_models(stored: dict, name: str) -> Path:
    target = stored["base"] / unique(name)
    shutil.copytree(stored["models"], target, symlinks=True)
    return target


def show(report) -> str:
    text = "\n".join(format_retrain(report))
    print(text)  # for the log of a failed run
    return text


@pytest.fixture(scope="module")
def learned(stored) -> dict:
    """One retrain that learns from the labels (the default)."""
    models = copy_models(stored, "learned")
    report = run_retrain(request(stored, models))
    return {"models": models, "report": report, "text": show(report)}


@pytest.mark.integration
def test_the_scenario_is_what_it_claims(stored) -> None:
    sc: Scenario = stored["scenario"]
    pattern, fault = sc.alerts_of("pattern"), sc.alerts_of("fault")
    # The active model flags the new recipe cycle after cycle, on its temperature level.
    assert len(pattern) >= 20
    assert {p.detail for p in pattern} == {"temperature_c__level"}
    # B's fault raised one process-anomaly alert; C raised none.
    assert len(fault) == 1 and not sc.alerts_of("normal")
    assert fault[0].start_ns <= sc.fault_end_ns and fault[0].end_ns >= sc.fault_start_ns
    labels = [lb["label"] for lb in sc.labels]
    assert labels.count(FALSE_ALARM) == len(pattern) and labels.count(REAL_FAULT) == 1


@pytest.mark.integration
def test_labels_are_read_back(stored) -> None:
    sc: Scenario = stored["scenario"]
    client = InfluxV1(stored["url"], stored["database"])
    labels = read_labels(client, HistoryFilter(sc.since_ns, sc.until_ns, sc.line))
    assert sorted(a.alert_id for a in labels) == sorted(lb["alert_id"] for lb in sc.labels)
    assert labels == sorted(labels, key=lambda a: (a.key, a.start_ns, a.alert_id))
    by_id = {a.alert_id: a for a in labels}
    for lb in sc.labels:
        got = by_id[lb["alert_id"]]
        assert (got.label, got.start_ns, got.end_ns, got.key) == (
            lb["label"], lb["start_ns"], lb["end_ns"], lb["device"],
        )  # fmt: skip
    real = [a for a in labels if a.is_real_fault]
    assert [(a.fault_type, a.by) for a in real] == [(sc.fault_kind, "operator")]

    # Another line: relabelled (the latest label wins), ended_ns 0 (the period ends at
    # the alert's resolved event, else at the end of the window).
    line = unique("relabel")
    t = sc.since_ns + 600 * NS
    tags = {"line": line, "device": "m", "kind": "process_anomaly"}

    def label(alert: str, value: str, labelled: int, start: int, **extra: str) -> str:
        fields = {"alert_id": alert, "label": value, "fault_type": "", "note": "", "by": "x",
                  "started_ns": start, "ended_ns": 0, "labelled_ns": labelled}  # fmt: skip
        return encode_point(ALERT_LABEL, {**tags, **extra}, fields, start)

    write_lines(stored["url"], stored["database"], [
        label("a" * 16, REAL_FAULT, 1, t),
        label("a" * 16, FALSE_ALARM, 2, t),  # same point: replaces it
        label("b" * 16, FALSE_ALARM, 5, t + 100 * NS),
        label("b" * 16, REAL_FAULT, 4, t + 100 * NS, fault="x"),  # older, another series
        encode_point(ALERT_LABEL, {**tags, "kind": "sensor_fault"},
                     {"alert_id": "c" * 16, "label": "maybe"}, t),  # not a label: skipped
        encode_point(ALERT_EVENT, {**tags, "event": "resolved"},
                     {"alert_id": "a" * 16, "started_ns": t}, t + 42 * NS),
    ])  # fmt: skip
    got = read_labels(client, HistoryFilter(sc.since_ns, sc.until_ns, line))
    assert [(a.alert_id, a.label, a.start_ns - t, a.end_ns - t, a.resolved) for a in got] == [
        ("a" * 16, FALSE_ALARM, 0, 42 * NS, True),
        ("b" * 16, FALSE_ALARM, 100 * NS, sc.until_ns - t, False),
    ]


@pytest.mark.integration
def test_retrain_learns_a_labelled_false_alarm_and_keeps_the_fault(stored, learned) -> None:
    sc: Scenario = stored["scenario"]
    report, text = learned["report"], learned["text"]
    n_pattern = len(sc.alerts_of("pattern"))
    h = report.history
    assert h["labels"] == "use"
    assert h["labelled_alerts"] == {REAL_FAULT: 1, FALSE_ALARM: n_pattern}
    used = h["labels_used"]
    # A's flagged readings in its false-alarm periods are trained on as normal ...
    assert used["false_alarm_kept"] > 0.9 * h["anomalous"] - used["real_fault_readings"]
    # ... and B's fault is left out with its margin, flagged or not.
    assert used["real_fault_readings"] > used["real_fault_excluded_only"] > 0
    checks = {c["check"]: c for c in report.checks}
    assert list(checks) == [
        "held-out false alerts per machine-day",
        "alerts on labelled false alarms",
        "labelled real faults caught",
    ]
    assert all(c["ok"] for c in report.checks) and report.promoted
    assert active_version(learned["models"]) == report.candidate_dir.name
    cand, act = report.candidate.labels, report.active.labels
    assert act["alerts_on_false_alarms"] == act["false_alarm_periods"] == n_pattern
    assert cand["alerts_on_false_alarms"] == 0
    assert cand["real_faults_caught"] == act["real_faults_caught"] == 1
    # An alert on the confirmed fault is no false alert in the held-out figure either.
    assert report.candidate.backtest["false_alerts"] <= report.active.backtest["false_alerts"]
    assert "[ok  ] alerts on labelled false alarms: candidate 0" in text
    assert "operators' labels: " in text and "trained on as normal: " in text

    # The promoted model over the whole history: quiet on the recipe, B's fault caught.
    promoted = load_scorer(learned["models"])
    _, periods = replay_scenario(sc, promoted)
    mine = [p for p in periods if p.kind == "process_anomaly"]
    assert not [p for p in mine if p.device == sc.key("pattern")]
    fault = [p for p in mine if p.device == sc.key("fault")]
    assert any(sc.fault_start_ns <= p.start_ns <= sc.fault_end_ns + 30 * NS for p in fault)


@pytest.mark.integration
def test_without_learning_from_labels_the_candidate_still_alerts(stored, learned) -> None:
    """The old exclusion (flagged readings are not normal) keeps A's recipe out of
    training, so a candidate trained as without labels goes on alerting there; once a
    model has learnt the recipe, the label gate refuses such a candidate."""
    sc: Scenario = stored["scenario"]
    n_pattern = len(sc.alerts_of("pattern"))
    gate = run_retrain(request(stored, copy_models(stored, "gate"), labels=LABELS_GATE))
    show(gate)
    assert "labels_used" not in gate.history
    assert gate.candidate.labels["false_alarm_periods_alerted"] >= 0.9 * n_pattern

    models = learned["models"]
    learned_version = active_version(models)
    relapse = run_retrain(request(stored, models, labels=LABELS_GATE))
    text = show(relapse)
    checks = {c["check"]: c for c in relapse.checks}
    assert not checks["alerts on labelled false alarms"]["ok"]
    assert checks["alerts on labelled false alarms"]["active"] == 0
    assert checks["labelled real faults caught"]["ok"]
    assert not relapse.promoted and active_version(models) == learned_version
    assert "[FAIL] alerts on labelled false alarms" in text


@pytest.mark.integration
def test_no_labels_behaves_as_before(stored, tmp_path, monkeypatch, capsys) -> None:
    sc: Scenario = stored["scenario"]
    models = copy_models(stored, "nolabels")
    monkeypatch.setattr(cli, "setup_logging", lambda level=None: None)
    out = tmp_path / "report.json"
    args = ["retrain", "--influx-url", stored["url"], "--database", stored["database"],
            "--line", sc.line, "--models-dir", str(models), "--since", iso(sc.since_ns),
            "--until", iso(sc.until_ns), "--gateway-config", str(GATEWAY_CONFIG),
            "--no-labels", "--out", str(out)]  # fmt: skip
    assert cli.main(args) == 0
    assert "operators' labels ignored" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [c["check"] for c in report["checks"]] == ["held-out false alerts per machine-day"]
    assert report["labelled_alerts"] == [] and report["candidate"]["labels"] is None
    assert "labels_used" not in report["history"]


@pytest.mark.integration
def test_backtest_on_stored_history(stored, learned, tmp_path, capsys) -> None:
    sc: Scenario = stored["scenario"]
    models = learned["models"]
    out, md = tmp_path / "bt.json", tmp_path / "bt.md"
    code = backtest_cli.main([
        "--influx-url", stored["url"], "--database", stored["database"], "--line", sc.line,
        "--since", iso(sc.since_ns), "--until", iso(sc.until_ns),
        "--model", f"old={models / stored['original']}", "--model", f"new={models / 'current'}",
        "--config", str(GATEWAY_CONFIG), "--json", str(out), "--markdown", str(md),
    ])  # fmt: skip
    text = capsys.readouterr().out
    print(text)
    assert code == 0
    report = json.loads(out.read_text())
    old, new = report["models"]["old"], report["models"]["new"]
    n_pattern = len(sc.alerts_of("pattern"))
    assert old["labels"]["alerts_on_false_alarms"] == n_pattern
    assert new["labels"]["alerts_on_false_alarms"] == 0
    assert old["labels"]["real_faults_caught"] == new["labels"]["real_faults_caught"] == 1
    # The confirmed fault is the one episode; every alert outside it is false.
    assert old["per_fault"][sc.fault_kind]["detected"] == 1
    assert new["per_fault"][sc.fault_kind]["detected"] == 1
    assert old["false_alerts"] >= n_pattern > new["false_alerts"]
    assert (
        new["labels"]["false_alerts_per_machine_day"]
        < old["labels"]["false_alerts_per_machine_day"]
    )
    assert len(report["labelled_alerts"]) == n_pattern + 1
    assert "alerts on labelled false alarms" in md.read_text()
    assert "confirmed faults caught (own kind)  1 of 1" in text
    # The CSV mode is unchanged; one of the two sources is required.
    assert backtest_cli.main(["--since", iso(sc.since_ns)]) == 2


def iso(ts_ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")
