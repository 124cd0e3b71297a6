"""``python -m model`` commands that read a CSV: train, compare, evaluate, score."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.csv_readings import CsvFile
from common.progress import Progress
from contract.timestamps import TimestampError, ns_to_rfc3339, parse_csv_ns
from model.artifact import read_metadata, save_artifact
from model.cli_support import (
    AUTO_FAULT_COLUMN,
    AUTO_LABEL_COLUMN,
    SCORE_CHUNK_ROWS,
    config_of,
    emit,
    estimate_rows,
    format_metrics,
    model_path_of,
    models_dir_of,
    output_dir_for,
    pick,
    summary_lines,
    time_rules_of,
    write_atomic_text,
)
from model.compare import compare, format_table
from model.dataset import (
    CsvChunks,
    Dataset,
    DatasetError,
    auto_group_columns,
    canonical_feature,
    default_features,
    fault_labels,
    load_csv,
)
from model.detectors import TIME_AWARE
from model.inputs import score_in_order
from model.metrics import alarm_summary, evaluate
from model.scorer import Scorer, load_scorer
from model.stream_features import parse_feature
from model.training import train

_LOG = logging.getLogger(__name__)


def _train_options(args: argparse.Namespace) -> dict[str, Any]:
    t = config_of(args).train
    return {
        "random_state": pick(args.seed, t.seed),
        "validation_fraction": pick(args.validation_fraction, t.validation_fraction),
        "test_fraction": pick(args.test_fraction, t.test_fraction),
        "fit_on": pick(args.fit_on, t.fit_on),
        "contamination": pick(args.contamination, t.contamination),
        "max_false_alarm_rate": pick(args.max_false_alarm_rate, t.max_false_alarm_rate),
        "envelope_weight": pick(args.envelope_weight, t.envelope_weight),
    }


def _load_training_csv(
    args: argparse.Namespace,
    features: list[str] | None,
    label: str | None,
    fault: str | None,
    *,
    parse_timestamps: bool = False,
    per_device: bool = False,
) -> Dataset:
    """``per_device``: read the device columns too (default line,device when present)."""
    progress = Progress(None, "loading", _LOG)
    groups = args.device_columns
    if per_device and groups is None:
        groups = auto_group_columns(args.csv, args.delimiter, features or default_features())
    dataset = load_csv(
        args.csv,
        features=features,
        delimiter=args.delimiter,
        timestamp_column=args.timestamp_column,
        label_column=label,
        fault_column=fault,
        drop_invalid=args.drop_invalid,
        group_columns=groups,
        parse_timestamps=parse_timestamps,
        time_rules=time_rules_of(args),
    )
    progress.advance(len(dataset))
    progress.done()
    if dataset.y is None and dataset.faults is not None:
        # A fault-type column is a label column too: "none"/"normal"/"" = normal.
        dataset = dataclasses.replace(
            dataset, y=fault_labels(dataset.faults), label_column=dataset.fault_column
        )
    return dataset


def _split_training_part(
    args: argparse.Namespace, dataset: Dataset
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """--train-rows / --train-until: (training part, evaluation part, description)."""
    if args.train_rows is not None:
        head, rest = dataset.split_at(rows=args.train_rows)
        described: dict[str, Any] = {"first_rows": args.train_rows}
        if args.train_rows > len(dataset):
            _LOG.warning("--train-rows %d: the data has only %d rows", args.train_rows, len(head))
    else:
        try:
            until_ns = parse_csv_ns(args.train_until, time_rules_of(args))
        except TimestampError as exc:
            raise DatasetError(f"--train-until {exc}") from None
        head, rest = dataset.split_at(until_ns=until_ns)
        described = {"until": ns_to_rfc3339(until_ns)}
        if not len(head):
            first = ns_to_rfc3339(int(dataset.ts_ns.min())) if dataset.ts_ns is not None else "?"
            raise DatasetError(
                f"{args.csv.name}: no rows before --train-until {ns_to_rfc3339(until_ns)} "
                f"(the earliest row is {first}; naive times are read in --timezone)"
            )
    if not len(rest):
        _LOG.warning("the training part takes every row: nothing left to evaluate on")
    described.update(rows=len(head), evaluated_rows=len(rest))
    return head, rest, described


def _evaluate_rest(
    pipeline: Any, metadata: dict[str, Any], dataset: Dataset, rest: Dataset
) -> dict[str, Any] | None:
    if not len(rest):
        return None
    scorer = Scorer(pipeline, {**metadata, "version": "candidate"}, ".")
    if scorer.dynamics is not None:
        # Per-device state: the training part is replayed first, as the gateway would
        # have seen it, then the rest is scored.
        order = np.argsort(dataset.ts_ns, kind="stable")
        keys = dataset.groups if dataset.groups is not None else np.full(len(dataset), "")
        scores_all = np.empty(len(dataset))
        scores_all[order] = score_in_order(
            scorer, keys[order], dataset.ts_ns[order], dataset.X[order]
        )
        rest_rows = np.isin(np.arange(len(dataset)), _rest_positions(dataset, rest))
        scores = scores_all[rest_rows]
    else:
        scores = _score_dataset(scorer, rest.X)
    if rest.y is None:
        return alarm_summary(scores, scorer.threshold)
    return evaluate(scores, rest.y, scorer.threshold, faults=rest.faults)


def _rest_positions(dataset: Dataset, rest: Dataset) -> np.ndarray:
    """Positions in ``dataset`` of the rows of ``rest`` (a split_at part, same order)."""
    taken = {(g, int(t)) for g, t in zip(_keys(rest), rest.ts_ns, strict=True)}
    keys = _keys(dataset)
    return np.flatnonzero([(g, int(t)) in taken for g, t in zip(keys, dataset.ts_ns, strict=True)])


def _keys(data: Dataset) -> np.ndarray:
    return data.groups if data.groups is not None else np.full(len(data), "", dtype=object)


def cmd_train(args: argparse.Namespace) -> int:
    t = config_of(args).train
    detector = args.detector or t.detector
    features = args.features or (list(t.features) or None)
    # Before wiring in model/cli.py the parser may lack these: the random split then.
    args.train_rows = getattr(args, "train_rows", None)
    args.train_until = getattr(args, "train_until", None)
    by_part = args.train_rows is not None or args.train_until is not None
    if by_part and args.test_fraction is not None:
        raise DatasetError(
            "--test-fraction does not apply with --train-rows/--train-until: "
            "every row outside the training part is the test part"
        )
    if detector == TIME_AWARE and features and any(parse_feature(f) for f in features):
        raise DatasetError(
            "stream features (e.g. x__std_10) are inputs of isolation_forest and pca_t2q; "
            "the default dynamics detector keeps its own per-device statistics: pass "
            "--detector isolation_forest, or plain columns in --features"
        )
    dataset = _load_training_csv(
        args,
        features,
        args.label_column,
        args.fault_column,
        # The time-aware detector reads each device's readings in time order.
        parse_timestamps=args.train_until is not None or detector == TIME_AWARE,
        per_device=detector == TIME_AWARE,
    )
    options = _train_options(args)
    params = {**t.detector_params(detector), **dict(args.param)}
    if not by_part:
        pipeline, metadata = train(dataset, detector=detector, params=params, **options)
    else:
        head, rest, described = _split_training_part(args, dataset)
        options["test_fraction"] = 0.0  # every other row is the test part
        pipeline, metadata = train(head, detector=detector, params=params, **options)
        metadata["metrics"]["test"] = _evaluate_rest(pipeline, metadata, dataset, rest)
        split = metadata["training"].setdefault("split", {})
        split["test"] = len(rest)
        split["train_part"] = described
    models_dir = models_dir_of(args)
    version_dir = save_artifact(models_dir, pipeline, metadata, activate=not args.no_activate)
    meta = read_metadata(version_dir)
    emit(f"saved {version_dir}{'' if args.no_activate else ' (active)'}")
    for line in summary_lines(meta):
        emit(line)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    t = config_of(args).train
    if args.features and args.feature_sets:
        raise DatasetError("give --features or --feature-sets, not both")
    sets = args.feature_sets or [args.features or list(t.features) or default_features()]
    sets = [[canonical_feature(f) for f in names] for names in sets]
    union = list(dict.fromkeys(f for names in sets for f in names))
    label, fault = args.label_column, args.fault_column
    if label is None and fault is None:
        header = CsvFile(args.csv, delimiter=args.delimiter, error=DatasetError).header
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
    emit(
        f"data {args.csv.name}: {len(dataset)} rows, {int(dataset.y.sum())} anomalies"
        + (f" ({', '.join(skipped)} rows left out)" if skipped else "")
        + f"; same split for every run (seed {_train_options(args)['random_state']})"
    )
    if len(sets) > 1:
        for i, names in enumerate(sets, start=1):
            emit(f"  [{i}] {','.join(names)}")
    else:
        emit(f"features {','.join(sets[0])}")
    emit()
    for line in format_table(runs):
        emit(line)
    if args.out:
        body = {
            "source": args.csv.name,
            "rows": len(dataset),
            "label_column": label,
            "fault_column": fault,
            "rows_warmup": dataset.rows_warmup,
            "runs": [r.to_dict() for r in runs],
        }
        write_atomic_text(args.out, json.dumps(body, indent=2) + "\n")
        emit(f"\nresults written to {args.out}")
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
    scorer = load_scorer(model_path_of(args))
    header = CsvFile(args.csv, delimiter=args.delimiter, error=DatasetError).header
    label, fault = _label_columns(args, scorer.metadata, header)
    if label is None and fault is None:
        raise DatasetError(
            f"{args.csv.name}: evaluate needs labels; pass --label-column or --fault-column"
        )
    warmup = 0
    if scorer.stateful:
        # Each device's whole history in time order, through the gateway's inputs.
        data = load_csv(
            args.csv,
            features=list(scorer.raw_fields),
            delimiter=args.delimiter,
            label_column=label,
            fault_column=fault,
            drop_invalid=args.drop_invalid,
            timestamp_column=args.timestamp_column,
            group_columns=args.device_columns
            if args.device_columns is not None
            else auto_group_columns(args.csv, args.delimiter, list(scorer.raw_fields)),
            parse_timestamps=True,
            time_rules=time_rules_of(args),
        )
        order = np.argsort(data.ts_ns, kind="stable")
        scores = np.empty(len(data))
        scores[order] = score_in_order(scorer, _keys(data)[order], data.ts_ns[order], data.X[order])
        scored = ~np.isnan(scores)
        all_scores = scores[scored]
        labels = data.y if data.y is not None else fault_labels(data.faults)
        all_labels = labels[scored]
        all_faults = None if data.faults is None else data.faults[scored]
        dropped, warmup = data.rows_dropped + data.rows_duplicate, int((~scored).sum())
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
    emit(f"model {scorer.version} ({scorer.detector}), threshold {scorer.threshold:.4f}")
    emit(
        f"data  {args.csv.name}: {support['rows']} rows, {support['anomalies']} anomalies"
        + (f", {dropped} invalid rows dropped" if dropped else "")
        + (f", {warmup} warm-up rows not scored" if warmup else "")
    )
    emit()
    for line in format_metrics(metrics):
        emit(line)
    if args.out:
        write_atomic_text(args.out, json.dumps(metrics, indent=2) + "\n")
        emit(f"\nmetrics written to {args.out}")
    return 0


def _evaluate_streamed(
    args: argparse.Namespace, scorer: Scorer, label: str | None, fault: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    scores, labels, faults = [], [], []
    dropped = 0
    with (
        CsvChunks(
            args.csv,
            features=list(scorer.features),
            delimiter=args.delimiter,
            label_column=label,
            fault_column=fault,
        ) as source,
        Progress(estimate_rows(args.csv), "evaluating", _LOG) as progress,
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
    """Models that read each device's history (stream features, the time-aware
    detector) in ``score``: the gateway's per-device inputs, in file order."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.inputs = scorer.new_inputs()
        self.warmup = 0
        self.out_of_order = 0

    def chunk(self, chunk: Any) -> tuple[np.ndarray, np.ndarray]:
        """(scores with NaN where none, flagged) for the chunk's kept rows."""
        keys = [str(g) for g in chunk.groups] if chunk.groups is not None else [""] * len(chunk.X)
        batch = self.inputs.build(keys, np.asarray(chunk.ts_ns, dtype=np.int64), chunk.X)
        self.warmup += batch.warming
        self.out_of_order += batch.late
        scores = np.full(len(chunk.X), np.nan)
        if batch.index.size:
            scores[batch.index] = self.scorer.score(batch.X)
        return scores, ~np.isnan(scores) & (np.nan_to_num(scores) >= self.scorer.threshold)


