"""``python -m notify --config config/notifier.toml [--check-config]``."""

from __future__ import annotations

import logging
import sys

from common.config import ConfigError, redacted
from common.service_run import load_service_config, print_check, run_service
from notify.config import load_notifier_config

log = logging.getLogger("notify")


def main(argv: list[str] | None = None) -> int:
    loaded = load_service_config(
        "python -m notify",
        __doc__,
        load_notifier_config,
        "validate the config and its secret files, print the effective config "
        "(secrets masked), exit",
        argv,
    )
    if isinstance(loaded, int):
        return loaded
    cfg, check_only = loaded

    from notify.channels import make_channels

    if check_only:
        try:
            channels = make_channels(cfg)  # reads the secret files: are they there?
        except (ConfigError, OSError) as exc:
            sys.stderr.write(f"config error: {exc}\n")
            return 2
        report = {"config": redacted(cfg), "enabled_channels": sorted(channels)}
        return print_check(report)

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
