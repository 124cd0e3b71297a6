"""``POST /predict`` with models that keep per-device state (the time-aware detector,
rolling stream features): series scored in time order through ``Scorer.new_inputs``,
stored history read from a real InfluxDB, and plain models unchanged."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import orjson
import pytest
import urllib3

from api.app import create_app
from api.config import ApiConfig, InfluxQueryConfig, ModelConfig
from api.series import MAX_HISTORY_DEVICES
from contract import parse_wire_ns
from contract.lineprotocol import ReadingEncoder
from devstack.process import free_port
from gateway.config import GatewayConfig
from model.reading_fields import required_fields
from model.scorer import load_scorer
from tests.conftest import TEST_DB
from tests.helpers import simulate_csv, train_model, unique

FIELDS = ("temperature_c", "humidity_pct", "sound_db")
# Small enough for 30 minutes of data; history_readings = fit_after + 6 = 306.
DYNAMICS_PARAMS = ("--param", "fit_after=300", "--param", "warmup=20")


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("series-data") / "f.csv"
    return simulate_csv(out, lines=1, devices=2, duration_s=1800, seed=3)


@pytest.fixture(scope="module")
def dynamics_dir(tmp_path_factory, small_csv) -> Path:
    models = tmp_path_factory.mktemp("series-dynamics")
    train_model(small_csv, models, *DYNAMICS_PARAMS)
    return models


@pytest.fixture(scope="module")
def forest_dir(tmp_path_factory, small_csv) -> Path:
    models = tmp_path_factory.mktemp("series-forest")
    train_model(small_csv, models, "--detector", "isolation_forest")
    return models


@pytest.fixture(scope="module")
def window_dir(tmp_path_factory, small_csv) -> Path:
    models = tmp_path_factory.mktemp("series-window")
    features = "temperature_c,humidity_pct,sound_db,sound_db__std_10"
    train_model(small_csv, models, "--detector", "isolation_forest", "--features", features)
    return models


@pytest.fixture(scope="module")
def readings(small_csv) -> list[dict]:
    """One device's readings from the simulator file, in time order."""
    with small_csv.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["device"] == "press-01"]
    return [{"ts": r["ts"], **{f: float(r[f]) for f in FIELDS}} for r in rows]


def _app(models_dir: Path, influx_url: str):
    cfg = ApiConfig(
        model=ModelConfig(path=str(models_dir / "current"), check_interval_s=0),
        influx=InfluxQueryConfig(url=influx_url, database=TEST_DB, timeout_s=2.0),
    )
    return create_app(cfg).test_client()


@pytest.fixture(scope="module")
def dynamics(dynamics_dir, influxdb):
    return load_scorer(dynamics_dir / "current"), _app(dynamics_dir, influxdb.url)


