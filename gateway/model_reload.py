"""The gateway's model: the shared :class:`model.holder.ModelHolder`, reporting to the
gateway's metrics.

The scorer thread reads ``holder.current`` once per batch; the watcher thread swaps it
when the ``current`` link moves or on SIGHUP (``request_reload``).  A shadow model
(``track=False``) is held the same way but not reported as the active model.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.metrics import GatewayMetrics
from model import holder
from model.scorer import Scorer


def gateway_model_holder(
    path: str,
    factory: Callable[[str], Scorer],
    metrics: GatewayMetrics,
    watch_interval_s: float = 2.0,
    track: bool = True,
) -> holder.ModelHolder[Scorer]:
    def on_change(new: Scorer, old: Scorer | None) -> None:
        metrics.set_model(new.version)
        if old is not None:
            metrics.model_reloads.inc()

    return holder.ModelHolder(
        path,
        factory,
        watch_interval_s=watch_interval_s,
        on_change=on_change if track else None,
        on_failure=lambda _message: metrics.model_reload_failures.inc(),
    )
