"""model.retrain / model.influx_history: retraining from the gateway's InfluxDB history,
"not worse" promotion, the activation history and rollback."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import urllib3

from backtest.episodes import episodes_from_labels
from devstack.influxdb import query
from model import cli
from model.artifact import (
    ModelError,
    activate,
    active_version,
    read_history,
    read_metadata,
    rollback,
    save_artifact,
)
from model.cli_versions import format_retrain
from model.config import RetrainSettings
from model.dataset import Dataset
from model.influx_history import (
    HistoryFilter,
    InfluxV1,
    near_faults,
    read_fault_intervals,
    read_fault_periods,
)
from model.influx_history import read_history as read_influx_history
from model.retrain import (
    ModelFigures,
    RetrainReport,
    RetrainRequest,
    Tolerances,
    clean_windows,
    holdout_figures,
    not_worse,
    run_retrain,
)
from model.training import train
from tests.conftest import TEST_DB
from tests.helpers import ROOT, python_module, summary, unique, wait_for_points

NS = 1_000_000_000
T0 = 1_790_000_000 * NS  # a fixed instant in 2026, inside any test's --since range


# --- pure parts --------------------------------------------------------------------------


def test_holdout_figures_by_hand() -> None:
    scores = np.array([0.1, 0.9, 0.2, 0.95, 0.96])
    keys = np.array(["a", "a", "a", "b", "b"])
    fig = holdout_figures(scores, 0.5, keys)
    assert fig["rows"] == 5
    assert fig["false_alarm_rate"] == pytest.approx(3 / 5)
    # Pairs within a device: a0-a1 flips, a1-a2 flips, b0-b1 does not (a2-b0 is no pair).
    assert fig["flap_rate"] == pytest.approx(2 / 3)
    assert fig["mean_abs_score_change"] == pytest.approx((0.8 + 0.7 + 0.01) / 3)


def figures(per_day: float | None, recall: dict[str, float | None] | None = None) -> ModelFigures:
    labelled = None
    if recall is not None:
        labelled = {
            "per_fault": {
                kind: {"episodes": 4, "detected": round((r or 0) * 4), "recall": r}
                for kind, r in recall.items()
            }
        }
    return ModelFigures("v", "dynamics", 0.5, {"false_alerts_per_machine_day": per_day},
                        labelled=labelled)  # fmt: skip


def test_not_worse_rule() -> None:
    tol = Tolerances(false_alerts_per_machine_day=0.5, recall=0.0)

    def verdict(candidate: ModelFigures, active: ModelFigures) -> list[bool]:
        return [c["ok"] for c in not_worse(candidate, active, tol)]

    # False alerts per machine-day: at most the active model's + the tolerance.
    assert verdict(figures(1.5), figures(1.0)) == [True]
    assert verdict(figures(1.51), figures(1.0)) == [False]
    assert verdict(figures(0.0), figures(3.0)) == [True]
    # No span of time held out: not comparable, so not "not worse".
    assert verdict(figures(None), figures(1.0)) == [False]
    # With labels: one check per fault type with episodes; no type may lose recall.
    same = {"spike": 0.75, "stuck": 0.5}
    assert verdict(figures(1.0, same), figures(1.0, same)) == [True, True, True]
    lost = {"spike": 0.5, "stuck": 1.0}
    assert verdict(figures(0.0, lost), figures(1.0, same)) == [True, False, True]
    checks = not_worse(figures(0.0, lost), figures(1.0, same), tol)
    assert [c["check"] for c in checks] == [
        "held-out false alerts per machine-day",
        "labelled episode recall: spike",
        "labelled episode recall: stuck",
    ]
    # A fault type without episodes (recall undefined, null in the figures) is no check.
    none = {"spike": None}
    assert len(not_worse(figures(1.0, none), figures(1.0, none), tol)) == 1
    loose = Tolerances(recall=0.25)
    assert all(c["ok"] for c in not_worse(figures(0.0, lost), figures(1.0, same), loose))


def test_clean_windows_and_fault_periods() -> None:
    keys = np.array(["a"] * 5 + ["b"] * 3)
    excluded = np.zeros(8, dtype=bool)
    excluded[1] = True
    assert clean_windows(keys, excluded, 1).tolist() == [True, False] + [True] * 6
    assert (
        clean_windows(keys, excluded, 3).tolist() == [True, False, False, False, True] + [True] * 3
    )
    ts = np.array([0, 10, 100, 161, 200, 0, 50, 61], dtype=np.int64) * NS
    periods = {"a": np.array([[100 * NS, 100 * NS]]), "b": np.array([[0, 0]])}
    # +-60 s around a period: a at 100 s covers 40..160 s; b at 0 covers up to 60 s.
    assert near_faults(keys, ts, periods, 60).tolist() == [
        False, False, True, False, False, True, True, False,
    ]  # fmt: skip


# --- activation history and rollback -------------------------------------------------


def test_history_and_rollback(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(200, 3)), None, None, None, ("a", "b", "c"))
    pipeline, meta = train(data, detector="pca_t2q")
    models = tmp_path / "models"
    v1 = save_artifact(models, pipeline, {**meta, "created_at": "2026-01-01T00:00:00Z"}).name
    v2 = save_artifact(models, pipeline, {**meta, "created_at": "2026-01-02T00:00:00Z"}).name
    v3 = save_artifact(
        models, pipeline, {**meta, "created_at": "2026-01-03T00:00:00Z"}, activate=False
    ).name
    activate(models, v3)
    entries = read_history(models)
    assert [(e["version"], e["previous"], e["reason"]) for e in entries] == [
        (v1, None, "train"),
        (v2, v1, "train"),
        (v3, v2, "activate"),
    ]
    # Rollback walks back through deployments, like an undo stack.
    assert rollback(models) == (v3, v2)
    assert rollback(models) == (v2, v1)
    with pytest.raises(ModelError, match="first version activated"):
        rollback(models)
    assert active_version(models) == v1
    assert read_history(models)[-1]["reason"] == "rollback"
    assert not [p for p in models.iterdir() if p.name.startswith(".")]
    (models / "history.json").write_text("{not json")
    with pytest.raises(ModelError, match="history unreadable"):
        rollback(models)


# --- InfluxDB reading (real influxd) ------------------------------------------------------


def write_lines(url: str, lines: list[str]) -> None:
    resp = urllib3.request(
        "POST", f"{url}/write?db={TEST_DB}&precision=ns", body="\n".join(lines).encode()
    )
    assert resp.status == 204, resp.data


@pytest.mark.integration
def test_history_is_read_in_slices_and_chunks(influxdb) -> None:
    line = unique("hist")
    point = "reading,line={l},device={d},model_version={v} {f} {t}"
    fields = "temperature_c={:.1f},humidity_pct=40.0,sound_db=70.0,score=0.1,is_anomaly={}"
    lines = [
        point.format(l=line, d="a", v="m1", f=fields.format(50 + i, str(i == 2).lower()),
                     t=T0 + i * NS)
        for i in range(5)
    ]  # fmt: skip
    lines += [
        # The same reading stored again under another model version: one reading.
        point.format(l=line, d="a", v="m2", f=fields.format(52, "false"), t=T0 + 2 * NS),
        # A point without sound_db cannot be used.
        point.format(l=line, d="b", v="m1", f="temperature_c=1.0,humidity_pct=2.0,score=0.1,"
                     "is_anomaly=false", t=T0),
        point.format(l=line, d="b", v="m1", f=fields.format(60, "false"), t=T0 + 1 * NS),
        # Another line: filtered out.
        point.format(l=line + "x", d="a", v="m1", f=fields.format(0, "false"), t=T0),
    ]  # fmt: skip
    write_lines(influxdb.url, lines)
    client = InfluxV1(influxdb.url, TEST_DB, chunk_size=2)
    flt = HistoryFilter(T0 - 10 * NS, T0 + 10 * NS, line=line)
    history = read_influx_history(
        client, ("temperature_c", "humidity_pct", "sound_db"), flt, window_s=1.5
    )
    assert history.keys.tolist() == [f"{line}/a"] * 5 + [f"{line}/b"]
    assert (history.ts_ns - T0).tolist() == [i * NS for i in range(5)] + [NS]
    assert history.X[:, 0].tolist() == [50.0, 51.0, 52.0, 53.0, 54.0, 60.0]
    assert history.anomalous.tolist() == [False, False, True, False, False, False]
    assert (history.duplicates, history.incomplete) == (1, 1)
    only_b = HistoryFilter(T0 - 10 * NS, T0 + 10 * NS, line=line, device_regex="^b$")
    assert len(read_influx_history(client, ("temperature_c",), only_b)) == 2


@pytest.mark.integration
def test_sensor_fault_periods(influxdb) -> None:
    line = unique("flt")
    fault = "sensor_fault,line={l},device={d},kind={k} active={a}i {t}"
    write_lines(
        influxdb.url,
        [
            # Already active before the range, cleared at +1 s; active again from +3 s on.
            fault.format(l=line, d="a", k="stuck", a=1, t=T0 - 100 * NS),
            fault.format(l=line, d="a", k="stuck", a=0, t=T0 + 1 * NS),
            fault.format(l=line, d="a", k="stuck", a=1, t=T0 + 3 * NS),
            # Two kinds on one device; a clear without a start is ignored.
            fault.format(l=line, d="b", k="jump", a=1, t=T0 + 1 * NS),
            fault.format(l=line, d="b", k="jump", a=0, t=T0 + 2 * NS),
            fault.format(l=line, d="b", k="range", a=0, t=T0 + 4 * NS),
        ],
    )
    client = InfluxV1(influxdb.url, TEST_DB)
    flt = HistoryFilter(T0 - 10 * NS, T0 + 10 * NS, line=line)
    periods = read_fault_intervals(client, flt, margin_s=5, window_s=2)
    lo, hi = T0 - 15 * NS, T0 + 15 * NS  # the range widened by the margin
    assert {k: (v - T0).tolist() for k, v in periods.items()} == {
        f"{line}/a": [[lo - T0, NS], [3 * NS, hi - T0]],
        f"{line}/b": [[NS, 2 * NS]],
    }
    # The same periods with their kind: the backtest's known episodes.
    kinds = [(p.device, p.kind) for p in read_fault_periods(client, flt, 5, window_s=2)]
    assert kinds == [(f"{line}/a", "stuck")] * 2 + [(f"{line}/b", "jump")]


# --- end to end: simulator -> gateway -> InfluxDB -> retrain -> promote / rollback -----


def count_near(url: str, line: str, periods: list[dict], margin_s: float, until_ns: int) -> int:
    """Readings within the margin of a sensor-fault period, counted the slow, obvious way."""
    count = 0
    margin = margin_s * NS
    for series in query(url, f"SELECT score FROM reading WHERE line='{line}' GROUP BY device",
                        TEST_DB):  # fmt: skip
        key = f"{line}/{series['tags']['device']}"
        spans = [(p["start_ns"], p["end_ns"]) for p in periods if p["device"] == key]
        for t, _ in series["values"]:
            count += t < until_ns and any(a - margin <= t <= b + margin for a, b in spans)
    return count


@pytest.mark.integration
def test_retrain_end_to_end_promote_and_rollback(
    start_gateway, mosquitto, influxdb, models_dir, tmp_path, monkeypatch, capsys
) -> None:
    start_gateway()
    prefix = unique("rt")
    line = f"{prefix}1"
    result = python_module(
        "sensors.simulate", "--broker-port", str(mosquitto.port), "--lines", "1",
        "--devices", "3", "--count", "3000", "--speed", "0", "--seed", "5", "--faults", "all",
        "--fault-rate", "12", "--line-prefix", prefix, "--device-prefix", unique("rtd"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    published = int(summary(result.stdout)["published"])
    where = f"line='{line}'"
    assert wait_for_points(influxdb.url, TEST_DB, where, published, timeout_s=60) == published
    # A sensor fault on one device, written as the gateway writes them (start, clear).
    device = query(influxdb.url, f"SHOW TAG VALUES FROM reading WITH KEY = device WHERE "
                   f"{where}", TEST_DB)[0]["values"][0][1]  # fmt: skip
    times = query(influxdb.url, f"SELECT score FROM reading WHERE device='{device}'", TEST_DB)
    t_fault = times[0]["values"][500][0]
    write_lines(
        influxdb.url,
        [
            f"sensor_fault,line={line},device={device},kind=test active=1i {t_fault}",
            f"sensor_fault,line={line},device={device},kind=test active=0i {t_fault + 30 * NS}",
        ],
    )
    flagged = query(influxdb.url, f"SELECT count(score) FROM reading WHERE {where} AND "
                    "is_anomaly = true", TEST_DB)  # fmt: skip
    anomalous = flagged[0]["values"][0][1] if flagged else 0

    models = tmp_path / "models"
    shutil.copytree(models_dir, models, symlinks=True)
    original = active_version(models)
    report_path = tmp_path / "report.json"
    common = ["--influx-url", influxdb.url, "--database", TEST_DB, "--line", line,
              "--models-dir", str(models)]  # fmt: skip
    result = python_module("model", "retrain", *common, "--out", str(report_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    print(result.stdout)  # the comparison, for the log of a failed run
    history = report["history"]
    assert history["readings"] == published
    assert history["anomalous"] == anomalous
    # The injected period is among those read (the gateway adds its own, e.g. stuck or
    # dropout), and exactly the readings near those periods were left out.
    periods = report["sensor_fault_periods"]
    injected = {"device": f"{line}/{device}", "kind": "test", "start_ns": t_fault,
                "end_ns": t_fault + 30 * NS}  # fmt: skip
    assert injected in periods
    expected = count_near(influxdb.url, line, periods, 60.0, history["until_ns"])
    assert history["near_sensor_fault"] == expected
    # At least the injected fault: 30 s +- 60 s of one device sampled every second.
    assert history["near_sensor_fault"] >= 150
    # The candidate uses the active model's detector: a plain one is trained on the clean
    # readings before the split only, the time-aware one on all of them (labelled).
    assert report["candidate"]["detector"] == report["active"]["detector"]
    if history["exclusion"] == "labelled":
        assert history["train"] + history["holdout"] == history["readings"]
    else:
        assert history["train"] + history["holdout_clean"] == history["usable"]
    assert report["candidate"]["backtest"]["readings"] == history["holdout"]
    assert report["promoted"] == report["not_worse"] == all(c["ok"] for c in report["checks"])
    assert [c["check"] for c in report["checks"]] == ["held-out false alerts per machine-day"]
    for label in ("false alerts per machine-day", "flap rate", "decision:"):
        assert label in result.stdout
    candidate = report["candidate_version"]
    assert (models / candidate / "metadata.json").is_file()
    meta = json.loads((models / candidate / "metadata.json").read_text())
    assert meta["retrain"]["history"]["readings"] == published
    assert active_version(models) == (candidate if report["promoted"] else original)

    # --force promotes whatever the comparison says; a different detector this time.
    monkeypatch.setattr(cli, "setup_logging", lambda level=None: None)
    before_forced = active_version(models)
    assert cli.main(["retrain", *common, "--force", "--detector", "pca_t2q"]) == 0
    assert "decision: promoted" in capsys.readouterr().out
    forced = active_version(models)
    assert forced not in (before_forced, candidate)
    assert json.loads((models / forced / "metadata.json").read_text())["detector"] == "pca_t2q"
    assert read_history(models)[-1]["version"] == forced

    # Rollback goes back one deployment at a time, to the fixture's first model.
    assert cli.main(["rollback", "--models-dir", str(models)]) == 0
    assert active_version(models) == before_forced
    if before_forced != original:
        assert cli.main(["rollback", "--models-dir", str(models)]) == 0
    assert active_version(models) == original
    assert cli.main(["rollback", "--models-dir", str(models)]) == 2
    assert "first version activated" in capsys.readouterr().err
    assert active_version(models) == original


# --- the time-aware detector: retrain from stored history, promote by the backtest -----

# Small per-device fits so that a short simulated history trains in seconds.
SMALL = {"fit_after": 300, "warmup": 20}
GATEWAY_CONFIG = ROOT / "config" / "gateway.toml"


def simulate(
    out: Path, prefix: str, seed: int, duration: int, start: str, fault_rate: float = 2.0
) -> list[dict]:
    result = python_module(
        "sensors.simulate", "--csv", str(out), "--lines", "1", "--devices", "3",
        "--interval", "1", "--duration", str(duration), "--seed", str(seed), "--faults", "all",
        "--start", start, "--line-prefix", prefix, "--fault-rate", str(fault_rate),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as fh:
        return list(csv.DictReader(fh))


def epoch_ns(ts: str) -> int:
    when = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(UTC)
    return round(when.timestamp() * 1e6) * 1000


@pytest.fixture(scope="module")
def stored_history(influxdb, tmp_path_factory) -> dict:
    """40 min of 3 machines stored as the gateway stores them: readings with the
    simulator's anomalies flagged, and its stuck sensors as sensor-fault periods."""
    prefix = unique("dyn")
    rows = simulate(tmp_path_factory.mktemp("dyn") / "h.csv", prefix, 5, 2400,
                    "2026-10-01T00:00:00Z")  # fmt: skip
    ts = [epoch_ns(r["ts"]) for r in rows]
    point = (
        "reading,line={line},device={device},model_version=sim temperature_c={temperature_c},"
        "humidity_pct={humidity_pct},sound_db={sound_db},score=0.1,is_anomaly={flag} {t}"
    )
    lines = [point.format(**r, flag=str(r["is_anomaly"] == "1").lower(), t=t)
             for r, t in zip(rows, ts, strict=True)]  # fmt: skip
    keys = [f"{r['line']}/{r['device']}" for r in rows]
    stuck = [e for e in episodes_from_labels(keys, ts, [r["fault"] for r in rows])
             if e.kind == "stuck"]  # fmt: skip
    assert stuck, "the simulator run has no stuck sensor"
    for e in stuck:
        line, device = e.device.split("/")
        tags = f"sensor_fault,line={line},device={device},kind=stuck"
        lines += [f"{tags} active=1i {e.start_ns}", f"{tags} active=0i {e.end_ns}"]
    for i in range(0, len(lines), 5000):
        write_lines(influxdb.url, lines[i : i + 5000])
    return {"line": f"{prefix}1", "since": min(ts), "until": max(ts) + NS, "readings": len(rows),
            "stuck": stuck, "url": influxdb.url}  # fmt: skip


