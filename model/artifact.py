"""On-disk model artifacts: immutable versions plus an atomically switched ``current``.

Layout::

    <models_dir>/
        20240501T120000Z-3fa9c2d1/      one directory per trained model, never modified
            model.joblib               {"pipeline": Pipeline, "detector": name}
            compiled.npz               IsolationForest only: the same forest as flat arrays
            metadata.json              features, threshold, calibration, metrics, ...
        current -> 20240501T120000Z-3fa9c2d1
        history.json                   every switch of ``current``, oldest first

A version directory is written under a temporary name and renamed into place, and
``current`` is replaced with ``os.replace`` on a fresh symlink, so a reader (gateway,
API worker) sees either the old model or the new one, never a half-written one.

``history.json`` (``{"activations": [{"version", "previous", "at", "reason"}, ...]}``) is
rewritten atomically under an exclusive lock on the models directory each time
``current`` is switched; :func:`rollback` uses it to find the version that was active
before the current one was (last) deployed.

joblib files are pickles: loading one runs code.  The models directory must only be
writable by the account that trains models.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
# An IsolationForest also as flat arrays (.npz, no pickle): serving processes load it
# without importing scikit-learn.
COMPILED_FILE = "compiled.npz"
CURRENT = "current"
HISTORY_FILE = "history.json"
# Older entries are dropped beyond this: the file stays small on a long-lived box.
HISTORY_MAX_ENTRIES = 500
ROLLBACK = "rollback"


class ModelError(Exception):
    """A model artifact is missing, incomplete or unreadable; the message says which."""


def utc_now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def make_version(created_at: str, data_sha256: str) -> str:
    """``YYYYmmddTHHMMSSZ-<first 8 hex of the data sha256>``."""
    stamp = datetime.fromisoformat(created_at).astimezone(UTC)
    digest = (data_sha256 or "0" * 8).lower()[:8]
    return f"{stamp:%Y%m%dT%H%M%SZ}-{digest}"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_artifact(
    models_dir: str | Path,
    pipeline: Any,
    metadata: dict[str, Any],
    activate: bool = True,
) -> Path:
    """Write a new version directory and (by default) make it ``current``.

    The version name comes from ``metadata["created_at"]`` (set to now if absent) and
    ``metadata["training"]["data_sha256"]``; ``-2``, ``-3``... are appended if it is
    taken.  ``metadata["version"]`` is filled in.  Returns the version directory.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata)
    metadata.setdefault("created_at", utc_now_rfc3339())
    base = make_version(metadata["created_at"], metadata.get("training", {}).get("data_sha256", ""))
    import joblib

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=models_dir))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; services may run as another user
        joblib.dump({"pipeline": pipeline, "detector": metadata.get("detector")}, tmp / MODEL_FILE)
        with open(tmp / MODEL_FILE, "rb") as fh:
            os.fsync(fh.fileno())
        _save_compiled(pipeline, tmp)
        for attempt in range(1, 1000):
            version = base if attempt == 1 else f"{base}-{attempt}"
            target = models_dir / version
            if target.exists() or target.is_symlink():
                continue
            metadata["version"] = version
            body = json.dumps(metadata, indent=2, allow_nan=False, default=_json_default)
            _write_file(tmp / METADATA_FILE, body.encode("utf-8") + b"\n")
            try:
                os.rename(tmp, target)
            except OSError:
                # Lost a race with a concurrent save of the same version; try the next.
                if target.exists():
                    continue
                raise
            break
        else:
            raise ModelError(f"too many versions named {base}-N in {models_dir}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(models_dir)
    _LOG.info("saved model version %s in %s", version, models_dir)
    if activate:
        _switch_current(models_dir, version, reason="train")
    return target


def _save_compiled(pipeline: Any, version_dir: Path) -> None:
    """Also save an IsolationForest as flat arrays, so that serving processes score it
    without importing scikit-learn (see ``model.scorer.load_scorer``)."""
    from model.fastforest import compile_forest

    forest = compile_forest(pipeline)
    if forest is not None:
        forest.save(version_dir / COMPILED_FILE)


def read_metadata(version_dir: str | Path) -> dict[str, Any]:
    path = Path(version_dir) / METADATA_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model metadata missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model metadata unreadable: {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"model metadata is not a JSON object: {path}")
    return data


def _check_version_dir(models_dir: Path, version: str) -> Path:
    if "/" in version or version in {"", ".", "..", CURRENT} or version.startswith("."):
        raise ModelError(f"invalid model version name {version!r}")
    target = models_dir / version
    if not target.is_dir() or target.is_symlink():
        known = ", ".join(list_versions(models_dir)) or "none"
        raise ModelError(f"model version {version!r} not found in {models_dir}; known: {known}")
    if not (target / MODEL_FILE).is_file():
        raise ModelError(f"model version {version!r} has no {MODEL_FILE}")
    meta = read_metadata(target)
    if meta.get("version") != version:
        raise ModelError(
            f"model version {version!r}: metadata says version {meta.get('version')!r}"
        )
    return target


def _switch_current(models_dir: Path, version: str, reason: str) -> None:
    with _locked(models_dir):
        previous = active_version(models_dir)
        _replace_link(models_dir, version)
        _append_history(models_dir, version, previous, reason)
    _LOG.info("active model is now %s (was %s)", version, previous)


def _replace_link(models_dir: Path, version: str) -> None:
    link = models_dir / CURRENT
    if link.exists() and not link.is_symlink():
        raise ModelError(f"{link} exists and is not a symlink; refusing to replace it")
    tmp_link = models_dir / f".{CURRENT}-{os.getpid()}-{secrets.token_hex(4)}"
    # Relative target: the models directory can be moved or bind-mounted elsewhere.
    os.symlink(version, tmp_link)
    try:
        os.replace(tmp_link, link)
    except BaseException:
        tmp_link.unlink(missing_ok=True)
        raise
    _fsync_dir(models_dir)


class _locked:
    """Exclusive flock on the models directory: one history read-modify-write at a time."""

    def __init__(self, models_dir: Path):
        self._path = models_dir
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = os.open(self._path, os.O_RDONLY)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def read_history(models_dir: str | Path) -> list[dict[str, Any]]:
    """Activations recorded in ``history.json``, oldest first ([] if there is none)."""
    path = Path(models_dir) / HISTORY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"activation history unreadable: {path}: {exc}") from None
    entries = data.get("activations") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ModelError(f"activation history malformed: {path} (expected 'activations' list)")
    return entries


