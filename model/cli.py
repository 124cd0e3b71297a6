"""``python -m model``: train, evaluate, score, and manage model versions.

Results go to stdout, logs to stderr.  Problems the user can fix (bad CSV, missing
column, missing model) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.logs import setup_logging
from common.progress import Progress
from model.artifact import (
    ModelError,
    activate,
    active_version,
    list_versions,
    read_metadata,
    resolve,
    save_artifact,
)
from model.calibration import DEFAULT_MAX_FALSE_ALARM_RATE
from model.dataset import CsvSource, DatasetError, fault_labels, load_csv
from model.detectors import DETECTORS
from model.envelope import DEFAULT_WEIGHT
from model.metrics import evaluate
from model.scorer import load_scorer
from model.training import TrainingError, train

_LOG = logging.getLogger("model.cli")

EXIT_USAGE = 2
DEFAULT_MODELS_DIR = "var/models"
SCORE_CHUNK_ROWS = 5_000


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _delimiter(value: str) -> str:
    named = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    value = named.get(value.lower(), value)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"delimiter must be one character, got {value!r}")
    return value


def _features(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--features needs at least one column name")
    return names


def _param(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    try:
        parsed = json.loads(raw)  # numbers, true/false, null
    except json.JSONDecodeError:
        parsed = raw
    return key.strip(), parsed


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _estimate_rows(path: Path) -> int | None:
    """Data rows from a newline count: fast, exact unless fields hold newlines."""
    try:
        with open(path, "rb") as fh:
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return None
    return max(lines - 1, 0) or None


def _csv_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", required=True, type=Path, help="input CSV file")
    parser.add_argument(
        "--delimiter", type=_delimiter, default=",", help="field separator (',', ';', tab)"
    )
    parser.add_argument(
        "--drop-invalid",
        action="store_true",
        help="skip rows with missing/non-numeric feature values instead of failing",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model version from a CSV")
    _csv_options(p)
    p.add_argument("--features", type=_features, help="comma-separated feature columns")
    p.add_argument("--timestamp-column")
    p.add_argument("--label-column", help="1/true/<fault name> = anomaly, 0/false/normal = not")
    p.add_argument("--fault-column", help="fault type per row, for per-fault recall")
    p.add_argument("--models-dir", type=Path, default=Path(DEFAULT_MODELS_DIR))
    p.add_argument("--detector", choices=sorted(DETECTORS), default="isolation_forest")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="detector parameter, e.g. n_estimators=200 (repeatable)")  # fmt: skip
    p.add_argument("--fit-on", choices=["normal", "all"], default="normal")
    p.add_argument("--contamination", type=float, default=0.01,
                   help="expected anomaly fraction, sets the threshold without labels")  # fmt: skip
    p.add_argument("--max-false-alarm-rate", type=float, default=DEFAULT_MAX_FALSE_ALARM_RATE,
                   help="with labels: cap on the share of normal validation readings "
                        "that may alert (default %(default)s)")  # fmt: skip
    p.add_argument("--envelope-weight", type=float, default=DEFAULT_WEIGHT,
                   help="weight of the out-of-training-range term (0 disables)")  # fmt: skip
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--no-activate", action="store_true", help="do not switch 'current'")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a model on a labelled CSV")
    _csv_options(p)
    p.add_argument("--model", type=Path, default=Path(DEFAULT_MODELS_DIR) / "current")
    p.add_argument("--label-column", help="default: the column the model was trained with")
    p.add_argument("--fault-column", help="default: the column the model was trained with")
    p.add_argument("--out", type=Path, help="write the metrics as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="add score and is_anomaly columns to a CSV")
    _csv_options(p)
    p.add_argument("--out", type=Path, required=True, help="output CSV")
    p.add_argument("--model", type=Path, default=Path(DEFAULT_MODELS_DIR) / "current")
    p.add_argument("--chunk-rows", type=int, default=SCORE_CHUNK_ROWS)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("list", help="list model versions")
    p.add_argument("--models-dir", type=Path, default=Path(DEFAULT_MODELS_DIR))
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("activate", help="make VERSION the active model")
    p.add_argument("version")
    p.add_argument("--models-dir", type=Path, default=Path(DEFAULT_MODELS_DIR))
    p.set_defaults(func=cmd_activate)

    p = sub.add_parser("info", help="describe the active (or given) model")
    p.add_argument("--models-dir", type=Path, default=Path(DEFAULT_MODELS_DIR))
    p.add_argument("--model", type=Path, help="version dir or symlink (overrides --models-dir)")
    p.add_argument("--json", action="store_true", help="print the full metadata.json")
    p.set_defaults(func=cmd_info)
    return parser


# --- reports ---------------------------------------------------------------------------


def format_metrics(metrics: dict[str, Any]) -> list[str]:
    support = metrics["support"]
    lines = [
        f"  precision         {_fmt(metrics['precision'])}",
        f"  recall            {_fmt(metrics['recall'])}",
        f"  F1                {_fmt(metrics['f1'])}",
        f"  ROC-AUC           {_fmt(metrics['roc_auc'])}",
        f"  false-alarm rate  {_fmt(metrics['false_alarm_rate'], 4)}"
        f"  ({support['fp']} of {support['normal']} normal readings)",
        f"  anomalies caught  {support['tp']} of {support['anomalies']}",
    ]
    per_fault = metrics.get("per_fault")
    if per_fault:
        width = max(12, *(len(name) for name in per_fault))
        lines.append("")
        lines.append(f"  {'fault':<{width}}  {'rows':>7}  recall")
        for name, row in sorted(per_fault.items()):
            lines.append(f"  {name:<{width}}  {row['n']:>7}  {_fmt(row['recall'])}")
    return lines


def _summary(meta: dict[str, Any], active: str | None = None) -> list[str]:
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
    test = (meta.get("metrics") or {}).get("test")
    if test and "f1" in test:
        lines.append("test metrics:")
        lines.extend(format_metrics(test))
    elif test:
        lines.append(f"test alarm rate {_fmt(test.get('alarm_rate'), 4)} (unlabelled)")
    return lines


# --- commands --------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    progress = Progress(None, "loading", _LOG)
    dataset = load_csv(
        args.csv,
        features=args.features,
        delimiter=args.delimiter,
        timestamp_column=args.timestamp_column,
        label_column=args.label_column,
        fault_column=args.fault_column,
        drop_invalid=args.drop_invalid,
    )
    progress.advance(len(dataset))
    progress.done()
    if dataset.y is None and dataset.faults is not None:
        # A fault-type column is a label column too: "none"/"normal"/"" = normal.
        dataset = dataclasses.replace(
            dataset, y=fault_labels(dataset.faults), label_column=dataset.fault_column
        )
    pipeline, metadata = train(
        dataset,
        detector=args.detector,
        random_state=args.seed,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        fit_on=args.fit_on,
        contamination=args.contamination,
        max_false_alarm_rate=args.max_false_alarm_rate,
        envelope_weight=args.envelope_weight,
        params=dict(args.param),
    )
    version_dir = save_artifact(args.models_dir, pipeline, metadata, activate=not args.no_activate)
    meta = read_metadata(version_dir)
    _out(f"saved {version_dir}{'' if args.no_activate else ' (active)'}")
    for line in _summary(meta):
        _out(line)
    return 0


def _label_columns(args: argparse.Namespace, meta: dict[str, Any], header: Sequence[str]):
    """Explicit options win; otherwise reuse the training columns if this CSV has them."""
    training = meta.get("training", {})
    label, fault = args.label_column, args.fault_column
    if label is None and training.get("label_column") in header:
        label = training["label_column"]
    if fault is None and training.get("fault_column") in header:
        fault = training["fault_column"]
    return label, fault


def cmd_evaluate(args: argparse.Namespace) -> int:
    scorer = load_scorer(args.model)
    with CsvSource(args.csv, features=list(scorer.features), delimiter=args.delimiter) as probe:
        header = probe.header
    label, fault = _label_columns(args, scorer.metadata, header)
    if label is None and fault is None:
        raise DatasetError(
            f"{args.csv.name}: evaluate needs labels; pass --label-column or --fault-column"
        )
    scores, labels, faults = [], [], []
    dropped = 0
    with (
        CsvSource(
            args.csv,
            features=list(scorer.features),
            delimiter=args.delimiter,
            label_column=label,
            fault_column=fault,
        ) as source,
        Progress(_estimate_rows(args.csv), "evaluating", _LOG) as progress,
    ):
        for chunk in source.chunks(drop_invalid=args.drop_invalid):
            scores.append(scorer.score(chunk.X))
            labels.append(chunk.y if chunk.y is not None else fault_labels(chunk.faults))
            if chunk.faults is not None:
                faults.append(chunk.faults)
            dropped += chunk.dropped
            progress.advance(len(chunk.rows))
    if not scores:
        raise DatasetError(f"{args.csv.name}: no data rows")
    all_scores = np.concatenate(scores)
    metrics = evaluate(
        all_scores,
        np.concatenate(labels),
        scorer.threshold,
        faults=np.concatenate(faults) if faults else None,
    )
    metrics["model"] = scorer.version
    metrics["source"] = args.csv.name
    metrics["label_column"] = label
    metrics["fault_column"] = fault
    metrics["rows_dropped"] = dropped
    support = metrics["support"]
    _out(f"model {scorer.version} ({scorer.detector}), threshold {scorer.threshold:.4f}")
    _out(
        f"data  {args.csv.name}: {support['rows']} rows, {support['anomalies']} anomalies"
        + (f", {dropped} invalid rows dropped" if dropped else "")
    )
    _out()
    for line in format_metrics(metrics):
        _out(line)
    if args.out:
        _write_atomic_text(args.out, json.dumps(metrics, indent=2) + "\n")
        _out(f"\nmetrics written to {args.out}")
    return 0


def _unique_column(header: Sequence[str], name: str) -> str:
    # A labelled input often already has "is_anomaly": keep it, add ours beside it.
    while name in header:
        name = f"{name}_pred"
    return name


def cmd_score(args: argparse.Namespace) -> int:
    if args.chunk_rows < 1:
        raise DatasetError("--chunk-rows must be >= 1")
    _output_dir(args.out)  # fail before loading the model
    scorer = load_scorer(args.model)
    flagged = total = dropped = 0
    with CsvSource(args.csv, features=list(scorer.features), delimiter=args.delimiter) as source:
        header = list(source.header)
        score_col = _unique_column(header, "score")
        flag_col = _unique_column([*header, score_col], "is_anomaly")
        if (score_col, flag_col) != ("score", "is_anomaly"):
            _LOG.warning("input already has score/is_anomaly; writing %s, %s", score_col, flag_col)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=_output_dir(args.out))
        try:
            with (
                os.fdopen(fd, "w", encoding="utf-8", newline="") as fh,
                Progress(_estimate_rows(args.csv), "scoring", _LOG) as progress,
            ):
                writer = csv.writer(fh, delimiter=args.delimiter)
                writer.writerow([*header, score_col, flag_col])
                for chunk in source.chunks(args.chunk_rows, drop_invalid=args.drop_invalid):
                    scores = scorer.score(chunk.X)
                    alerts = scorer.is_anomaly(scores)
                    writer.writerows(
                        [*chunk.rows[i], f"{s:.6f}", "1" if a else "0"]
                        for i, s, a in zip(chunk.kept, scores, alerts, strict=True)
                    )
                    flagged += int(alerts.sum())
                    total += len(scores)
                    dropped += chunk.dropped
                    progress.advance(len(chunk.rows))
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, args.out)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    rate = 100.0 * flagged / total if total else 0.0
    _out(
        f"scored {total} rows with model {scorer.version}: {flagged} anomalies ({rate:.2f}%)"
        + (f", {dropped} invalid rows dropped" if dropped else "")
        + f" -> {args.out}"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    versions = list_versions(args.models_dir)
    if not versions:
        _out(f"no model versions in {args.models_dir}")
        return 0
    active = active_version(args.models_dir)
    _out(f"  {'version':<28} {'created':<21} {'detector':<17} {'threshold':>9} {'test F1':>8}")
    for version in versions:
        try:
            meta = read_metadata(args.models_dir / version)
        except ModelError as exc:
            _out(f"  {version:<28} unreadable: {exc}")
            continue
        test = (meta.get("metrics") or {}).get("test") or {}
        mark = "*" if version == active else " "
        _out(
            f"{mark} {version:<28} {meta.get('created_at', '?'):<21} "
            f"{meta.get('detector', '?'):<17} {meta.get('threshold', float('nan')):>9.4f} "
            f"{_fmt(test.get('f1')):>8}"
        )
    if active is None:
        _out("no active model ('current' is not set)")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    # Load it first: activating a model the gateway cannot load would take it down.
    load_scorer(args.models_dir / args.version)
    activate(args.models_dir, args.version)
    _out(f"active model is now {args.version}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    version_dir = resolve(args.model if args.model else args.models_dir)
    meta = read_metadata(version_dir)
    if args.json:
        _out(json.dumps(meta, indent=2))
        return 0
    models_dir = version_dir.parent
    for line in _summary(meta, active_version(models_dir)):
        _out(line)
    _out(f"path       {version_dir}")
    return 0


def _output_dir(path: Path) -> Path:
    parent = path.resolve().parent
    if not parent.is_dir():
        raise DatasetError(f"output directory does not exist: {parent}")
    return parent


def _write_atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=_output_dir(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except (DatasetError, ModelError, TrainingError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"error: {exc.strerror or exc}{where}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
