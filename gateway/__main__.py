"""``python -m gateway --config config/gateway.toml [--check-config]``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from common.config import ConfigError, redacted
from common.logs import setup_logging
from common.service_run import run_service
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

    def _on_reload(_signum: int, _frame: object) -> None:
        gateway.model.request_reload()  # `systemctl reload`: re-read the model

    signal.signal(signal.SIGHUP, _on_reload)
    return run_service(
        gateway,
        gateway.intake.subscribed,
        lambda: f"receiving; model {gateway.model.current.version}",
        "flushing and disconnecting",
    )


if __name__ == "__main__":
    sys.exit(main())