def dynamics_request(models: Path, hist: dict, **params: float) -> RetrainRequest:
    return RetrainRequest(
        models_dir=models,
        since_ns=hist["since"],
        until_ns=hist["until"],
        settings=RetrainSettings(influx_url=hist["url"], database=TEST_DB),
        detector="dynamics",
        params={**SMALL, **params},
        line=hist["line"],
        gateway_config=GATEWAY_CONFIG,
    )


def show(report: RetrainReport) -> str:
    text = "\n".join(format_retrain(report))
    print(text)  # the comparison, for the log of a failed run
    return text


@pytest.mark.integration
def test_dynamics_retrain_promotes_equal_and_refuses_worse(stored_history, tmp_path) -> None:
    hist = stored_history
    models = tmp_path / "models"
    first = run_retrain(dynamics_request(models, hist))
    show(first)
    assert first.promoted and [c["check"] for c in first.checks] == ["no active model"]
    h = first.history
    assert h["readings"] == hist["readings"]
    # Whole device histories in time order: every reading before the split is trained
    # on; the flagged ones and those near a stuck sensor are labelled, not dropped.
    assert h["exclusion"] == "labelled"
    assert h["train"] + h["holdout"] == hist["readings"]
    assert h["train_labelled_anomalous"] >= h["anomalous"] * 0.5 > 0
    meta = read_metadata(first.candidate_dir)
    assert meta["detector"] == "dynamics"
    assert meta["training"]["rows"] == h["train"]
    assert meta["training"]["fit_on"] == "normal"
    assert meta["training"]["limit_rows"] < h["train"]
    # The recorded stuck periods are the held-out history's known episodes.
    assert len(first.sensor_fault_periods) == len(hist["stuck"])
    assert {p["kind"] for p in first.sensor_fault_periods} == {"stuck"}
    bt = first.candidate.backtest
    assert bt["readings"] == h["holdout"] and bt["machine_days"] > 0
    assert bt["false_alerts"] <= bt["alerts"]

    # The same training again: the same model, the same backtest, promoted.
    same = run_retrain(dynamics_request(models, hist))
    show(same)
    assert same.active is not None and same.active.version == first.candidate_dir.name
    figures = ("alerts", "false_alerts", "false_alerts_per_machine_day", "unscored")
    assert [same.candidate.backtest[k] for k in figures] == [
        same.active.backtest[k] for k in figures
    ]
    assert same.promoted and not same.forced
    assert active_version(models) == same.candidate_dir.name

    # Limits set for a thousand times the event rate: clearly more false alerts. Refused.
    worse = run_retrain(dynamics_request(models, hist, event_rate=1e-3))
    text = show(worse)
    (check,) = worse.checks
    assert check["check"] == "held-out false alerts per machine-day" and not check["ok"]
    assert worse.candidate.backtest["false_alerts"] > worse.active.backtest["false_alerts"]
    assert not worse.promoted
    assert active_version(models) == same.candidate_dir.name
    assert (models / worse.candidate_dir.name / "metadata.json").is_file()
    assert "[FAIL] held-out false alerts per machine-day" in text
    assert f"decision: kept {same.candidate_dir.name}" in text
    saved = read_metadata(worse.candidate_dir)["retrain"]
    assert saved["not_worse"] is False
    assert saved["backtest"]["false_alerts"] == worse.candidate.backtest["false_alerts"]


