"""Contract tests of the Flask app (``create_app`` + Flask's test client): every
endpoint, every error, API keys, limits, aliases, config.  The model is the real one
trained by the ``models_dir`` fixture; /api/recent reads a real InfluxDB."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import urllib3
from werkzeug.test import Client
from werkzeug.wrappers import Response

from api.app import create_app
from api.config import (
    ApiConfig,
    InfluxQueryConfig,
    LimitsConfig,
    ModelConfig,
    ReadyConfig,
    load_api_config,
)
from common.config import ConfigError
from common.mqtt import MqttSettings
from contract import DEFAULT_FIELDS
from contract.lineprotocol import encode_point
from devstack.process import free_port
from model.scorer import load_scorer
from tests.conftest import TEST_DB
from tests.helpers import ROOT, train_model, unique

NORMAL = {"temperature_c": 62.0, "humidity_pct": 44.0, "sound_db": 76.0}
ANOMALOUS = {"temperature_c": 95.0, "humidity_pct": 12.0, "sound_db": 104.0}
KEY_INLINE = "inline-key-4f1c"
KEY_FILE = "file-key-9a2b"


def _cfg(models_dir: Path, **changes) -> ApiConfig:
    base = ApiConfig(
        model=ModelConfig(path=str(models_dir / "current"), check_interval_s=0),
        # A port nobody listens on: /api/recent reports InfluxDB unavailable.
        influx=InfluxQueryConfig(url=f"http://127.0.0.1:{free_port()}", timeout_s=1.0),
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, sim_csv) -> Path:
    """A plain (per-reading) model: this file pins the answers of models without
    per-device state; tests/test_api_series.py covers the stateful default."""
    models = tmp_path_factory.mktemp("contract-models")
    train_model(sim_csv, models, "--detector", "isolation_forest")
    return models


@pytest.fixture(scope="module")
def app(models_dir):
    return create_app(_cfg(models_dir))


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def scorer(models_dir):
    return load_scorer(models_dir / "current")


@pytest.fixture(scope="module")
def keyed_client(models_dir, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    keys_file.write_text(f"# rotated 2026-11\n{KEY_FILE}\n\n")
    app = create_app(_cfg(models_dir, keys=(KEY_INLINE,), keys_file=str(keys_file)))
    return app.test_client()


def post(client, body, **kwargs):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    kwargs.setdefault("content_type", "application/json")
    return client.post("/predict", data=data, **kwargs)


def error_of(resp) -> dict:
    assert resp.is_json, resp.data
    return resp.get_json()["error"]


def metric_value(client, name: str, **labels) -> float:
    """One sample's value from /metrics (0 if absent)."""
    text = client.get("/metrics").get_data(as_text=True)
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


# --- POST /predict: success -------------------------------------------------------------


def test_single_reading_returns_score_decision_and_drivers(client, scorer):
    resp = post(client, NORMAL)
    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == {"score", "is_anomaly", "threshold", "model_version", "drivers"}
    assert 0.0 <= body["score"] <= 1.0
    assert body["model_version"] == scorer.version
    assert body["threshold"] == pytest.approx(scorer.threshold, abs=1e-6)
    assert body["is_anomaly"] == (body["score"] >= body["threshold"])
    z = scorer.explain([[NORMAL[f] for f in scorer.features]])[0]
    assert [d["feature"] for d in body["drivers"]] == [n for n, _ in scorer.top_contributors(z)]
    assert {d["feature"]: d["value"] for d in body["drivers"]} == NORMAL
    assert "app;dur=" in resp.headers["Server-Timing"]


def test_scores_are_the_models_scores(client, scorer):
    records = [NORMAL, ANOMALOUS, {"temperature_c": 30.0, "humidity_pct": 60.0, "sound_db": 50.0}]
    body = post(client, records).get_json()
    expected = scorer.score(np.array([[r[f] for f in scorer.features] for r in records]))
    assert [r["score"] for r in body["results"]] == pytest.approx(expected.tolist(), abs=1e-6)


def test_an_obvious_fault_is_an_anomaly_and_a_normal_reading_is_not(client):
    assert post(client, ANOMALOUS).get_json()["is_anomaly"] is True
    assert post(client, NORMAL).get_json()["is_anomaly"] is False
    drivers = post(client, ANOMALOUS).get_json()["drivers"]
    # Humidity 12 % is the most unusual value of that reading.
    assert drivers[0]["feature"] == "humidity_pct" and drivers[0]["z"] < -3


