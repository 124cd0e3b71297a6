"""The active model, swapped atomically on SIGHUP or when its pointer moves.

A new model is loaded completely (and smoke-tested by ``load_scorer``) before the
reference is swapped, and the scorer thread takes the reference once per batch, so
no reading is ever scored by a half-loaded model and none waits for a reload.  A
model that fails to load is logged and counted; the old one keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from gateway.metrics import GatewayMetrics
from model.scorer import ModelError, Scorer

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(
        self,
        path: str,
        factory: Callable[[str], Scorer],
        metrics: GatewayMetrics,
        watch_interval_s: float = 2.0,
        track: bool = True,
    ):
        self._path = path
        self._factory = factory
        self._metrics = metrics
        self._interval = watch_interval_s
        self._current = factory(path)
        self._target = self._resolve()
        self._wake = threading.Event()
        self._forced = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._track = track  # the active model is reported in metrics, a shadow is not
        if track:
            metrics.set_model(self._current.version)

    @property
    def current(self) -> Scorer:
        return self._current

    def _resolve(self) -> str:
        return os.path.realpath(self._path)

    def request_reload(self) -> None:
        """Safe from a signal handler: only sets flags."""
        self._forced = True
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._interval if self._interval > 0 else None)
            self._wake.clear()
            if self._stopping.is_set():
                return
            forced, self._forced = self._forced, False
            target = self._resolve()
            if forced or target != self._target:
                self.reload(target)

    def reload(self, target: str | None = None) -> bool:
        target = target or self._resolve()
        try:
            scorer = self._factory(self._path)
        except ModelError as exc:
            log.error("model reload failed, keeping %s: %s", self._current.version, exc)
            self._metrics.model_reload_failures.inc()
            self._target = target  # do not retry a broken target every few seconds
            return False
        old = self._current
        self._current = scorer  # atomic reference swap
        self._target = target
        if self._track:
            self._metrics.set_model(scorer.version)
            self._metrics.model_reloads.inc()
        log.info("model reloaded: %s -> %s", old.version, scorer.version)
        return True
