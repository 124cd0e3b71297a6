"""``python -m gateway --config config/gateway.toml [--check-config]``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from common import sdnotify
from common.config import ConfigError, redacted
from common.logs import setup_logging
from gateway.config import load_gateway_config

log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--config", "-c", default=None, help="TOML config file")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config and model, print the effective config (secrets masked), exit",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_gateway_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return 2
    setup_logging(cfg.log_level)

    from model.scorer import ModelError, load_scorer

    if args.check_config:
        try:
            scorer = load_scorer(cfg.model.path)
        except ModelError as exc:
            sys.stderr.write(f"model error: {exc}\n")
            return 2
        report = {
            "config": redacted(cfg),
            "model": {
                "version": scorer.version,
                "features": list(scorer.features),
                "threshold": scorer.threshold,
            },
        }
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
        return 0

    from gateway.app import Gateway

    try:
        gateway = Gateway(cfg)
    except ModelError as exc:
        log.error("cannot load model: %s", exc)
        return 2

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        gateway.stop_requested.set()

    def _on_reload(_signum: int, _frame: object) -> None:
        gateway.model.request_reload()  # `systemctl reload`: re-read the model

    signal.signal(signal.SIGHUP, _on_reload)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    notifier = sdnotify.default()
    watchdog = sdnotify.Watchdog(gateway.healthy, notifier)
    gateway.start()
    watchdog.start()
    # systemd's READY=1 means "receiving": wait for the subscription (in a thread, so
    # a stop request during a broker outage is still served).
    threading.Thread(target=_notify_ready, args=(gateway, notifier), daemon=True).start()
    gateway.stop_requested.wait()
    notifier.stopping("flushing and disconnecting")
    watchdog.stop()
    gateway.stop()
    return 1 if gateway.failed.is_set() else 0


def _notify_ready(gateway, notifier: sdnotify.Notifier) -> None:
    while not gateway.stop_requested.is_set():
        if gateway.intake.subscribed.wait(1.0):
            notifier.ready(f"receiving; model {gateway.model.current.version}")
            log.info("ready")
            return


if __name__ == "__main__":
    sys.exit(main())