def test_list_and_records_bodies_give_results_in_order(client):
    records = [NORMAL, ANOMALOUS, NORMAL]
    as_list = post(client, records).get_json()
    as_records = post(client, {"records": records}).get_json()
    assert as_list == as_records
    assert as_list["count"] == 3 and as_list["anomalies"] == 1
    singles = [post(client, r).get_json() for r in records]
    assert as_list["results"] == singles


def test_empty_list_is_an_empty_result(client):
    body = post(client, []).get_json()
    assert body["count"] == 0 and body["results"] == []


def _alias_cases():
    for spec in DEFAULT_FIELDS:
        for alias in spec.aliases:
            yield spec.name, alias
            yield spec.name, alias.upper()


@pytest.mark.parametrize(("canonical", "alias"), list(_alias_cases()))
def test_every_contract_alias_is_accepted(client, canonical, alias):
    reading = {k: v for k, v in ANOMALOUS.items() if k != canonical}
    reading[alias] = ANOMALOUS[canonical]
    resp = post(client, reading)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == post(client, ANOMALOUS).get_json()


def test_existing_clients_field_names(client):
    legacy = {"Temperature_C": 95.0, "Humidity_%": 12.0, "Sound_Volume_dB": 104.0}
    assert post(client, legacy).get_json() == post(client, ANOMALOUS).get_json()


def test_ts_seq_and_extra_metadata_are_accepted(client):
    reading = {**NORMAL, "ts": "2020-01-01T00:00:00Z", "seq": 7, "firmware": "1.2"}
    assert post(client, reading).status_code == 200
    assert post(client, {**NORMAL, "ts": 1_600_000_000}).status_code == 200


def test_whole_request_is_scored_in_one_call(models_dir):
    calls = []

    def counting_factory(path):
        scorer = load_scorer(path)
        real = scorer.score

        def score(x):
            calls.append(len(x))
            return real(x)

        scorer.score = score  # a spy on the real scorer: counts, changes nothing
        return scorer

    client = create_app(_cfg(models_dir), scorer_factory=counting_factory).test_client()
    calls.clear()
    assert post(client, [NORMAL] * 250).status_code == 200
    assert calls == [250]


# --- POST /predict: errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "not_json"),
        (b"\xff\xfe\x00", "not_json"),
        (b"[" * 5000, "not_json"),
        (b"", "empty_body"),
        (b"   ", "empty_body"),
    ],
)
def test_unparseable_body_is_400(client, body, code):
    resp = post(client, body)
    assert resp.status_code == 400
    assert error_of(resp)["code"] == code


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None],
)
def test_wrong_content_type_is_415(client, content_type):
    resp = client.post(
        "/predict",
        data=orjson.dumps(NORMAL),
        headers={"Content-Type": content_type} if content_type else {},
    )
    assert resp.status_code == 415
    err = error_of(resp)
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]


def test_json_subtype_content_type_is_accepted(client):
    resp = post(client, NORMAL, content_type="application/vnd.factory+json; charset=utf-8")
    assert resp.status_code == 200


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"temperature_c": 70.0, "sound_db": 60.0}, "missing_field", "humidity_pct"),
        ({**NORMAL, "humidity_pct": "45"}, "wrong_type", "humidity_pct"),
        ({**NORMAL, "sound": None}, "wrong_type", "sound_db"),
        ({**NORMAL, "temperature": True}, "wrong_type", "temperature_c"),
        ({**NORMAL, "humidity_pct": [45]}, "wrong_type", "humidity_pct"),
        ({**NORMAL, "humidity_pct": 140.0}, "out_of_range", "humidity_pct"),
        ({**NORMAL, "temperature_c": -80}, "out_of_range", "temperature_c"),
        ({**NORMAL, "ts": "yesterday"}, "bad_timestamp", "ts"),
        ({**NORMAL, "ts": "2026-01-01T00:00:00"}, "bad_timestamp", "ts"),
        ({**NORMAL, "seq": -1}, "bad_seq", "seq"),
        ({"records": {"temperature_c": 1}}, "not_list", "records"),
    ],
)
def test_invalid_record_is_422_naming_the_field(client, body, code, field):
    resp = post(client, body)
    assert resp.status_code == 422
    err = error_of(resp)
    assert (err["code"], err["field"]) == (code, field)
    assert field in err["message"] or code == "not_list"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"temperature_c": NaN, "humidity_pct": 40, "sound_db": 60}',
        b'{"temperature_c": Infinity, "humidity_pct": 40, "sound_db": 60}',
        b'{"temperature_c": -Infinity, "humidity_pct": 40, "sound_db": 60}',
        b'{"temperature_c": 1e999, "humidity_pct": 40, "sound_db": 60}',
        b'{"temperature_c": 1' + b"0" * 400 + b', "humidity_pct": 40, "sound_db": 60}',
    ],
)
def test_non_finite_values_are_422_naming_the_field(client, raw):
    resp = post(client, raw)
    assert resp.status_code == 422
    err = error_of(resp)
    assert (err["code"], err["field"]) == ("not_finite", "temperature_c")


