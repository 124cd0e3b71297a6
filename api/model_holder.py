"""The worker's model: loaded once, swapped atomically when ``current`` moves.

Each request takes one reference (:meth:`ModelHolder.get`) and scores with it, so a
request never mixes two models.  A watcher thread per worker reads the ``current``
symlink every ``check_interval_s`` (one ``readlink``); when its target changed, the
watcher loads the new model completely and only then replaces the reference.
Requests keep being served by the old model meanwhile, so a switch costs no failed
and no slow request, and idle workers switch as promptly as busy ones.  A model that
fails to load is logged and counted, and the old one stays in service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract import DEFAULT_FIELDS, DecodeLimits
from model.artifact import CURRENT
from model.reading_fields import required_fields
from model.scorer import Scorer

log = logging.getLogger(__name__)

# /predict scores on demand: a record's ts is only checked for being a valid time,
# not for being recent (clients score historical data too).
_NO_AGE_LIMIT = float("inf")


@dataclass(frozen=True)
class LoadedModel:
    scorer: Scorer
    # Validation limits for this model's features (built once per model).
    limits: DecodeLimits
    loaded_at: float
    # The symlink target seen before loading ("" when not watching a link).
    target: str
    # Reading fields in the order the model reads them (Scorer.raw_fields).
    fields: tuple[str, ...] = ()
    # A reading's score depends on its device's earlier readings (api.series).
    stateful: bool = False


def _watched_link(path: Path) -> Path | None:
    """The symlink whose target names the active model, if there is one."""
    if path.is_symlink():
        return path
    if path.is_dir() and (path / CURRENT).is_symlink():
        return path / CURRENT
    return None


def decode_limits(scorer: Scorer, max_payload_bytes: int) -> DecodeLimits:
    # The gateway's rule (model.reading_fields): the reading fields the model reads,
    # not its input columns, so stream-feature and dynamics models are served too.
    required = required_fields(scorer, (f.name for f in DEFAULT_FIELDS))
    return DecodeLimits(
        fields=DEFAULT_FIELDS,
        required=required,
        max_payload_bytes=max_payload_bytes,
        max_future_s=_NO_AGE_LIMIT,
        max_age_s=_NO_AGE_LIMIT,
    )


class ModelHolder:
    def __init__(
        self,
        path: str | Path,
        factory: Callable[[str | Path], Scorer],
        check_interval_s: float = 1.0,
        max_payload_bytes: int = 1024 * 1024,
        on_change: Callable[[LoadedModel, LoadedModel | None], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ):
        self._path = Path(path)
        self._factory = factory
        self._interval = check_interval_s
        self._max_payload = max_payload_bytes
        self._on_change = on_change
        self._on_failure = on_failure
        self._link = _watched_link(self._path)
        # Serialises reloads (watcher thread, SIGHUP in --dev, tests).
        self._lock = threading.Lock()
        self._failed_target: str | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # Loaded in the constructor (so in each worker at start-up), never per request.
        self._current = self._load(self._read_target())
        if on_change is not None:
            on_change(self._current, None)

    @property
    def watched_link(self) -> Path | None:
        return self._link

    def get(self) -> LoadedModel:
        """The model for one request (a plain attribute read: the swap is atomic)."""
        return self._current

    def start_watching(self) -> None:
        """Check the pointer in a daemon thread (call after fork, in each worker)."""
        if self._interval <= 0 or self._link is None or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            # A failure is already logged and counted; the old model stays.
            with contextlib.suppress(Exception):
                self.check_now()

    def _read_target(self) -> str:
        if self._link is None:
            return ""
        try:
            return os.readlink(self._link)
        except OSError:
            return ""  # briefly missing while being replaced: keep serving

    def check_now(self) -> bool:
        """Reload if ``current`` points somewhere new; True if the model changed."""
        target = self._read_target()
        if not target or target in (self._current.target, self._failed_target):
            return False
        self.reload(target)
        return True

    def reload(self, target: str | None = None) -> LoadedModel:
        """Load the model the path names now and swap it in; raises ModelError on failure."""
        with self._lock:
            target = self._read_target() if target is None else target
            old = self._current
            try:
                new = self._load(target)
            except Exception as exc:
                self._failed_target = target
                log.error("model reload failed, keeping %s: %s", old.scorer.version, exc)
                if self._on_failure is not None:
                    self._on_failure(str(exc))
                raise
            self._failed_target = None
            self._current = new  # one reference assignment: atomic for readers
            log.info("model switched from %s to %s", old.scorer.version, new.scorer.version)
            if self._on_change is not None:
                self._on_change(new, old)
            return new

    def _load(self, target: str) -> LoadedModel:
        # Load the version the link named when we read it, not whatever it names now.
        path = self._link.parent / target if target and self._link is not None else self._path
        scorer = self._factory(path)
        limits = decode_limits(scorer, self._max_payload)
        return LoadedModel(
            scorer, limits, time.time(), target, tuple(limits.required or ()), scorer.stateful
        )
