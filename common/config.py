"""Typed configuration: TOML file -> frozen dataclasses, with environment overrides.

Every process loads its config once at start-up with :func:`load_config`.  Any scalar
setting can be overridden from the environment as ``<PREFIX>_<SECTION>_<FIELD>``
(e.g. ``GATEWAY_MQTT_HOST=broker.local``) so that systemd units and containers can
inject connection settings and secrets without editing the file.  Unknown keys and
wrong types are errors that name the offending key: a typo must not silently fall
back to a default on a factory floor.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def _coerce_scalar(value: Any, typ: Any, where: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {typ!r}")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return _build(typ, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        item_type = typing.get_args(typ)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        _, val_type = typing.get_args(typ)
        return {str(k): _coerce(v, val_type, f"{where}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, typ, where)


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(fields)}")
    kwargs = {
        name: _coerce(data[name], hints[name], f"{where}.{name}" if where else name)
        for name in fields
        if name in data
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _apply_env(cls: type, data: dict[str, Any], prefix: str, env: typing.Mapping[str, str]) -> None:
    """Overlay ``PREFIX_FIELD`` / ``PREFIX_SECTION_FIELD`` environment variables onto data."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        key = f"{prefix}_{f.name}".upper()
        if dataclasses.is_dataclass(typ):
            sub = data.setdefault(f.name, {})
            if isinstance(sub, dict):
                _apply_env(typ, sub, key, env)
        elif key in env:
            data[f.name] = env[key]


def load_config(
    cls: type[T],
    path: str | Path | None,
    env_prefix: str,
    env: typing.Mapping[str, str] | None = None,
) -> T:
    """Load ``path`` (TOML; may be None for defaults) into ``cls`` with env overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    _apply_env(cls, data, env_prefix, os.environ if env is None else env)
    return _build(cls, data, "")


def read_secret(value: str, file: str, what: str) -> str:
    """A secret comes inline (env) or from a credential file (systemd LoadCredential)."""
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read secret file {file}: {exc.strerror}") from None
    return value


def redacted(obj: Any) -> Any:
    """Config as a dict with secrets masked, for logs and --check-config."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            secret = any(s in f.name for s in ("password", "token", "secret", "api_key"))
            secret = secret and not f.name.endswith("_file")
            out[f.name] = "***" if secret and value else redacted(value)
        return out
    if isinstance(obj, tuple | list):
        return [redacted(v) for v in obj]
    if isinstance(obj, dict):
        return {k: redacted(v) for k, v in obj.items()}
    return obj