@pytest.mark.parametrize("body", [42, "reading", None, True])
def test_body_that_is_not_a_reading_is_422(client, body):
    resp = post(client, body)
    assert resp.status_code == 422
    assert error_of(resp)["code"] == "not_object"


def test_batch_error_names_index_and_lists_the_others(client):
    records = [NORMAL, {**NORMAL, "sound_db": "loud"}, NORMAL, 7, {"temperature_c": 1}]
    resp = post(client, records)
    assert resp.status_code == 422
    err = error_of(resp)
    assert (err["index"], err["field"], err["code"]) == (1, "sound_db", "wrong_type")
    assert "record 1" in err["message"] and "3 of 5" in err["message"]
    assert [(d["index"], d["code"]) for d in err["details"]] == [
        (3, "not_object"),
        (4, "missing_field"),
    ]


def test_too_many_records_is_413(models_dir):
    client = create_app(_cfg(models_dir, limits=LimitsConfig(max_records=5))).test_client()
    assert post(client, [NORMAL] * 5).status_code == 200
    resp = post(client, {"records": [NORMAL] * 6})
    assert resp.status_code == 413
    err = error_of(resp)
    assert err["code"] == "too_many_records" and "limit is 5" in err["message"]


def test_body_over_the_size_limit_is_413_before_parsing(models_dir):
    client = create_app(_cfg(models_dir, limits=LimitsConfig(max_body_bytes=2048))).test_client()
    small = orjson.dumps([NORMAL] * 10)
    assert len(small) < 2048 and post(client, small).status_code == 200
    resp = post(client, b"[" + b" " * 4096 + b"]")
    assert resp.status_code == 413
    assert error_of(resp)["code"] == "body_too_large"


def test_errors_are_counted_by_code(client):
    before = metric_value(client, "api_errors_total", code="missing_field")
    post(client, {"temperature_c": 1.0})
    post(client, [{"temperature_c": 1.0}])
    assert metric_value(client, "api_errors_total", code="missing_field") == before + 2


@pytest.mark.parametrize(("method", "path"), [("GET", "/predict"), ("PUT", "/predict")])
def test_wrong_method_is_405_json(client, method, path):
    resp = client.open(path, method=method)
    assert resp.status_code == 405
    assert error_of(resp)["code"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]


def test_unknown_path_is_404_json(client):
    resp = client.get("/no/such/thing")
    assert resp.status_code == 404 and error_of(resp)["code"] == "not_found"


# --- the two ways into POST /predict -----------------------------------------------------


@pytest.fixture
def counted_app(models_dir):
    """An app whose Flask /predict view counts its calls, and a client of the Flask
    app alone (behind api.fast_predict), to compare the two ways in."""
    app = create_app(_cfg(models_dir))
    calls = []
    view = app.view_functions["predict"]

    def counting_view():
        calls.append(1)
        return view()

    app.view_functions["predict"] = counting_view
    return app, Client(app.extensions["fast_predict"].fallback, Response), calls


@pytest.mark.parametrize(
    "body",
    [
        NORMAL,
        [NORMAL, ANOMALOUS],
        {"records": [ANOMALOUS]},
        {"Temperature_C": 95.0, "Humidity_%": 12.0, "Sound_Volume_dB": 104.0},
        {"temperature_c": 1.0},
        [NORMAL, {"temperature_c": "hot", "humidity_pct": 40.0, "sound_db": 70.0}],
        b"{not json",
        b"  ",
        b"[" + b"{}," * 200 + b"{}]",
    ],
)
def test_fast_path_and_flask_route_answer_the_same(counted_app, body):
    app, flask_only, calls = counted_app
    fast = post(app.test_client(), body)
    assert calls == []  # answered in front of Flask
    slow = post(flask_only, body)
    assert calls == [1]
    assert (fast.status_code, fast.get_json()) == (slow.status_code, slow.get_json())
    assert fast.headers["Content-Type"] == slow.headers["Content-Type"] == "application/json"
    assert fast.headers["Content-Length"] == str(len(fast.data))
    assert "app;dur=" in fast.headers["Server-Timing"]


