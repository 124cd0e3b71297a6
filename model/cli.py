"""``python -m model``: train, compare, evaluate, score, retrain, and manage versions.

Results go to stdout, logs to stderr.  Problems the user can fix (bad CSV, missing
column, missing model, unreachable InfluxDB) print one ``error:`` line and exit with
status 2.  Settings come from ``--config`` (TOML, see :mod:`model.config`), then the
``MODEL_*`` environment, then the flags.
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
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ConfigError
from common.logs import setup_logging
from common.progress import Progress
from model.artifact import (
    ModelError,
    activate,
    active_version,
    list_versions,
    read_metadata,
    resolve,
    rollback,
    rollback_target,
    save_artifact,
)
from model.compare import compare, format_table
from model.config import ModelConfig, load_model_config
from model.dataset import (
    DEFAULT_GROUP_COLUMNS,
    CsvSource,
    Dataset,
    DatasetError,
    auto_group_columns,
    canonical_feature,
    default_features,
    fault_labels,
    load_csv,
)
from model.detectors import DETECTORS
from model.influx_history import HistoryError
from model.metrics import evaluate
from model.retrain import RetrainError, RetrainReport, RetrainRequest, run_retrain
from model.scorer import Scorer, load_scorer
from model.stream_features import OutOfOrderReading, RollingWindow, StreamFeatureError
from model.training import TrainingError, train

_LOG = logging.getLogger("model.cli")

EXIT_USAGE = 2
SCORE_CHUNK_ROWS = 5_000
# Labelled simulator CSVs (python -m sensors.simulate --csv) use these columns.
AUTO_LABEL_COLUMN = "is_anomaly"
AUTO_FAULT_COLUMN = "fault"


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


def _feature_sets(value: str) -> list[list[str]]:
    sets = [_features(part) for part in value.split(";") if part.strip()]
    if not sets:
        raise argparse.ArgumentTypeError("--feature-sets needs at least one feature list")
    return sets


def _detectors(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in DETECTORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown detector(s) {unknown}; available: {sorted(DETECTORS)}"
        )
    return names


def _time_ns(value: str) -> int:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError("give a UTC offset, e.g. 2026-11-01T00:00:00Z")
    return (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


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


def _training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train and compare; None = from the config (see model.config)."""
    p.add_argument("--timestamp-column", help="default: ts when stream features are used")
    p.add_argument("--device-columns", type=_features,
                   help="columns naming the device for stream features "
                        f"(default: {','.join(DEFAULT_GROUP_COLUMNS)} if present)")  # fmt: skip
    p.add_argument("--label-column", help="1/true/<fault name> = anomaly, 0/false/normal = not")
    p.add_argument("--fault-column", help="fault type per row, for per-fault recall")
    p.add_argument("--seed", type=int)
    p.add_argument("--fit-on", choices=["normal", "all"])
    p.add_argument("--contamination", type=float,
                   help="expected anomaly fraction, sets the threshold without labels")  # fmt: skip
    p.add_argument("--max-false-alarm-rate", type=float,
                   help="with labels: cap on the share of normal validation readings "
                        "that may alert (default 0.005)")  # fmt: skip
    p.add_argument("--envelope-weight", type=float,
                   help="weight of the out-of-training-range term (0 disables)")  # fmt: skip
    p.add_argument("--validation-fraction", type=float)
    p.add_argument("--test-fraction", type=float)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    parser.add_argument("--config", type=Path, help="TOML settings (see docs/model.md)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model version from a CSV")
    _csv_options(p)
    p.add_argument("--features", type=_features,
                   help="comma-separated feature columns and stream features "
                        "(e.g. temperature_c,sound_db,temperature_c__std_10)")  # fmt: skip
    _training_options(p)
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--detector", choices=sorted(DETECTORS))
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="detector parameter, e.g. n_estimators=200 (repeatable)")  # fmt: skip
    p.add_argument("--no-activate", action="store_true", help="do not switch 'current'")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train detectors on the same split and compare them")
    _csv_options(p)
    p.add_argument("--detectors", type=_detectors, default=["isolation_forest", "pca_t2q"],
                   help="comma-separated (default: isolation_forest,pca_t2q)")  # fmt: skip
    p.add_argument("--features", type=_features, help="one feature list for every detector")
    p.add_argument("--feature-sets", type=_feature_sets,
                   help="';'-separated feature lists, compared on the same rows")  # fmt: skip
    _training_options(p)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("evaluate", help="metrics of a model on a labelled CSV")
    _csv_options(p)
    p.add_argument("--model", type=Path, help="default: <models-dir>/current")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--label-column", help="default: the column the model was trained with")
    p.add_argument("--fault-column", help="default: the column the model was trained with")
    p.add_argument("--out", type=Path, help="write the metrics as JSON here")
    p.add_argument("--timestamp-column", help="stream-feature models: default ts")
    p.add_argument("--device-columns", type=_features,
                   help="stream-feature models: default line,device")  # fmt: skip
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="add score and is_anomaly columns to a CSV")
    _csv_options(p)
    p.add_argument("--out", type=Path, required=True, help="output CSV")
    p.add_argument("--model", type=Path, help="default: <models-dir>/current")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--chunk-rows", type=int, default=SCORE_CHUNK_ROWS)
    p.add_argument("--timestamp-column", help="stream-feature models: default ts")
    p.add_argument("--device-columns", type=_features,
                   help="stream-feature models: default line,device")  # fmt: skip
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("retrain", help="retrain from InfluxDB history; promote if not worse")
    p.add_argument("--influx-url", help="InfluxDB 1.x URL (default from config)")
    p.add_argument("--database")
    p.add_argument("--since", type=_time_ns, help="RFC 3339 (default: until - 7 days)")
    p.add_argument("--until", type=_time_ns, help="RFC 3339 (default: now)")
    p.add_argument("--line", help="only this line")
    p.add_argument("--device-regex", help="only devices matching this regex")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--detector", choices=sorted(DETECTORS))
    p.add_argument("--features", type=_features, help="default: the active model's features")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int)
    p.add_argument("--labelled-csv", type=Path, help="also compare on this labelled CSV")
    p.add_argument("--label-column", help=f"with --labelled-csv (default {AUTO_LABEL_COLUMN})")
    p.add_argument("--fault-column", help=f"with --labelled-csv (default {AUTO_FAULT_COLUMN})")
    p.add_argument("--out", type=Path, help="write the comparison as JSON here")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--promote-if-not-worse", action="store_true",
                      help="activate the candidate only if it is not worse (default)")  # fmt: skip
    mode.add_argument("--force", action="store_true", help="activate the candidate anyway")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("rollback", help="reactivate the version active before the current one")
    p.add_argument("--models-dir", type=Path)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("list", help="list model versions")
    p.add_argument("--models-dir", type=Path)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("activate", help="make VERSION the active model")
    p.add_argument("version")
    p.add_argument("--models-dir", type=Path)
    p.set_defaults(func=cmd_activate)

    p = sub.add_parser("info", help="describe the active (or given) model")
    p.add_argument("--models-dir", type=Path)
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
        lines.append(f"test alarm rate {_fmt(test.get('alarm_rate'), 4)} (unlabelled)")
    return lines