def cmd_score(args: argparse.Namespace) -> int:
    if args.chunk_rows < 1:
        raise DatasetError("--chunk-rows must be >= 1")
    output_dir_for(args.out)  # fail before loading the model
    scorer = load_scorer(model_path_of(args))
    flagged = total = dropped = 0
    stream = _StreamScores(scorer) if scorer.stateful else None
    if stream is None:
        options: dict[str, Any] = {"features": list(scorer.features)}
    else:
        options = {
            "features": list(scorer.raw_fields),
            "timestamp_column": args.timestamp_column,
            "group_columns": args.device_columns
            if args.device_columns is not None
            else auto_group_columns(args.csv, args.delimiter, list(scorer.raw_fields)),
            "parse_ts": True,
        }
    with CsvChunks(
        args.csv, delimiter=args.delimiter, time_rules=time_rules_of(args), **options
    ) as source:
        header = list(source.header)
        score_col = _unique_column(header, "score")
        flag_col = _unique_column([*header, score_col], "is_anomaly")
        if (score_col, flag_col) != ("score", "is_anomaly"):
            _LOG.warning("input already has score/is_anomaly; writing %s, %s", score_col, flag_col)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=output_dir_for(args.out))
        try:
            with (
                os.fdopen(fd, "w", encoding="utf-8", newline="") as fh,
                Progress(estimate_rows(args.csv), "scoring", _LOG) as progress,
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
    emit(
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