@pytest.mark.integration
def test_dynamics_retrain_with_labels_keeps_recall(
    stored_history, tmp_path, monkeypatch, capsys
) -> None:
    """With --labelled-csv a quieter candidate (limits for a vanishing event rate)
    raises no more false alerts, but it misses fault episodes the active model
    catches (compared per fault type on the labelled file): refused."""
    hist = stored_history
    labelled = tmp_path / "labelled.csv"
    simulate(labelled, unique("lab"), 11, 3600, "2026-10-02T00:00:00Z", fault_rate=12)
    models = tmp_path / "models"
    monkeypatch.chdir(ROOT)  # the default --gateway-config is config/gateway.toml
    monkeypatch.setattr(cli, "setup_logging", lambda level=None: None)
    common = ["retrain", "--influx-url", hist["url"], "--database", TEST_DB,
              "--line", hist["line"], "--models-dir", str(models), "--detector", "dynamics",
              "--since", iso(hist["since"]), "--until", iso(hist["until"]),
              "--param", "fit_after=300", "--param", "warmup=20",
              "--labelled-csv", str(labelled)]  # fmt: skip
    assert cli.main(common) == 0
    active = active_version(models)
    out = tmp_path / "report.json"
    assert cli.main([*common, "--param", "event_rate=1e-200", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    print(text)
    report = json.loads(out.read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["held-out false alerts per machine-day"]["ok"]
    recall = [c for name, c in checks.items() if name.startswith("labelled episode recall: ")]
    assert recall and not all(c["ok"] for c in recall)
    assert not report["promoted"] and active_version(models) == active
    cand, act = report["candidate"]["labelled"], report["active"]["labelled"]
    assert cand["rows"] == act["rows"] > 0
    lost = [c for c in recall if not c["ok"]]
    assert all(c["candidate"] < c["active"] for c in lost)
    # It lost episodes although it is the quieter model, on the history and the file.
    assert cand["false_alerts"] <= act["false_alerts"]
    assert "episode recall:" in text and "[FAIL] labelled episode recall" in text


def iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")