def post(client, body):
    resp = client.post("/predict", data=orjson.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def offline(scorer, history: list[dict], series: list[dict]) -> list[dict | None]:
    """What ``scorer.new_inputs()`` gives for ``series`` after ``history``, rounded as
    the API rounds (6 digits for scores, 3 for ratios); None: no row."""
    inputs = scorer.new_inputs()
    key = ("offline", "device")
    for part in (history, series):
        if not part:
            continue
        ts = np.array([parse_wire_ns(r["ts"]) for r in part], dtype=np.int64)
        values = np.array([[r[f] for f in scorer.raw_fields] for r in part])
        batch = inputs.build([key] * len(part), ts, values)
    out: list[dict | None] = [None] * len(series)
    scores = scorer.score(batch.X)
    ratios = scorer.explain(batch.X)
    for row, pos in enumerate(batch.index.tolist()):
        top = scorer.top_contributors(ratios[row], 3)
        out[pos] = {
            "score": round(float(scores[row]), 6),
            "is_anomaly": bool(scores[row] >= scorer.threshold),
            "drivers": [(name, round(float(z), 3)) for name, z in top],
        }
    return out


def _got(result: dict) -> dict | None:
    if result["score"] is None:
        return None
    drivers = [(d["feature"], d["z"]) for d in result["drivers"]]
    return {"score": result["score"], "is_anomaly": result["is_anomaly"], "drivers": drivers}


def _write_history(url: str, line: str, device: str, rows: list[dict], version: str) -> None:
    """Stored readings written the way the gateway's scorer writes them."""
    enc = ReadingEncoder()
    lines = [
        enc.encode_reading(
            line,
            device,
            version,
            {f: r[f] for f in FIELDS},
            ",score=0.1,is_anomaly=false",
            parse_wire_ns(r["ts"]),
        )
        for r in rows
    ]
    resp = urllib3.request(
        "POST", f"{url}/write?db={TEST_DB}&precision=ns", body="\n".join(lines).encode()
    )
    assert resp.status == 204, resp.data


# --- the API serves what the gateway serves -----------------------------------------------


def test_api_accepts_the_dynamics_model_the_gateway_accepts(dynamics, dynamics_dir):
    scorer, client = dynamics
    assert scorer.stateful and scorer.features != scorer.raw_fields
    needed = required_fields(scorer)
    assert needed == FIELDS
    # One derivation: the gateway's decode limits and the API's require the same fields.
    assert GatewayConfig(id="gw").decode_limits(needed).required == needed
    holder = client.application.extensions["model_holder"]
    assert holder.current.limits.required == needed
    doc = client.get("/openapi.json").get_json()
    reading = doc["components"]["schemas"]["Reading"]
    assert reading["required"] == list(FIELDS)
    assert {"line", "device"} <= set(reading["properties"])
    driver = doc["components"]["schemas"]["Driver"]["properties"]["feature"]
    assert driver["enum"] == list(scorer.signals)
    result = doc["components"]["schemas"]["PredictResult"]
    assert {"status", "history"} <= set(result["required"])


# --- a series for one device ---------------------------------------------------------------


@pytest.mark.integration
def test_series_is_scored_in_time_order_like_new_inputs(dynamics, readings):
    scorer, client = dynamics
    device = unique("press")  # nothing stored for it: the request is the whole history
    series = readings[:400]
    expected = offline(scorer, [], series)
    records = [{**r, "line": "line1", "device": device} for r in series]
    body = post(client, {"records": records})
    assert body["count"] == 400 and body["scored"] == 400
    got = [_got(r) for r in body["results"]]
    assert got == expected  # the same floats (at the API's rounding), in request order
    first, late = body["results"][0], body["results"][-1]
    assert first["status"] == "partial" and first["history"] == 0
    assert f"no stored history for line1/{device}" in first["detail"]
    assert late["status"] == "scored" and late["history"] == 399 and "detail" not in late
    assert body["anomalies"] == sum(r["is_anomaly"] for r in got if r)

    # Sent shuffled: still scored in time order, answered in request order.
    order = np.random.default_rng(5).permutation(len(records)).tolist()
    shuffled = post(client, {"records": [records[i] for i in order]})
    assert [_got(r) for r in shuffled["results"]] == [expected[i] for i in order]


@pytest.mark.integration
def test_records_without_ts_are_taken_in_request_order(dynamics, readings):
    scorer, client = dynamics
    series = readings[:50]
    expected = offline(scorer, [], series)
    body = post(client, [{f: r[f] for f in FIELDS} for r in series])  # no line/device/ts
    assert [_got(r) for r in body["results"]] == expected
    assert "no line/device given" in body["results"][0]["detail"]


@pytest.mark.integration
def test_a_repeated_ts_is_out_of_order_not_scored(dynamics, readings):
    _, client = dynamics
    device = unique("press")
    records = [{**r, "line": "line1", "device": device} for r in readings[:3]]
    records.append(dict(records[1]))
    results = post(client, records)["results"]
    assert [r["status"] for r in results] == ["partial", "partial", "partial", "out_of_order"]
    assert results[3]["score"] is None and results[3]["is_anomaly"] is None
    assert "not later than the previous reading" in results[3]["detail"]


# --- one reading and the device's stored history -------------------------------------------


@pytest.mark.integration
def test_single_reading_uses_the_devices_stored_history(dynamics, readings, influxdb):
    scorer, client = dynamics
    line, device = unique("line"), unique("press")
    need = scorer.history_readings
    stored, new = readings[: need + 50], readings[need + 50]
    _write_history(influxdb.url, line, device, stored, scorer.version)
    body = post(client, {**new, "line": line, "device": device})
    # Bounded: the newest history_readings stored readings, then the new one.
    assert _got(body) == offline(scorer, stored[-need:], [new])[0]
    assert body["status"] == "scored" and body["history"] == need
    assert (body["line"], body["device"]) == (line, device)
    # Without that history the score differs: the stored readings were used.
    fresh = post(client, {**new, "line": line, "device": unique("press")})
    assert fresh["status"] == "partial" and fresh["score"] != body["score"]

    # Only readings older than the record count: an earlier reading sees less history.
    mid = readings[100]
    early = post(client, {**mid, "line": line, "device": device})
    assert early["history"] == 100 and early["status"] == "partial"
    assert _got(early) == offline(scorer, stored[:100], [mid])[0]
    assert "100 stored readings of" in early["detail"]


@pytest.mark.integration
def test_single_reading_without_history_says_so(dynamics, readings, dynamics_dir):
    scorer, client = dynamics
    device = unique("press")
    body = post(client, {**readings[0], "line": "line1", "device": device})
    assert body["status"] == "partial" and body["history"] == 0
    assert body["detail"].startswith(f"no stored history for line1/{device};")
    assert f"{scorer.history_readings} more needed" in body["detail"]
    assert _got(body) == offline(scorer, [], [readings[0]])[0]  # the level guard only

    down = _app(dynamics_dir, f"http://127.0.0.1:{free_port()}")  # nobody listens
    body = post(down, {**readings[0], "line": "line1", "device": device})
    assert "unavailable (InfluxDB did not answer)" in body["detail"]
    off = _app(dynamics_dir, "")
    body = post(off, [{**readings[0], "line": "l", "device": f"d{i}"} for i in range(3)])
    assert all("no InfluxDB configured" in r["detail"] for r in body["results"])


@pytest.mark.integration
def test_window_model_warms_up_with_a_null_score(window_dir, readings, influxdb):
    scorer = load_scorer(window_dir / "current")
    assert scorer.stateful and "sound_db__std_10" in scorer.features
    client = _app(window_dir, influxdb.url)
    line, device = unique("line"), unique("press")
    body = post(client, {**readings[20], "line": line, "device": device})
    assert body["score"] is None and body["status"] == "warming_up"
    assert body["detail"] == f"no stored history for {line}/{device}; 9 more readings needed " \
        "before the first score"  # fmt: skip
    _write_history(influxdb.url, line, device, readings[:20], scorer.version)
    body = post(client, {**readings[20], "line": line, "device": device})
    need = scorer.history_readings
    assert body["status"] == "scored" and body["history"] == need
    assert _got(body) == offline(scorer, readings[20 - need : 20], [readings[20]])[0]
    assert body["drivers"][0]["feature"] in scorer.features


# --- requests the stateful path refuses ------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "code", "field"),
    [({"line": "line1"}, "missing_field", "device"),
     ({"device": "press-01"}, "missing_field", "line"),
     ({"line": "a/b", "device": "press-01"}, "bad_name", "line"),
     ({"line": "line1", "device": 7}, "bad_name", "device")],
)  # fmt: skip
def test_bad_device_names_are_422(dynamics, readings, extra, code, field):
    _, client = dynamics
    resp = client.post("/predict", json={**readings[0], **extra})
    assert resp.status_code == 422
    err = resp.get_json()["error"]
    assert (err["code"], err["field"]) == (code, field)