def _append_history(models_dir: Path, version: str, previous: str | None, reason: str) -> None:
    try:
        entries = read_history(models_dir)
    except ModelError as exc:
        # The link switch already happened; a broken history must not undo it.
        _LOG.warning("%s; starting a new history", exc)
        entries = []
    entries.append(
        {"version": version, "previous": previous, "at": utc_now_rfc3339(), "reason": reason}
    )
    body = json.dumps({"activations": entries[-HISTORY_MAX_ENTRIES:]}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{HISTORY_FILE}.", dir=models_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, models_dir / HISTORY_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(models_dir)


def activate(models_dir: str | Path, version: str, reason: str = "activate") -> Path:
    """Point ``current`` at an existing version (atomic) and record it in the history;
    returns the version directory."""
    models_dir = Path(models_dir)
    target = _check_version_dir(models_dir, version)
    _switch_current(models_dir, version, reason)
    return target


def rollback_target(models_dir: str | Path) -> str:
    """The version that was active before the current one was last deployed.

    Deployments are the history entries not made by a rollback; so rolling back
    twice from v3 goes to v2, then to v1 (like an undo stack), and ``activate`` is
    the way forward again.
    """
    models_dir = Path(models_dir)
    current = active_version(models_dir)
    if current is None:
        raise ModelError(f"{models_dir} has no active model to roll back from")
    history = read_history(models_dir)
    if not history:
        raise ModelError(
            f"{models_dir}/{HISTORY_FILE} is missing: no record of the previous version; "
            "use `activate VERSION` (see `list`)"
        )
    for entry in reversed(history):
        if entry.get("version") == current and entry.get("reason") != ROLLBACK:
            previous = entry.get("previous")
            if not previous or previous == current:
                raise ModelError(f"{current} was the first version activated; nothing before it")
            return str(previous)
    raise ModelError(
        f"{HISTORY_FILE} does not say what was active before {current} (it was activated "
        "before the history was kept, or by hand); use `activate VERSION` (see `list`)"
    )


def rollback(models_dir: str | Path) -> tuple[str, str]:
    """Switch ``current`` back (see :func:`rollback_target`); returns (from, to)."""
    models_dir = Path(models_dir)
    current = active_version(models_dir)
    target = rollback_target(models_dir)
    activate(models_dir, target, reason=ROLLBACK)
    return str(current), target


def list_versions(models_dir: str | Path) -> list[str]:
    """Version names in ``models_dir``, oldest first (names sort chronologically)."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in models_dir.iterdir()
        if not entry.name.startswith(".")
        and entry.name != CURRENT
        and entry.is_dir()
        and not entry.is_symlink()
        and (entry / METADATA_FILE).is_file()
    )


def active_version(models_dir: str | Path) -> str | None:
    """Name of the version ``current`` points at, or None if there is no ``current``."""
    link = Path(models_dir) / CURRENT
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def resolve(path: str | Path) -> Path:
    """The real version directory for a version dir, a ``current`` symlink or a models dir.

    Symlinks are resolved here, once: callers that keep the result keep that version
    even if ``current`` is switched afterwards.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ModelError(f"{path} points to {os.readlink(path)!r}, which does not exist")
    if not path.exists():
        raise ModelError(f"model path not found: {path}")
    if not path.is_dir():
        raise ModelError(f"model path is not a directory: {path}")
    if (path / METADATA_FILE).exists() or (path / MODEL_FILE).exists():
        return Path(os.path.realpath(path))
    current = path / CURRENT
    if current.is_symlink() or current.exists():
        return resolve(current)
    versions = list_versions(path)
    if versions:
        raise ModelError(
            f"{path} has no active model ('{CURRENT}' missing); activate one of: "
            + ", ".join(versions)
        )
    raise ModelError(f"{path} is neither a model version nor a models directory with a model")
