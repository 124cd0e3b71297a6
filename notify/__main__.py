"""``python -m notify --config config/notifier.toml [--check-config]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from common.config import ConfigError, redacted
from common.logs import setup_logging
from common.service_run import run_service
from notify.config import load_notifier_config

log = logging.getLogger("notify")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notify", description=__doc__)
    parser.add_argument("--config", "-c", default=None, help="TOML config file")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config and its secret files, print the effective config "
        "(secrets masked), exit",
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_notifier_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"config error: {exc}\n")
        return 2
    setup_logging(cfg.log_level)

    from notify.channels import make_channels

    if args.check_config:
        try:
            channels = make_channels(cfg)  # reads the secret files: are they there?
        except (ConfigError, OSError) as exc:
            sys.stderr.write(f"config error: {exc}\n")
            return 2
        report = {"config": redacted(cfg), "enabled_channels": sorted(channels)}
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
        return 0

    from notify.service import NotificationService

    try:
        service = NotificationService(cfg)
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2

    return run_service(
        service,
        service.subscriber.subscribed,
        lambda: f"receiving alerts; {service.outbox.open_count} queued",
        "finishing in-flight sends and disconnecting",
    )


if __name__ == "__main__":
    sys.exit(main())
