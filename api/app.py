"""The Flask application factory: ``create_app(config)``.

One app per worker process.  The model is loaded here, once (through
:class:`~model.holder.ModelHolder`), never at import time and never per request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from api import ack_publisher, alert_requests
from api.alert_store import Alert, AlertStore, check_firing, influx_answers
from api.auth import HEADER, KeyCheck
from api.body import body_too_large, drain, read_body
from api.config import ApiConfig
from api.errors import ApiError, error_response, json_response
from api.fast_predict import FastPredict
from api.influx import InfluxQueryError, InfluxReader, InfluxUnavailable
from api.loaded_model import LoadedModel, model_loader
from api.metrics import ApiMetrics
from api.openapi import build_openapi
from api.params import int_param, name_param
from api.predict import check_media_type, parse_request, predict_body
from api.readiness import CachedCheck, mqtt_reachable
from contract import DEFAULT_FIELDS
from model.holder import ModelHolder
from model.scorer import Scorer, load_scorer

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Endpoints that need the API key when keys are configured (/health never does).
PROTECTED = frozenset({"predict", "model_info", "recent", "alerts", "alert_ack", "alert_label"})
# Metrics label for a path: known routes by name, everything else lumped together.
_KNOWN_PATHS = {
    "/predict": "predict",
    "/health": "health",
    "/ready": "ready",
    "/model": "model",
    "/metrics": "metrics",
    "/openapi.json": "openapi",
    "/api/recent": "recent",
    "/api/alerts": "alerts",
    "/": "page",
}
# /api/alerts/<alert_id>/<action>: labelled by action, never by id (bounded label set).
_ALERT_ACTIONS = {"ack": "alert_ack", "label": "alert_label"}
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}
DEFAULT_MINUTES = 15


class TimingMiddleware:
    """Times each request in the app, adds ``Server-Timing: app;dur=<ms>`` and counts it.

    Sits outside Flask so the figure covers routing, auth, parsing, scoring and
    serialisation: everything but the HTTP server itself.
    """

    def __init__(self, wsgi_app: Callable, metrics: ApiMetrics):
        self._app = wsgi_app
        self._metrics = metrics
        # Labelled children, looked up once per (endpoint, status) instead of per request.
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        endpoint = _endpoint_label(environ.get("PATH_INFO", ""))

        def timed_start_response(status: str, headers: list, exc_info=None):
            elapsed = time.perf_counter() - started
            headers.append(("Server-Timing", f"app;dur={elapsed * 1000:.3f}"))
            key = (endpoint, status[:3])
            counter = self._counted.get(key)
            if counter is None:
                counter = self._counted[key] = self._metrics.requests.labels(*key)
            counter.inc()
            timer = self._timed.get(endpoint)
            if timer is None:
                timer = self._timed[endpoint] = self._metrics.latency.labels(endpoint)
            timer.observe(elapsed)
            return start_response(status, headers, exc_info)

        return self._app(environ, timed_start_response)


def _endpoint_label(path: str) -> str:
    known = _KNOWN_PATHS.get(path)
    if known is not None:
        return known
    if path.startswith("/static/"):
        return "static"
    if path.startswith("/api/alerts/"):
        return _ALERT_ACTIONS.get(path.rsplit("/", 1)[-1], "other")
    return "other"


def _page_html(cfg: ApiConfig, keys_enabled: bool) -> bytes:
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    html = html.replace("__REFRESH_MS__", str(round(cfg.page_refresh_s * 1000)))
    html = html.replace("__KEYS_ENABLED__", "true" if keys_enabled else "false")
    return html.encode("utf-8")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def create_app(
    config: ApiConfig | None = None,
    *,
    scorer_factory: Callable[[str | Path], Scorer] = load_scorer,
) -> Flask:
    cfg = config or ApiConfig()
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = cfg.limits.max_body_bytes
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 300

    metrics = ApiMetrics()
    keys = KeyCheck(cfg.api_keys())

    def on_change(new: LoadedModel, old: LoadedModel | None) -> None:
        if old is not None:
            metrics.reloads.labels("ok").inc()
        metrics.set_model(new.scorer.version, old.scorer.version if old else None)

    holder = ModelHolder(
        cfg.model.path,
        model_loader(scorer_factory, cfg.limits.max_body_bytes),
        watch_interval_s=cfg.model.check_interval_s,
        on_change=on_change,
        on_failure=lambda _msg: metrics.reloads.labels("failed").inc(),
    )
    # create_app runs in each worker after the fork, so the thread lives in the worker;
    # none when there is no link to poll (SIGHUP in --dev reloads directly).
    if holder.polls:
        holder.start()
    fields = tuple(f.name for f in DEFAULT_FIELDS)
    influx = InfluxReader(cfg.influx, fields)
    checks: list[CachedCheck] = []
    if cfg.ready.check_influx:
        checks.append(
            CachedCheck("influxdb", lambda: influx.ping(cfg.ready.timeout_s), cfg.ready.cache_s)
        )
    if cfg.ready.check_mqtt:
        checks.append(
            CachedCheck(
                "mqtt", lambda: mqtt_reachable(cfg.mqtt, cfg.ready.timeout_s), cfg.ready.cache_s
            )
        )
    alert_store = AlertStore(influx.client, cfg.influx, cfg.alerts)
    page = _page_html(cfg, keys.enabled)
    openapi_cache: dict[str, bytes] = {}

    app.extensions["model_holder"] = holder
    app.extensions["api_metrics"] = metrics
    app.extensions["api_config"] = cfg

    # --- errors: always JSON, never an HTML page or a bare 500 -----------------------

    def refused(err: ApiError) -> ApiError:
        metrics.errors.labels(err.code).inc()
        return err

    def unexpected(method: str, path: str, exc: Exception) -> ApiError:
        log.error("unexpected error on %s %s", method, path, exc_info=exc)
        return refused(ApiError(500, "internal", "internal error; see the server log"))

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        return error_response(refused(err))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        err = ApiError(status, code, message)
        if status == 413:  # werkzeug's MAX_CONTENT_LENGTH, on any route
            drain(request.environ)
            err = body_too_large(cfg.limits.max_body_bytes)
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            err.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return error_response(refused(err))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        return error_response(unexpected(request.method, request.path, exc))

    def _require_key() -> None:
        if request.endpoint in PROTECTED:
            try:
                keys.check(request.headers.get(HEADER))
            except ApiError:
                metrics.auth_failures.inc()
                log.warning("rejected %s %s from %s: bad or missing API key",
                            request.method, request.path, request.remote_addr)  # fmt: skip
                raise

    if keys.enabled:  # no per-request hook when there is nothing to check
        app.before_request(_require_key)

    # --- endpoints ---------------------------------------------------------------------

    def answer_predict(mimetype: str, raw: bytes) -> Any:
        model = holder.current  # one model for the whole request, even if a reload happens
        parsed = parse_request(mimetype, raw, cfg.limits.max_records)
        body, count, anomalies = predict_body(parsed, model, influx)
        metrics.records.observe(count)
        metrics.scored.inc(count)
        if anomalies:
            metrics.anomalies.inc(anomalies)
        return body

    # POST /predict with a JSON body (and a valid key) is answered in front of Flask,
    # by api.fast_predict; the rest comes here to be refused (415, 401) the Flask way.
    @app.post("/predict")
    def predict() -> Response:
        check_media_type(request.mimetype)  # before reading a body that will be refused
        raw = read_body(request.environ, cfg.limits.max_body_bytes)
        return json_response(answer_predict(request.mimetype, raw))

    @app.get("/health")
    def health() -> Response:
        return json_response({"status": "ok", "pid": os.getpid()})

    @app.get("/ready")
    def ready() -> Response:
        model = holder.current
        results = {"model": True}
        for check in checks:
            results[check.name] = check()
        ok = all(results.values())
        return json_response(
            {
                "status": "ready" if ok else "not_ready",
                "model_version": model.scorer.version,
                "checks": results,
            },
            200 if ok else 503,
        )

    @app.get("/model")
    def model_info() -> Response:
        model = holder.current
        scorer = model.scorer
        return json_response(
            {
                **scorer.metadata,
                "path": str(scorer.path),
                "loaded_at": _iso(model.loaded_at),
                "worker_pid": os.getpid(),
            }
        )

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.get("/openapi.json")
    def openapi() -> Response:
        model = holder.current
        scorer = model.scorer
        body = openapi_cache.get(scorer.version)
        if body is None:
            doc = build_openapi(
                features=model.fields,
                signals=scorer.signals,
                stateful=model.stateful,
                max_records=cfg.limits.max_records,
                max_body_bytes=cfg.limits.max_body_bytes,
                max_minutes=cfg.influx.max_minutes,
                max_hours=cfg.alerts.max_hours,
                max_alerts=cfg.alerts.max_alerts,
                keys_enabled=keys.enabled,
                version=scorer.version,
            )
            body = json_response(doc).get_data()
            openapi_cache.clear()
            openapi_cache[scorer.version] = body
        return Response(body, mimetype="application/json")

    @app.get("/api/recent")
    def recent() -> Response:
        minutes = int_param(
            request.args.get("minutes"), "minutes", DEFAULT_MINUTES, cfg.influx.max_minutes
        )
        line = name_param(request.args.get("line"), "line")
        device = name_param(request.args.get("device"), "device")
        scorer = holder.current.scorer
        try:
            devices = influx.recent(minutes, line, device)
        except InfluxUnavailable as exc:
            raise ApiError(503, "influx_unavailable", str(exc)) from None
        except InfluxQueryError as exc:
            raise ApiError(502, "influx_error", str(exc)) from None
        return json_response(
            {
                "minutes": minutes,
                "threshold": round(scorer.threshold, 6),
                "model_version": scorer.version,
                "devices": devices,
            }
        )

    # --- alerts: list (InfluxDB), acknowledge (MQTT, applied by the gateway), label ---

    @app.get("/api/alerts")
    def alerts() -> Response:
        query = alert_requests.list_query(request.args, cfg.alerts)
        with influx_answers():
            return json_response(alert_store.listing(query))

    def known_alert(alert_id: str) -> Alert:
        with influx_answers():
            alert = alert_store.find(alert_id)
        if alert is None:
            raise ApiError(
                404,
                "unknown_alert",
                f"no alert {alert_id} in the last {cfg.alerts.lookback_days} days",
                field="alert_id",
            )
        return alert

    @app.post("/api/alerts/<alert_id>/ack")
    def alert_ack(alert_id: str) -> Response:
        alert_id = alert_requests.path_alert_id(alert_id)
        body = alert_requests.json_object(
            request.mimetype, request.environ, cfg.limits.max_body_bytes
        )
        ack = alert_requests.ack_request(body)
        alert = known_alert(alert_id)
        check_firing(alert)
        topic = ack_publisher.broker_answers(
            lambda: ack_publisher.publish_ack(cfg.mqtt, alert, ack, cfg.alerts.ack_timeout_s)
        )
        return json_response(
            {"alert_id": alert_id, "line": alert.line, "device": alert.device,
             "topic": topic, "status": "sent"},
            202,
        )  # fmt: skip

    @app.post("/api/alerts/<alert_id>/label")
    def alert_label(alert_id: str) -> Response:
        alert_id = alert_requests.path_alert_id(alert_id)
        body = alert_requests.json_object(
            request.mimetype, request.environ, cfg.limits.max_body_bytes
        )
        label = alert_requests.label_request(body)
        alert = known_alert(alert_id)
        with influx_answers():
            stored = alert_store.write_label(alert, label)
        return json_response({**alert.entry(), "label": stored}, 201)

    @app.get("/")
    def index() -> Response:
        return Response(page, mimetype="text/html")

    fast = FastPredict(
        app.wsgi_app,
        answer_predict,
        keys=keys,
        max_body_bytes=cfg.limits.max_body_bytes,
        on_refused=refused,
        on_unexpected=unexpected,
    )
    app.extensions["fast_predict"] = fast
    app.wsgi_app = TimingMiddleware(fast, metrics)  # type: ignore[method-assign]
    return app