def test_ts_on_some_records_of_a_device_is_422(dynamics, readings):
    _, client = dynamics
    records = [dict(readings[0]), {f: readings[1][f] for f in FIELDS}]
    err = client.post("/predict", json=records).get_json()["error"]
    assert (err["code"], err["field"], err["index"]) == ("bad_timestamp", "ts", 1)


def test_too_many_devices_is_422(dynamics, readings):
    _, client = dynamics
    n = MAX_HISTORY_DEVICES + 1
    records = [{**readings[0], "line": "l", "device": f"d{i}"} for i in range(n)]
    resp = client.post("/predict", json=records)
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "too_many_devices"


# --- plain models: unchanged -------------------------------------------------------------------


def test_plain_model_answers_as_before(forest_dir, readings, influxdb):
    scorer = load_scorer(forest_dir / "current")
    assert not scorer.stateful
    client = _app(forest_dir, influxdb.url)
    reading = {f: readings[0][f] for f in FIELDS}
    # line/device are ignored (other keys always were): no history, no status.
    body = post(client, {**reading, "line": "line1", "device": "press-01"})
    assert set(body) == {"score", "is_anomaly", "threshold", "model_version", "drivers"}
    x = np.array([[reading[f] for f in scorer.features]])
    assert body["score"] == round(float(scorer.score(x)[0]), 6)
    assert [d["feature"] for d in body["drivers"]] == [
        n for n, _ in scorer.top_contributors(scorer.explain(x)[0])
    ]
    batch = post(client, [reading, reading])
    assert set(batch) == {"model_version", "threshold", "count", "anomalies", "results"}
    assert batch["results"][0] == batch["results"][1] == body
    doc = client.get("/openapi.json").get_json()
    assert "status" not in doc["components"]["schemas"]["PredictResult"]["properties"]
