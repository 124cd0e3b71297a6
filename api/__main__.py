"""``python -m api [--config config/api.toml] [--port 5000] [--host 127.0.0.1]
[--workers N] [--dev] [--check-config]``

Serves the prediction API and web page with gunicorn (or Flask's development server
with ``--dev``).  SIGHUP to this process reloads the workers gracefully (each loads
the model ``current`` points at); SIGTERM / Ctrl-C stops after in-flight requests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from api.config import ApiConfig, load_api_config, summary
from common.config import ConfigError
from common.logs import setup_logging

log = logging.getLogger("api")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--config", "-c", default=None, help="TOML config file")
    parser.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default from config: 5000)")
    parser.add_argument("--workers", type=int, help="gunicorn worker processes")
    parser.add_argument(
        "--dev", action="store_true", help="Flask development server, one process (debugging)"
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config and model, print the effective config (keys masked), exit",
    )
    return parser.parse_args(argv)


def _apply_cli(cfg: ApiConfig, args: argparse.Namespace) -> ApiConfig:
    changes: dict[str, object] = {}
    if args.host is not None:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = args.port
    if args.workers is not None:
        changes["server"] = dataclasses.replace(cfg.server, workers=args.workers)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _metrics_dir() -> tuple[Path, bool]:
    """The multi-process metrics directory: given (and emptied) or a fresh temp dir."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # files of a previous run would add to our counts
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="factory-api-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return path, True


def _serve_dev(cfg: ApiConfig) -> int:
    from api.app import create_app

    app = create_app(cfg)
    holder = app.extensions["model_holder"]

    def on_hup(_signum: int, _frame: object) -> None:
        log.info("SIGHUP: reloading the model")
        threading.Thread(target=_reload_quietly, args=(holder,), daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    log.warning("development server: one process, not for production")
    app.run(host=cfg.host, port=cfg.port, threaded=True, use_reloader=False)
    return 0


def _reload_quietly(holder) -> None:
    # A failure is logged by the holder, and the old model stays in service.
    with contextlib.suppress(Exception):
        holder.reload()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        cfg = _apply_cli(load_api_config(args.config), args)
        cfg.api_keys()  # a missing keys file is a config error, found now
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return 2
    setup_logging(cfg.log_level)

    from model.scorer import ModelError, load_scorer

    # Fail here, with one clear message, rather than in every worker.
    try:
        scorer = load_scorer(cfg.model.path)
    except ModelError as exc:
        log.error("cannot load model: %s", exc)
        return 2
    if args.check_config:
        report = {
            "config": summary(cfg),
            "model": {"version": scorer.version, "features": list(scorer.features)},
        }
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
        return 0
    del scorer  # workers load their own

    if args.dev:
        return _serve_dev(cfg)

    metrics_dir, owned = _metrics_dir()
    master_pid = os.getpid()
    try:
        # Imported only now: prometheus_client picks multi-process mode at import.
        from api.server import ApiServer

        log.info(
            "serving on %s:%d with %d %s worker(s), model %s",
            cfg.host,
            cfg.port,
            cfg.server.workers,
            cfg.server.worker_class,
            cfg.model.path,
        )
        ApiServer(cfg).run()
    finally:
        # Workers are forked from here and leave through this block too: only the
        # master removes the directory.
        if owned and os.getpid() == master_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
