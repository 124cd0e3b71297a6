"""``python -m gateway --config config/gateway.toml [--check-config]``."""

from __future__ import annotations

import logging
import signal
import sys

from common.config import redacted
from common.service_run import load_service_config, print_check, run_service
from gateway.config import load_gateway_config

log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    loaded = load_service_config(
        "python -m gateway",
        __doc__,
        load_gateway_config,
        "validate the config and model, print the effective config (secrets masked), exit",
        argv,
    )
    if isinstance(loaded, int):
        return loaded
    cfg, check_only = loaded

    from model.scorer import ModelError, load_scorer

    if check_only:
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
        return print_check(report)

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