def test_chunked_body_over_the_limit_is_413_not_cut(models_dir):
    """A chunked upload has no Content-Length: the limit is enforced while reading."""
    client = create_app(_cfg(models_dir, limits=LimitsConfig(max_body_bytes=2048))).test_client()
    # Cut at 2048 bytes this would still be a valid reading: it must be refused whole.
    padded = orjson.dumps(NORMAL) + b" " * 4096

    def chunked(data: bytes):
        return client.post(
            "/predict",
            input_stream=io.BytesIO(data),
            content_type="application/json",
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    resp = chunked(padded)
    assert resp.status_code == 413 and error_of(resp)["code"] == "body_too_large"
    assert "limit of 2048 bytes" in error_of(resp)["message"]
    assert chunked(orjson.dumps(NORMAL) + b" " * 100).status_code == 200


def test_wrong_content_type_is_refused_before_the_body_is_read(models_dir):
    client = create_app(_cfg(models_dir, limits=LimitsConfig(max_body_bytes=2048))).test_client()
    resp = client.post("/predict", data=b"x" * 4096, content_type="text/csv")
    assert resp.status_code == 415 and error_of(resp)["code"] == "unsupported_media_type"


def test_body_shorter_than_its_content_length_is_400(client):
    resp = client.post(
        "/predict",
        data=orjson.dumps(NORMAL),
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": "500"},
    )
    assert resp.status_code == 400
    assert error_of(resp)["code"] == "bad_request" and "of 500 bytes" in error_of(resp)["message"]


@pytest.mark.parametrize("body", [NORMAL, [NORMAL, NORMAL]])
def test_a_scoring_failure_is_a_logged_and_counted_500(models_dir, caplog, body):
    def broken_factory(path):
        scorer = load_scorer(path)

        def fail(*_args):
            raise RuntimeError("disk gone")

        scorer.score_row = fail  # type: ignore[method-assign]
        scorer.score = fail  # type: ignore[method-assign]
        return scorer

    client = create_app(_cfg(models_dir), scorer_factory=broken_factory).test_client()
    with caplog.at_level(logging.ERROR, logger="api.app"):
        resp = post(client, body)
    assert resp.status_code == 500
    assert error_of(resp) == {
        "status": 500,
        "code": "internal",
        "message": "internal error; see the server log",
    }
    assert "unexpected error on POST /predict" in caplog.text and "disk gone" in caplog.text
    assert metric_value(client, "api_errors_total", code="internal") == 1


# --- other endpoints --------------------------------------------------------------------


def test_health(client):
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.get_json()["status"] == "ok"


def test_ready_with_the_model_loaded(client, scorer):
    body = client.get("/ready").get_json()
    assert body == {"status": "ready", "model_version": scorer.version, "checks": {"model": True}}


@pytest.mark.integration
def test_ready_checks_influxdb_and_broker(models_dir, influxdb, mosquitto):
    live = ApiConfig(
        model=ModelConfig(path=str(models_dir / "current")),
        influx=InfluxQueryConfig(url=influxdb.url),
        mqtt=MqttSettings(host="127.0.0.1", port=mosquitto.port),
        ready=ReadyConfig(check_influx=True, check_mqtt=True),
    )
    resp = create_app(live).test_client().get("/ready")
    assert resp.status_code == 200
    assert resp.get_json()["checks"] == {"model": True, "influxdb": True, "mqtt": True}

    dead = ApiConfig(
        model=live.model,
        influx=InfluxQueryConfig(url=f"http://127.0.0.1:{free_port()}"),
        mqtt=MqttSettings(host="127.0.0.1", port=free_port()),
        ready=ReadyConfig(check_influx=True, check_mqtt=True, timeout_s=1.0),
    )
    resp = create_app(dead).test_client().get("/ready")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "not_ready"
    assert body["checks"] == {"model": True, "influxdb": False, "mqtt": False}


def test_model_endpoint_shows_metadata_and_metrics(client, scorer):
    body = client.get("/model").get_json()
    assert body["version"] == scorer.version
    assert [f["name"] for f in body["features"]] == list(scorer.features)
    assert body["threshold"] == scorer.threshold
    test_metrics = body["metrics"]["test"]
    assert 0.0 <= test_metrics["precision"] <= 1.0 and 0.0 <= test_metrics["recall"] <= 1.0
    assert body["path"] == str(scorer.path) and body["loaded_at"].endswith("Z")


def test_metrics_are_prometheus_text(client, scorer):
    before = metric_value(client, "api_predict_scored_total")
    post(client, [NORMAL, ANOMALOUS])
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert metric_value(client, "api_predict_scored_total") == before + 2
    assert metric_value(client, "api_model_info", version=scorer.version) == 1.0
    assert metric_value(client, "api_requests_total", endpoint="predict", status="200") >= 1


def test_openapi_documents_every_route(app, client, scorer):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    # Flask writes a path parameter <name>, OpenAPI {name}.
    routes = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule)
        for r in app.url_map.iter_rules()
        if r.endpoint != "static"
    }
    assert routes == set(doc["paths"])
    reading = doc["components"]["schemas"]["Reading"]
    assert reading["required"] == list(scorer.features)
    assert reading["properties"]["humidity_pct"]["maximum"] == 100.0
    responses = doc["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422"} <= set(responses)
    assert doc["paths"]["/predict"]["post"]["security"] == []  # keys are off


