"""The model a process serves: loaded once, swapped atomically when a new one is activated.

One holder for the gateway and the API.  Readers take :attr:`ModelHolder.current` (a
plain attribute read, no lock) once per batch or request, so nothing is ever scored
by a half-loaded model or by two models at once.  A daemon thread reads the watched
``current`` symlink every ``watch_interval_s`` (one ``readlink``) and serves
:meth:`ModelHolder.request_reload` (SIGHUP); a new model is loaded completely before
the reference is swapped, so a switch costs no failed and no slow reading.  A model
that fails to load is logged and reported (``on_failure``); the last good one keeps
serving and the broken target is not retried until the link moves again or a reload
is requested.

What a service adds stays with the service: ``load`` builds what it holds from a path
(a :class:`~model.scorer.Scorer`, or the API's scorer with its decode limits), and
``on_change`` / ``on_failure`` feed its metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from model.artifact import CURRENT

log = logging.getLogger(__name__)


class Versioned(Protocol):
    @property
    def version(self) -> str: ...


M = TypeVar("M", bound=Versioned)


def watched_link(path: Path) -> Path | None:
    """The symlink whose target names the active model, if there is one."""
    if path.is_symlink():
        return path
    if path.is_dir() and (path / CURRENT).is_symlink():
        return path / CURRENT
    return None


class ModelHolder(Generic[M]):
    def __init__(
        self,
        path: str | Path,
        load: Callable[[str], M],
        *,
        watch_interval_s: float = 0.0,
        on_change: Callable[[M, M | None], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ):
        """``load(path)`` builds the model (raises on a broken one); ``watch_interval_s``
        <= 0 checks the link only on request; ``on_change(new, old)`` runs after each
        swap and once at start with ``old`` None; ``on_failure(message)`` after a
        failed reload."""
        self._path = Path(path)
        self._load = load
        self._interval = watch_interval_s
        self._on_change = on_change
        self._on_failure = on_failure
        self._link = watched_link(self._path)
        # Serialises reloads (watcher thread, SIGHUP, tests); readers never take it.
        self._lock = threading.Lock()
        self._failed_target: str | None = None
        self._forced = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._target = self._read_target()
        # Loaded here, so once per process (per worker in the API), never per use.
        self.current: M = self._load_target(self._target)
        if on_change is not None:
            on_change(self.current, None)

    @property
    def polls(self) -> bool:
        """Whether the watcher has a link to check periodically."""
        return self._interval > 0 and self._link is not None

    def start(self) -> None:
        """Start the watcher thread (after a fork: in the process that serves)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def request_reload(self) -> None:
        """Safe from a signal handler: only sets flags; the watcher thread reloads."""
        self._forced = True
        self._wake.set()

    def _run(self) -> None:
        timeout = self._interval if self.polls else None
        while not self._stopping.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping.is_set():
                return
            forced, self._forced = self._forced, False
            # A failure is already logged and reported; the old model stays.
            with contextlib.suppress(Exception):
                if forced:
                    self.reload()
                else:
                    self.check_now()

    def _read_target(self) -> str:
        if self._link is None:
            return ""
        try:
            return os.readlink(self._link)
        except OSError:
            return ""  # briefly missing while being replaced: keep serving

    def check_now(self) -> bool:
        """Reload if the link points somewhere new; True if the model changed."""
        target = self._read_target()
        if not target or target in (self._target, self._failed_target):
            return False
        self.reload(target)
        return True

    def reload(self, target: str | None = None) -> M:
        """Load the model the path names now (or ``target``) and swap it in; on failure
        log, report, keep the old model and raise."""
        with self._lock:
            target = self._read_target() if target is None else target
            old = self.current
            try:
                new = self._load_target(target)
            except Exception as exc:
                self._failed_target = target
                log.error("model reload failed, keeping %s: %s", old.version, exc)
                if self._on_failure is not None:
                    self._on_failure(str(exc))
                raise
            self._failed_target = None
            self._target = target
            self.current = new  # one reference assignment: atomic for readers
            log.info("model switched from %s to %s", old.version, new.version)
            if self._on_change is not None:
                self._on_change(new, old)
            return new

    def _load_target(self, target: str) -> M:
        # The version the link named when it was read, not whatever it names now.
        if target and self._link is not None:
            return self._load(str(self._link.parent / target))
        return self._load(str(self._path))
