"""Shared pieces of the ``python -m model`` commands: argument types, settings, output."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

from contract.timestamps import (
    EPOCH_UNITS,
    CsvTimeRules,
    TimestampError,
    parse_wire_ns,
    timezone_named,
)
from model.config import ModelConfig
from model.dataset import DatasetError
from model.detectors import DETECTORS

SCORE_CHUNK_ROWS = 5_000
# Labelled simulator CSVs (python -m sensors.simulate --csv) use these columns.
AUTO_LABEL_COLUMN = "is_anomaly"
AUTO_FAULT_COLUMN = "fault"


def emit(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def delimiter_arg(value: str) -> str:
    named = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    value = named.get(value.lower(), value)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"delimiter must be one character, got {value!r}")
    return value


def features_arg(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        # argparse prefixes "argument --<flag>:", so the message names the right flag.
        raise argparse.ArgumentTypeError("needs at least one column name")
    return names


def device_columns_arg(value: str) -> list[str]:
    """Comma-separated columns naming the device; '' = the file is one device."""
    return [v.strip() for v in value.split(",") if v.strip()]


def timezone_arg(value: str) -> tzinfo:
    try:
        return timezone_named(value)
    except TimestampError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def add_csv_time_options(p: argparse.ArgumentParser) -> None:
    """How the CSV commands read timestamps (see contract.timestamps)."""
    p.add_argument("--timezone", type=timezone_arg, default=UTC, metavar="NAME",
                   help="zone of timestamps without a UTC offset (in the CSV and in "
                        "--train-until), e.g. Europe/Berlin (default UTC)")  # fmt: skip
    p.add_argument("--epoch-unit", choices=list(EPOCH_UNITS), default="s",
                   help="unit of numeric timestamps (default s; milliseconds are never "
                        "guessed: a too-large value is an error naming this flag)")  # fmt: skip


def add_train_part_options(p: argparse.ArgumentParser) -> None:
    """``train``: fit on the beginning of the file and evaluate on the rest."""
    group = p.add_argument_group(
        "training part",
        "By default the rows are split at random (--seed, --validation-fraction, "
        "--test-fraction). These options take the training part from the beginning of "
        "the file instead; the threshold's validation rows are drawn from it, and every "
        "other row is the evaluation (test) part.",
    )
    part = group.add_mutually_exclusive_group()
    part.add_argument("--train-rows", type=positive_int_arg, metavar="N",
                      help="train on the first N usable rows")  # fmt: skip
    part.add_argument("--train-until", metavar="TIME",
                      help="train on the rows stamped before TIME (ISO 8601 or epoch; "
                           "without an offset: in --timezone)")  # fmt: skip


def time_rules_of(args: argparse.Namespace) -> CsvTimeRules:
    # getattr: commands whose parser has no --timezone/--epoch-unit read by the defaults.
    return CsvTimeRules(
        timezone=getattr(args, "timezone", UTC), epoch_unit=getattr(args, "epoch_unit", "s")
    )


def feature_sets_arg(value: str) -> list[list[str]]:
    sets = [features_arg(part) for part in value.split(";") if part.strip()]
    if not sets:
        raise argparse.ArgumentTypeError("--feature-sets needs at least one feature list")
    return sets


def detectors_arg(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in DETECTORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown detector(s) {unknown}; available: {sorted(DETECTORS)}"
        )
    return names


def time_arg(value: str) -> int:
    """RFC 3339 with a UTC offset -> epoch nanoseconds (exact), by the wire's rules."""
    try:
        return parse_wire_ns(value, "time")
    except TimestampError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def param_arg(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        parsed = json.loads(raw)  # numbers, true/false, null
    except json.JSONDecodeError:
        parsed = raw
    return key.strip(), parsed


def format_value(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def estimate_rows(path: Path) -> int | None:
    """Data rows from a newline count: fast, exact unless fields hold newlines."""
    try:
        with open(path, "rb") as fh:
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return None
    return max(lines - 1, 0) or None


def config_of(args: argparse.Namespace) -> ModelConfig:
    return args.cfg


def models_dir_of(args: argparse.Namespace) -> Path:
    return args.models_dir if args.models_dir is not None else Path(config_of(args).models_dir)


def model_path_of(args: argparse.Namespace) -> Path:
    return args.model if args.model is not None else models_dir_of(args) / "current"


def pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def output_dir_for(path: Path) -> Path:
    parent = path.resolve().parent
    if not parent.is_dir():
        raise DatasetError(f"output directory does not exist: {parent}")
    return parent


def write_atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=output_dir_for(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def format_metrics(metrics: dict[str, Any]) -> list[str]:
    support = metrics["support"]
    lines = [
        f"  precision         {format_value(metrics['precision'])}",
        f"  recall            {format_value(metrics['recall'])}",
        f"  F1                {format_value(metrics['f1'])}",
        f"  ROC-AUC           {format_value(metrics['roc_auc'])}",
        f"  false-alarm rate  {format_value(metrics['false_alarm_rate'], 4)}"
        f"  ({support['fp']} of {support['normal']} normal readings)",
        f"  anomalies caught  {support['tp']} of {support['anomalies']}",
    ]
    per_fault = metrics.get("per_fault")
    if per_fault:
        width = max(12, *(len(name) for name in per_fault))
        lines.append("")
        lines.append(f"  {'fault':<{width}}  {'rows':>7}  recall")
        for name, row in sorted(per_fault.items()):
            lines.append(f"  {name:<{width}}  {row['n']:>7}  {format_value(row['recall'])}")
    return lines


def summary_lines(meta: dict[str, Any], active: str | None = None) -> list[str]:
    training = meta.get("training", {})
    features = ", ".join(
        f"{f['name']} [{f['unit']}]" if f.get("unit") else f["name"] for f in meta["features"]
    )
    marker = " (active)" if active and active == meta.get("version") else ""
    lines = [
        f"version    {meta.get('version')}{marker}",
        f"detector   {meta.get('detector')} {json.dumps(meta.get('params', {}))}",
        f"features   {features}",
        f"threshold  {meta.get('threshold'):.4f}",
        f"created    {meta.get('created_at')}",
        f"trained on {training.get('source')}: {training.get('rows')} rows "
        f"(fit on {training.get('fit_on')}), sha256 {str(training.get('data_sha256'))[:12]}",
    ]
    part = training.get("split", {}).get("train_part")
    if part:
        first = f"first {part['first_rows']} rows" if "first_rows" in part else None
        lines.append(
            f"split      trained on the {first or 'rows before ' + str(part.get('until'))} "
            f"({part.get('rows')} rows); tested on the other {part.get('evaluated_rows')}"
        )
    stream = meta.get("stream_features")
    if stream:
        windows = ", ".join(f"{k} {v}" for k, v in stream["window"].items())
        lines.append(
            f"windows    per device, last N readings: {windows} "
            f"(warm-up {stream['warmup_readings']} readings)"
        )
    retrain = meta.get("retrain")
    if retrain:
        verdict = "not worse" if retrain.get("not_worse") else "worse"
        lines.append(
            f"retrained  from InfluxDB {retrain['history']['database']}: "
            f"{retrain['history']['train']} readings; {verdict} than "
            f"{(retrain.get('compared_with') or {}).get('version', 'no model')}"
        )
    test = (meta.get("metrics") or {}).get("test")
    if test and "f1" in test:
        lines.append("test metrics:")
        lines.extend(format_metrics(test))
    elif test:
        lines.append(f"test alarm rate {format_value(test.get('alarm_rate'), 4)} (unlabelled)")
    return lines