def test_page_and_vendored_chart_library(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'id="predict-form"' in html and "/static/vendor/uPlot.iife.min.js" in html
    assert 'data-keys-enabled="false"' in html and "__REFRESH_MS__" not in html
    lib = client.get("/static/vendor/uPlot.iife.min.js")
    assert lib.status_code == 200 and lib.get_data().startswith(b"/*! https://github.com/leeoniya")
    assert client.get("/static/app.js").status_code == 200


# --- API keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/predict"), ("GET", "/model"), ("GET", "/api/recent")]
)
def test_protected_endpoints_need_a_valid_key(keyed_client, method, path):
    resp = keyed_client.open(path, method=method, json=NORMAL if method == "POST" else None)
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthorized" and "X-API-Key" in error_of(resp)["message"]
    wrong = keyed_client.open(
        path, method=method, json=NORMAL if method == "POST" else None,
        headers={"X-API-Key": "not-" + KEY_INLINE},
    )  # fmt: skip
    assert wrong.status_code == 401


@pytest.mark.parametrize("key", [KEY_INLINE, KEY_FILE])
def test_inline_and_file_keys_are_accepted(keyed_client, key):
    resp = post(keyed_client, NORMAL, headers={"X-API-Key": key})
    assert resp.status_code == 200
    assert keyed_client.get("/model", headers={"X-API-Key": key}).status_code == 200


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/openapi.json", "/"])
def test_open_endpoints_need_no_key(keyed_client, path):
    assert keyed_client.get(path).status_code == 200


def test_key_failures_are_counted_and_keys_never_logged(keyed_client, caplog):
    before = metric_value(keyed_client, "api_auth_failures_total")
    secret_attempt = "guess-" + KEY_INLINE
    with caplog.at_level(logging.DEBUG):
        post(keyed_client, NORMAL, headers={"X-API-Key": secret_attempt})
        post(keyed_client, NORMAL, headers={"X-API-Key": KEY_INLINE})
    assert metric_value(keyed_client, "api_auth_failures_total") == before + 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "bad or missing API key" in logged
    assert secret_attempt not in logged and KEY_INLINE not in logged


