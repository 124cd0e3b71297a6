"""``python -m backtest``: what the gateway would have raised on a labelled file.

    python -m backtest --csv held-out.csv                       # the active model
    python -m backtest --csv held-out.csv --model old=var/models/v1 --model new=var/models/v2
    python -m backtest --csv nab.csv --windows windows.json --count-from '2013-12-14'
    python -m backtest --influx-url http://localhost:8086 --database factory \
        --since 2026-11-01T00:00:00Z --until 2026-11-08T00:00:00Z --model old=... --model new=...

Readings go through the gateway's own detection code (:mod:`backtest.replay`) with
the alert and sensor-fault rules of ``--config`` (default ``config/gateway.toml``).
Every alert is judged as an event (:mod:`backtest.episodes`): per fault type the
episodes caught and how fast, and the false alerts per machine-day.  Several models
are replayed on the same file and put side by side (``--markdown`` writes that
table).  With ``--influx-url`` instead of ``--csv`` the readings the gateway stored
are replayed and judged by operators' alert labels (:mod:`backtest.history`).  A
problem you can fix prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from backtest.episodes import (
    DEFAULT_GRACE_S,
    DEFAULT_NEAR_S,
    device_spans,
    episodes_from_labels,
    match,
    pointwise,
)
from backtest.history import (
    add_history_options,
    compare_rows,
    evaluate_stored,
    header_lines,
    label_lines,
    load_stored,
)
from backtest.load import read_recording, read_windows
from backtest.machine_state import machine_states
from backtest.replay import Recording, replay
from backtest.report import compare_table, format_table, to_json
from backtest.summary import summarize
from common.config import ConfigError
from common.logs import setup_logging
from contract.timestamps import TimestampError, parse_csv_ns
from gateway.config import load_gateway_config
from model.artifact import ModelError
from model.cli_support import add_csv_time_options, delimiter_arg, device_columns_arg, time_rules_of
from model.dataset import DatasetError
from model.influx_history import HistoryError, HistoryFilter, InfluxV1
from model.scorer import Scorer, load_scorer

_LOG = logging.getLogger("backtest")
# Machines whose sound never moves this much between its low and high levels are
# taken to run all the time (no on/off state to report false alerts against).
STATE_MIN_GAP = 5.0


def _model_arg(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    return (name, Path(path)) if sep else ("", Path(value))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backtest", description=__doc__.split("\n")[0])
    p.add_argument("--csv", type=Path, help="readings with labels, time order")
    p.add_argument("--model", type=_model_arg, action="append", metavar="[NAME=]PATH",
                   help="model version dir or models dir (repeatable; default "
                        "var/models/current)")  # fmt: skip
    p.add_argument("--config", type=Path, default=Path("config/gateway.toml"),
                   help="gateway config: its [alerts] and [sensor_faults] rules")  # fmt: skip
    p.add_argument("--delimiter", type=delimiter_arg, default=",")
    p.add_argument("--timestamp-column")
    p.add_argument("--label-column", help="0/1 per row (default: is_anomaly, if present)")
    p.add_argument("--fault-column", help="fault type per row (default: fault, if present)")
    p.add_argument("--device-columns", type=device_columns_arg,
                   help="default line,device if present ('' = the file is one device)")  # fmt: skip
    add_csv_time_options(p)
    p.add_argument("--windows", type=Path,
                   help="labelled [start, end] windows as JSON (a list, or NAB's dict keyed "
                        "by file name) instead of per-row labels")  # fmt: skip
    p.add_argument("--count-from", metavar="TIME",
                   help="replay everything, count episodes and alerts from TIME on "
                        "(e.g. after the part a model was trained on)")  # fmt: skip
    p.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S,
                   help="an alert this soon after an episode still catches it")  # fmt: skip
    p.add_argument("--near-s", type=float, default=DEFAULT_NEAR_S,
                   help="'near a machine start/stop' means within this many seconds")  # fmt: skip
    p.add_argument("--state-field", default="sound_db",
                   help="field whose two levels tell running from idle (if present)")  # fmt: skip
    p.add_argument("--json", type=Path, help="write every figure as JSON here")
    p.add_argument("--markdown", type=Path, help="write the side-by-side table here")
    add_history_options(p)
    return p


def _load_models(specs: list[tuple[str, Path]] | None) -> dict[str, Scorer]:
    specs = specs or [("", Path("var/models/current"))]
    models: dict[str, Scorer] = {}
    for name, path in specs:
        scorer = load_scorer(path)
        models[name or f"{scorer.detector} {scorer.version}"] = scorer
    return models


def _fields(models: dict[str, Scorer], state_field: str) -> list[str]:
    fields: list[str] = []
    for scorer in models.values():
        fields += [f for f in scorer.raw_fields if f not in fields]
    return fields


def _window(rec: Recording, count_from_ns: int | None) -> np.ndarray:
    if count_from_ns is None:
        return np.ones(len(rec), dtype=bool)
    return rec.ts_ns >= count_from_ns


def evaluate(
    rec: Recording, scorer: Scorer, args: argparse.Namespace, cfg: Any, windows: list | None
) -> tuple[Any, dict[str, Any]]:
    result = replay(rec, scorer, cfg.alerts, cfg.sensor_faults)
    count_from = (
        None if args.count_from is None else parse_csv_ns(args.count_from, time_rules_of(args))
    )
    keep = _window(rec, count_from)
    keys = rec.keys
    if windows is not None:
        episodes = [e for e in windows if count_from is None or e.end_ns >= count_from]
    elif rec.faults is not None or rec.labels is not None:
        labels = (
            rec.faults if rec.faults is not None else np.where(rec.labels > 0, "anomaly", "none")
        )
        episodes = episodes_from_labels(
            keys[keep], rec.ts_ns[keep], labels[keep],
            seq=None if rec.seq is None else rec.seq[keep],
        )  # fmt: skip
    else:
        episodes = []
    alerts = [a for a in result.alerts if count_from is None or a.ts_ns >= count_from]
    matching = match(episodes, alerts, grace_s=args.grace_s)
    states = None
    if args.state_field in rec.fields:
        column = rec.values[keep, rec.fields.index(args.state_field)]
        states = machine_states(keys[keep], rec.ts_ns[keep], column, min_gap=STATE_MIN_GAP)
    point = None
    if rec.labels is not None:
        scored = ~np.isnan(result.scores[keep])
        point = pointwise(result.flags[keep], rec.labels[keep], scored=scored)
    summary = summarize(
        matching,
        spans=device_spans(keys[keep], rec.ts_ns[keep]),
        changes={k: list(t.changes_ns) for k, t in (states or {}).items()} or None,
        states=states,
        near_s=args.near_s,
        pointwise=point,
    )
    extra = {
        "model": scorer.version,
        "detector": scorer.detector,
        "readings": int(keep.sum()),
        "replay_seconds": round(result.seconds, 1),
        "unscored": int(np.isnan(result.scores[keep]).sum()),
    }
    return summary, extra


def _stored_history(args: argparse.Namespace) -> int:
    """--influx-url: the stored history, judged by operators' labels."""
    if args.since is None or args.until is None or args.since >= args.until:
        raise DatasetError("--influx-url needs --since and --until (since before until)")
    cfg = load_gateway_config(args.config)
    models = _load_models(args.model)
    client = InfluxV1(
        args.influx_url,
        args.database,
        username=args.username,
        password=os.environ.get("INFLUX_PASSWORD", ""),
    )
    flt = HistoryFilter(args.since, args.until, args.line, args.device_regex)
    stored = load_stored(client, _fields(models, args.state_field), flt)
    summaries: dict[str, Any] = {}
    report: dict[str, Any] = {
        "influx": {"database": args.database, "since_ns": args.since, "until_ns": args.until,
                   "line": args.line, "device_regex": args.device_regex},
        "labelled_alerts": [a.to_dict() for a in stored.labels],
        "models": {},
    }  # fmt: skip
    for line in header_lines(stored):
        sys.stdout.write(line + "\n")
    for name, scorer in models.items():
        summary, extra = evaluate_stored(
            stored, scorer, cfg, grace_s=args.grace_s, near_s=args.near_s,
            state_field=args.state_field,
        )  # fmt: skip
        summaries[name] = summary
        report["models"][name] = {**extra, **to_json(summary)}
        text = format_table(summary, f"{name} on stored history")
        sys.stdout.write(text + "\n".join(label_lines(extra["labels"])) + "\n\n")
    table = compare_table(summaries, compare_rows(report["models"]))
    if len(summaries) > 1:
        sys.stdout.write(table + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if (args.csv is None) == (args.influx_url is None):
        sys.stderr.write("error: give --csv FILE or --influx-url URL (stored history), not both\n")
        return 2
    if args.influx_url is not None:
        try:
            return _stored_history(args)
        except (ConfigError, ModelError, DatasetError, HistoryError, ValueError, OSError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
    try:
        cfg = load_gateway_config(args.config)
        models = _load_models(args.model)
        rec = read_recording(
            args.csv,
            _fields(models, args.state_field),
            delimiter=args.delimiter,
            timestamp_column=args.timestamp_column,
            label_column=args.label_column,
            fault_column=args.fault_column,
            device_columns=args.device_columns,
            time_rules=time_rules_of(args),
        )
        windows = None
        if args.windows is not None:
            devices = np.unique(rec.keys)
            if devices.size != 1:
                raise DatasetError("--windows needs a file of one device")
            windows = read_windows(args.windows, args.csv, str(devices[0]), time_rules_of(args))
        summaries: dict[str, Any] = {}
        report: dict[str, Any] = {"csv": str(args.csv), "models": {}}
        for name, scorer in models.items():
            summary, extra = evaluate(rec, scorer, args, cfg, windows)
            summaries[name] = summary
            report["models"][name] = {**extra, **to_json(summary)}
            sys.stdout.write(format_table(summary, f"{name} on {args.csv.name}") + "\n\n")
    except (ConfigError, ModelError, DatasetError, TimestampError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    table = compare_table(summaries)
    if len(summaries) > 1:
        sys.stdout.write(table + "\n")
    if args.markdown:
        args.markdown.write_text(table + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
