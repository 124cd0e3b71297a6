"""model.retrain / model.influx_history: retraining from the gateway's InfluxDB history,
"not worse" promotion, the activation history and rollback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import urllib3

from devstack.influxdb import query
from model import cli
from model.artifact import (
    ModelError,
    activate,
    active_version,
    read_history,
    rollback,
    save_artifact,
)
from model.config import RetrainSettings
from model.dataset import Dataset
from model.influx_history import HistoryFilter, InfluxV1, near_faults, read_fault_intervals
from model.influx_history import read_history as read_influx_history
from model.retrain import ModelFigures, clean_windows, holdout_figures, not_worse
from model.training import train
from tests.conftest import TEST_DB
from tests.helpers import python_module, summary, unique, wait_for_points

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


def figures(far: float, flap: float, f1: float | None = None) -> ModelFigures:
    labelled = None if f1 is None else {"f1": f1, "false_alarm_rate": far}
    return ModelFigures("v", "isolation_forest", 0.5, {"false_alarm_rate": far,
                        "flap_rate": flap}, labelled)  # fmt: skip


def test_not_worse_rule() -> None:
    settings = RetrainSettings(far_tolerance=0.002, flap_tolerance=0.001, f1_tolerance=0.01)

    def verdict(candidate: ModelFigures, active: ModelFigures) -> list[bool]:
        return [c["ok"] for c in not_worse(candidate, active, settings)]

    assert verdict(figures(0.002, 0.001), figures(0.0, 0.0)) == [True, True]
    assert verdict(figures(0.0021, 0.0), figures(0.0, 0.0)) == [False, True]
    assert verdict(figures(0.0, 0.0011), figures(0.0, 0.0)) == [True, False]
    # Better than the active model always passes.
    assert verdict(figures(0.01, 0.01), figures(0.05, 0.05)) == [True, True]
    # With labels: F1 may drop by at most f1_tolerance, labelled FAR as above.
    assert verdict(figures(0.0, 0.0, f1=0.70), figures(0.0, 0.0, f1=0.71)) == [True] * 4
    assert verdict(figures(0.0, 0.0, f1=0.69), figures(0.0, 0.0, f1=0.71))[2] is False


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
    injected = {"device": f"{line}/{device}", "start_ns": t_fault, "end_ns": t_fault + 30 * NS}
    assert injected in periods
    expected = count_near(influxdb.url, line, periods, 60.0, history["until_ns"])
    assert history["near_sensor_fault"] == expected
    # At least the injected fault: 30 s +- 60 s of one device sampled every second.
    assert history["near_sensor_fault"] >= 150
    assert history["train"] + history["holdout"] == history["usable"]
    assert report["promoted"] == report["not_worse"] == all(c["ok"] for c in report["checks"])
    assert {c["check"] for c in report["checks"]} == {
        "held-out false-alarm rate",
        "held-out flap rate",
    }
    for label in ("held-out false-alarm rate", "held-out flap rate", "decision:"):
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