def test_openapi_and_page_announce_keys(keyed_client):
    doc = keyed_client.get("/openapi.json").get_json()
    assert doc["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert doc["paths"]["/predict"]["post"]["security"] == [{"ApiKey": []}]
    assert "401" in doc["paths"]["/predict"]["post"]["responses"]
    assert 'data-keys-enabled="true"' in keyed_client.get("/").get_data(as_text=True)


# --- config -----------------------------------------------------------------------------


def test_shipped_config_file_matches_the_defaults():
    assert load_api_config(ROOT / "config" / "api.toml", env={}) == ApiConfig()
    assert ApiConfig().port == 5000


def test_environment_overrides():
    cfg = load_api_config(
        None,
        env={
            "API_PORT": "5050",
            "API_MODEL_PATH": "/srv/models/current",
            "API_KEYS": "k1,k2",
            "API_INFLUX_TOKEN": "tok",
            "API_SERVER_WORKERS": "3",
        },
    )
    assert (cfg.port, cfg.model.path, cfg.keys) == (5050, "/srv/models/current", ("k1", "k2"))
    assert cfg.influx.secret_token() == "tok" and cfg.server.workers == 3


def test_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "api.toml"
    bad.write_text('port = "five thousand"\n')
    with pytest.raises(ConfigError, match="port"):
        load_api_config(bad, env={})
    with pytest.raises(ConfigError, match="keys_file"):
        ApiConfig(keys_file=str(tmp_path / "missing")).api_keys()


# --- /api/recent against the real InfluxDB ------------------------------------------------


def _write_points(url: str, lines: list[str]) -> None:
    resp = urllib3.request(
        "POST", f"{url}/write?db={TEST_DB}&precision=ns", body="\n".join(lines).encode()
    )
    assert resp.status == 204, resp.data


@pytest.fixture(scope="module")
def recent_data(influxdb):
    """Two devices of one line, written as the gateway writes them."""
    line = unique("line")
    now = time.time_ns()
    lines = []
    for device, anomalous_at in (("press-a", {5, 6}), ("press-b", set())):
        for i in range(10):
            fields = {
                "temperature_c": 60.0 + i,
                "humidity_pct": 44.0,
                "sound_db": 70.0,
                "score": 0.9 if i in anomalous_at else 0.1,
                "is_anomaly": i in anomalous_at,
            }
            tags = {"line": line, "device": device, "model_version": "v-test"}
            lines.append(encode_point("reading", tags, fields, now - (10 - i) * 1_000_000_000))
    _write_points(influxdb.url, lines)
    return line


@pytest.fixture(scope="module")
def influx_client(models_dir, influxdb):
    cfg = _cfg(models_dir, influx=InfluxQueryConfig(url=influxdb.url, database=TEST_DB))
    return create_app(cfg).test_client()


@pytest.mark.integration
def test_recent_returns_per_device_series(influx_client, recent_data, scorer):
    resp = influx_client.get(f"/api/recent?line={recent_data}&minutes=5")
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["minutes"] == 5 and body["model_version"] == scorer.version
    assert [d["device"] for d in body["devices"]] == ["press-a", "press-b"]
    a, b = body["devices"]
    assert (a["points"], a["anomalies"], b["anomalies"]) == (10, 2, 0)
    assert a["values"]["temperature_c"] == [60.0 + i for i in range(10)]  # oldest first
    assert a["time"] == sorted(a["time"]) and a["is_anomaly"][5:7] == [True, True]
    assert a["score"][5] == 0.9 and a["model_version"] == "v-test"


@pytest.mark.integration
def test_recent_filters_by_device(influx_client, recent_data):
    body = influx_client.get(f"/api/recent?line={recent_data}&device=press-b").get_json()
    assert [d["device"] for d in body["devices"]] == ["press-b"]
    quoted = influx_client.get("/api/recent?device=o'brien\"").get_json()
    assert quoted["devices"] == []  # quotes are escaped, not an InfluxQL error
    # A backslash is not a device name the contract accepts (InfluxDB cannot store it).
    assert influx_client.get("/api/recent?device=a\\b").status_code == 422


@pytest.mark.parametrize(
    ("query", "field"),
    [("minutes=0", "minutes"), ("minutes=abc", "minutes"), ("minutes=100000", "minutes"),
     ("line=a/b", "line"), ("device=has space", "device"), ("device=" + "x" * 65, "device")],
)  # fmt: skip
def test_recent_rejects_bad_parameters(client, query, field):
    resp = client.get(f"/api/recent?{query}")  # refused before any query is sent
    assert resp.status_code == 422
    assert error_of(resp)["field"] == field


@pytest.mark.integration
def test_recent_reports_influx_problems(client, models_dir, influxdb):
    down = client.get("/api/recent")
    assert down.status_code == 503 and error_of(down)["code"] == "influx_unavailable"
    cfg = _cfg(models_dir, influx=InfluxQueryConfig(url=influxdb.url, database="no_such_db"))
    resp = create_app(cfg).test_client().get("/api/recent")
    assert resp.status_code == 502
    assert "database not found" in error_of(resp)["message"]