# --- commands --------------------------------------------------------------------------


def _cfg(args: argparse.Namespace) -> ModelConfig:
    return args.cfg


def _models_dir(args: argparse.Namespace) -> Path:
    return args.models_dir if args.models_dir is not None else Path(_cfg(args).models_dir)


def _model_path(args: argparse.Namespace) -> Path:
    return args.model if args.model is not None else _models_dir(args) / "current"


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    t = _cfg(args).train
    return {
        "random_state": _pick(args.seed, t.seed),
        "validation_fraction": _pick(args.validation_fraction, t.validation_fraction),
        "test_fraction": _pick(args.test_fraction, t.test_fraction),
        "fit_on": _pick(args.fit_on, t.fit_on),
        "contamination": _pick(args.contamination, t.contamination),
        "max_false_alarm_rate": _pick(args.max_false_alarm_rate, t.max_false_alarm_rate),
        "envelope_weight": _pick(args.envelope_weight, t.envelope_weight),
    }


def _header(path: Path, delimiter: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            row = next(csv.reader(fh, delimiter=delimiter), None)
    except FileNotFoundError:
        raise DatasetError(f"CSV file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read the header of {path}: {exc}") from None
    if row is None:
        raise DatasetError(f"{path.name}: file is empty (no header line)")
    return [h.strip() for h in row]


def _load_training_csv(
    args: argparse.Namespace, features: list[str] | None, label: str | None, fault: str | None
) -> Dataset:
    progress = Progress(None, "loading", _LOG)
    dataset = load_csv(
        args.csv,
        features=features,
        delimiter=args.delimiter,
        timestamp_column=args.timestamp_column,
        label_column=label,
        fault_column=fault,
        drop_invalid=args.drop_invalid,
        group_columns=args.device_columns,
    )
    progress.advance(len(dataset))
    progress.done()
    if dataset.y is None and dataset.faults is not None:
        # A fault-type column is a label column too: "none"/"normal"/"" = normal.
        dataset = dataclasses.replace(
            dataset, y=fault_labels(dataset.faults), label_column=dataset.fault_column
        )
    return dataset


def cmd_train(args: argparse.Namespace) -> int:
    t = _cfg(args).train
    detector = args.detector or t.detector
    features = args.features or (list(t.features) or None)
    dataset = _load_training_csv(args, features, args.label_column, args.fault_column)
    pipeline, metadata = train(
        dataset,
        detector=detector,
        params={**t.detector_params(detector), **dict(args.param)},
        **_train_options(args),
    )
    models_dir = _models_dir(args)
    version_dir = save_artifact(models_dir, pipeline, metadata, activate=not args.no_activate)
    meta = read_metadata(version_dir)
    _out(f"saved {version_dir}{'' if args.no_activate else ' (active)'}")
    for line in _summary(meta):
        _out(line)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    t = _cfg(args).train
    if args.features and args.feature_sets:
        raise DatasetError("give --features or --feature-sets, not both")
    sets = args.feature_sets or [args.features or list(t.features) or default_features()]
    sets = [[canonical_feature(f) for f in names] for names in sets]
    union = list(dict.fromkeys(f for names in sets for f in names))
    label, fault = args.label_column, args.fault_column
    if label is None and fault is None:
        header = _header(args.csv, args.delimiter)
        label = AUTO_LABEL_COLUMN if AUTO_LABEL_COLUMN in header else None
        fault = AUTO_FAULT_COLUMN if AUTO_FAULT_COLUMN in header else None
        if label is None and fault is None:
            raise DatasetError(
                f"{args.csv.name}: compare needs labels; pass --label-column or --fault-column"
            )
    dataset = _load_training_csv(args, union, label, fault)
    if dataset.y is None:
        raise DatasetError(f"{args.csv.name}: compare needs labels")
    runs = compare(
        dataset,
        args.detectors,
        sets,
        params={d: t.detector_params(d) for d in args.detectors},
        **_train_options(args),
    )
    skipped = []
    if dataset.rows_warmup:
        skipped.append(f"{dataset.rows_warmup} warm-up")
    if dataset.rows_duplicate:
        skipped.append(f"{dataset.rows_duplicate} duplicate")
    if dataset.rows_dropped:
        skipped.append(f"{dataset.rows_dropped} invalid")
    _out(
        f"data {args.csv.name}: {len(dataset)} rows, {int(dataset.y.sum())} anomalies"
        + (f" ({', '.join(skipped)} rows left out)" if skipped else "")
        + f"; same split for every run (seed {_train_options(args)['random_state']})"
    )
    if len(sets) > 1:
        for i, names in enumerate(sets, start=1):
            _out(f"  [{i}] {','.join(names)}")
    else:
        _out(f"features {','.join(sets[0])}")
    _out()
    for line in format_table(runs):
        _out(line)
    if args.out:
        body = {
            "source": args.csv.name,
            "rows": len(dataset),
            "label_column": label,
            "fault_column": fault,
            "rows_warmup": dataset.rows_warmup,
            "runs": [r.to_dict() for r in runs],
        }
        _write_atomic_text(args.out, json.dumps(body, indent=2) + "\n")
        _out(f"\nresults written to {args.out}")
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


def _score_dataset(scorer: Scorer, X: np.ndarray) -> np.ndarray:
    parts = [scorer.score(X[i : i + SCORE_CHUNK_ROWS]) for i in range(0, len(X), SCORE_CHUNK_ROWS)]
    return np.concatenate(parts) if parts else np.empty(0)


def cmd_evaluate(args: argparse.Namespace) -> int:
    scorer = load_scorer(_model_path(args))
    header = _header(args.csv, args.delimiter)
    label, fault = _label_columns(args, scorer.metadata, header)
    if label is None and fault is None:
        raise DatasetError(
            f"{args.csv.name}: evaluate needs labels; pass --label-column or --fault-column"
        )
    warmup = 0
    if scorer.stream.has_derived:
        # Windows need each device's whole history in time order: load it at once.
        data = load_csv(
            args.csv,
            features=list(scorer.features),
            delimiter=args.delimiter,
            label_column=label,
            fault_column=fault,
            drop_invalid=args.drop_invalid,
            timestamp_column=args.timestamp_column,
            group_columns=args.device_columns,
        )
        all_scores = _score_dataset(scorer, data.X)
        all_labels = data.y if data.y is not None else fault_labels(data.faults)
        all_faults = data.faults
        dropped, warmup = data.rows_dropped + data.rows_duplicate, data.rows_warmup
    else:
        all_scores, all_labels, all_faults, dropped = _evaluate_streamed(args, scorer, label, fault)
    metrics = evaluate(all_scores, all_labels, scorer.threshold, faults=all_faults)
    metrics["model"] = scorer.version
    metrics["source"] = args.csv.name
    metrics["label_column"] = label
    metrics["fault_column"] = fault
    metrics["rows_dropped"] = dropped
    metrics["rows_warmup"] = warmup
    support = metrics["support"]
    _out(f"model {scorer.version} ({scorer.detector}), threshold {scorer.threshold:.4f}")
    _out(
        f"data  {args.csv.name}: {support['rows']} rows, {support['anomalies']} anomalies"
        + (f", {dropped} invalid rows dropped" if dropped else "")
        + (f", {warmup} warm-up rows not scored" if warmup else "")
    )
    _out()
    for line in format_metrics(metrics):
        _out(line)
    if args.out:
        _write_atomic_text(args.out, json.dumps(metrics, indent=2) + "\n")
        _out(f"\nmetrics written to {args.out}")
    return 0


def _evaluate_streamed(
    args: argparse.Namespace, scorer: Scorer, label: str | None, fault: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
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
    return (
        np.concatenate(scores),
        np.concatenate(labels),
        np.concatenate(faults) if faults else None,
        dropped,
    )


def _unique_column(header: Sequence[str], name: str) -> str:
    # A labelled input often already has "is_anomaly": keep it, add ours beside it.
    while name in header:
        name = f"{name}_pred"
    return name


class _StreamScores:
    """Stream-feature models in ``score``: the gateway's per-device windows, in file order."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.windows: dict[str, RollingWindow] = {}
        self.warmup = 0
        self.out_of_order = 0

    def chunk(self, chunk: Any) -> tuple[np.ndarray, np.ndarray]:
        """(scores with NaN where none, flagged) for the chunk's kept rows."""
        fields = self.scorer.raw_fields
        rows = np.full((len(chunk.kept), len(self.scorer.features)), np.nan)
        ready = np.zeros(len(chunk.kept), dtype=bool)
        for j in range(len(chunk.kept)):
            key = str(chunk.groups[j])
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = self.scorer.new_window()
            values = dict(zip(fields, chunk.X[j].tolist(), strict=True))
            try:
                row = window.update(int(chunk.ts_ns[j]), values)
            except OutOfOrderReading:
                self.out_of_order += 1
                continue
            if row is None:
                self.warmup += 1
                continue
            rows[j], ready[j] = row, True
        scores = np.full(len(chunk.kept), np.nan)
        if ready.any():
            scores[ready] = self.scorer.score(rows[ready])
        return scores, ready & (scores >= self.scorer.threshold)


def cmd_score(args: argparse.Namespace) -> int:
    if args.chunk_rows < 1:
        raise DatasetError("--chunk-rows must be >= 1")
    _output_dir(args.out)  # fail before loading the model
    scorer = load_scorer(_model_path(args))
    flagged = total = dropped = 0
    stream = _StreamScores(scorer) if scorer.stream.has_derived else None
    if stream is None:
        options: dict[str, Any] = {"features": list(scorer.features)}
    else:
        options = {
            "features": list(scorer.raw_fields),
            "timestamp_column": args.timestamp_column or "ts",
            "group_columns": args.device_columns
            or auto_group_columns(args.csv, args.delimiter, list(scorer.raw_fields)),
            "parse_ts": True,
        }
    with CsvSource(args.csv, delimiter=args.delimiter, **options) as source:
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
                    if stream is None:
                        scores = scorer.score(chunk.X)
                        alerts = scorer.is_anomaly(scores)
                    else:
                        scores, alerts = stream.chunk(chunk)
                    writer.writerows(
                        [*chunk.rows[i], *_score_cells(s, a)]
                        for i, s, a in zip(chunk.kept, scores, alerts, strict=True)
                    )
                    flagged += int(alerts.sum())
                    total += int(np.count_nonzero(np.isfinite(scores)))
                    dropped += chunk.dropped
                    progress.advance(len(chunk.rows))
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, args.out)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    rate = 100.0 * flagged / total if total else 0.0
    unscored = ""
    if stream is not None and (stream.warmup or stream.out_of_order):
        unscored = (
            f", {stream.warmup} warm-up and {stream.out_of_order} out-of-order rows left unscored"
        )
    _out(
        f"scored {total} rows with model {scorer.version}: {flagged} anomalies ({rate:.2f}%)"
        + (f", {dropped} invalid rows dropped" if dropped else "")
        + unscored
        + f" -> {args.out}"
    )
    return 0


def _score_cells(score: float, alert: bool) -> tuple[str, str]:
    if not np.isfinite(score):
        return "", ""
    return f"{score:.6f}", "1" if alert else "0"


def _retrain_request(args: argparse.Namespace) -> RetrainRequest:
    cfg = _cfg(args)
    settings = cfg.retrain
    overrides = {
        key: value
        for key, value in (("influx_url", args.influx_url), ("database", args.database))
        if value is not None
    }
    settings = dataclasses.replace(settings, **overrides)
    until = args.until if args.until is not None else time.time_ns()
    since = args.since if args.since is not None else until - int(settings.lookback_s * 1e9)
    if since >= until:
        raise RetrainError("--since must be before --until")
    features = tuple(canonical_feature(f) for f in args.features) if args.features else None
    return RetrainRequest(
        models_dir=_models_dir(args),
        since_ns=since,
        until_ns=until,
        settings=settings,
        detector=args.detector,
        default_detector=cfg.train.detector,
        detector_settings={d: cfg.train.detector_params(d) for d in DETECTORS},
        params=dict(args.param),
        features=features,
        default_features=tuple(cfg.train.features) or tuple(default_features()),
        line=args.line,
        device_regex=args.device_regex,
        force=args.force,
        seed=_pick(args.seed, cfg.train.seed),
        envelope_weight=cfg.train.envelope_weight,
        labelled_csv=args.labelled_csv,
        label_column=args.label_column,
        fault_column=args.fault_column,
    )


def _iso_ns(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat(timespec="seconds")[:19] + "Z"


def format_retrain(report: RetrainReport) -> list[str]:
    h = report.history
    where = f"database {h['database']}"
    if h["line"]:
        where += f", line {h['line']}"
    if h["device_regex"]:
        where += f", devices /{h['device_regex']}/"
    lines = [
        f"history    {_iso_ns(h['since_ns'])} .. {_iso_ns(h['until_ns'])}, {where}",
        f"           {h['readings']} readings from {h['devices']} devices; excluded: "
        f"{h['anomalous']} flagged anomalous, {h['near_sensor_fault_only']} more near sensor "
        f"faults (+-{h['fault_margin_s']:g} s), {h['window_touched']} with an excluded "
        f"reading in their window, {h['warmup']} warm-up",
        f"           trained on {h['train']} readings before {_iso_ns(h['holdout_from_ns'])}, "
        f"held out {h['holdout']} from then on",
        "",
    ]
    models = [m for m in (report.active, report.candidate) if m is not None]
    names = ["active", "candidate"] if report.active else ["candidate"]
    width = max(26, *(len(m.version) + 2 for m in models))
    rows: list[tuple[str, list[str]]] = [
        ("", names),
        ("version", [m.version for m in models]),
        ("detector", [m.detector for m in models]),
        ("threshold", [f"{m.threshold:.4f}" for m in models]),
        ("held-out false-alarm rate", [_fmt(m.holdout["false_alarm_rate"], 4) for m in models]),
        ("held-out flap rate", [_fmt(m.holdout["flap_rate"], 4) for m in models]),
        (
            "held-out mean |score change|",
            [_fmt(m.holdout["mean_abs_score_change"], 4) for m in models],
        ),
        ("held-out score p99", [_fmt(m.holdout["score_p99"], 4) for m in models]),
    ]
    if report.candidate.labelled is not None:
        for key, label in (
            ("precision", "labelled precision"),
            ("recall", "labelled recall"),
            ("f1", "labelled F1"),
            ("false_alarm_rate", "labelled false-alarm rate"),
        ):
            rows.append((label, [_fmt((m.labelled or {}).get(key), 4) for m in models]))
    for label, cells in rows:
        lines.append((f"{label:<30}" + "".join(f"{c:<{width}}" for c in cells)).rstrip())
    lines.append("")
    lines.append('"not worse" checks:')
    for check in report.checks:
        mark = "ok  " if check["ok"] else "FAIL"
        if check["rule"]:
            lines.append(
                f"  [{mark}] {check['check']}: candidate {_fmt(check['candidate'], 4)}, "
                f"active {_fmt(check['active'], 4)} ({check['rule']})"
            )
        else:
            lines.append(f"  [{mark}] {check['check']}")
    candidate = report.candidate.version
    if report.promoted and report.forced:
        lines.append(f"decision: promoted {candidate} by --force although it is worse")
    elif report.promoted:
        was = f" (was {report.previous})" if report.previous else ""
        lines.append(f"decision: promoted {candidate}{was}")
    else:
        lines.append(
            f"decision: kept {report.previous}; candidate saved as {candidate}, not activated "
            f"(activate it with `python -m model activate {candidate}`)"
        )
    return lines


def cmd_retrain(args: argparse.Namespace) -> int:
    report = run_retrain(_retrain_request(args))
    for line in format_retrain(report):
        _out(line)
    if args.out:
        _write_atomic_text(args.out, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    models_dir = _models_dir(args)
    target = rollback_target(models_dir)
    # Load it first: rolling back to a model the gateway cannot load would take it down.
    load_scorer(models_dir / target)
    was, now = rollback(models_dir)
    _out(f"rolled back: active model is now {now} (was {was})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    models_dir = _models_dir(args)
    versions = list_versions(models_dir)
    if not versions:
        _out(f"no model versions in {models_dir}")
        return 0
    active = active_version(models_dir)
    _out(f"  {'version':<28} {'created':<21} {'detector':<17} {'threshold':>9} {'test F1':>8}")
    for version in versions:
        try:
            meta = read_metadata(models_dir / version)
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
    models_dir = _models_dir(args)
    # Load it first: activating a model the gateway cannot load would take it down.
    load_scorer(models_dir / args.version)
    activate(models_dir, args.version)
    _out(f"active model is now {args.version}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    version_dir = resolve(args.model if args.model else _models_dir(args))
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
        args.cfg = load_model_config(args.config)
        return args.func(args)
    except (
        ConfigError,
        DatasetError,
        HistoryError,
        ModelError,
        RetrainError,
        StreamFeatureError,
        TrainingError,
    ) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"error: {exc.strerror or exc}{where}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
