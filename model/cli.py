"""``python -m model``: train, compare, evaluate, score, retrain, and manage versions.

Results go to stdout, logs to stderr.  Problems the user can fix (bad CSV, missing
column, missing model, unreachable InfluxDB) print one ``error:`` line and exit with
status 2.  Settings come from ``--config`` (TOML, see :mod:`model.config`), then the
``MODEL_*`` environment, then the flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from common.config import ConfigError
from common.logs import setup_logging
from model.artifact import ModelError
from model.cli_data import cmd_compare, cmd_evaluate, cmd_score, cmd_train
from model.cli_support import (
    AUTO_FAULT_COLUMN,
    AUTO_LABEL_COLUMN,
    SCORE_CHUNK_ROWS,
    add_csv_time_options,
    add_train_part_options,
    delimiter_arg,
    detectors_arg,
    device_columns_arg,
    feature_sets_arg,
    features_arg,
    param_arg,
    time_arg,
)
from model.cli_versions import cmd_activate, cmd_info, cmd_list, cmd_retrain, cmd_rollback
from model.config import load_model_config
from model.dataset import DEFAULT_GROUP_COLUMNS, DatasetError
from model.detectors import ALL_DETECTORS
from model.influx_history import HistoryError
from model.retrain import RetrainError
from model.stream_features import StreamFeatureError
from model.training import TrainingError

EXIT_USAGE = 2


def _csv_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", required=True, type=Path, help="input CSV file")
    parser.add_argument(
        "--delimiter", type=delimiter_arg, default=",", help="field separator (',', ';', tab)"
    )
    parser.add_argument(
        "--drop-invalid",
        action="store_true",
        help="skip rows with missing/non-numeric feature values instead of failing",
    )
    add_csv_time_options(parser)


def _training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train and compare; None = from the config (see model.config)."""
    p.add_argument("--timestamp-column", help="default: ts, timestamp, time, ... when needed")
    p.add_argument("--device-columns", type=device_columns_arg,
                   help="columns naming the device for stream features "
                        f"(default: {','.join(DEFAULT_GROUP_COLUMNS)} if present; "
                        "'' or no device column: the file is one device)")  # fmt: skip
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
    p.add_argument("--features", type=features_arg,
                   help="comma-separated feature columns and stream features "
                        "(e.g. temperature_c,sound_db,temperature_c__std_10)")  # fmt: skip
    _training_options(p)
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--detector", choices=sorted(ALL_DETECTORS),
                   help="default: dynamics, the time-aware detector")  # fmt: skip
    p.add_argument("--param", type=param_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="detector parameter, e.g. n_estimators=200 or fit_after=1800 "
                        "(repeatable)")  # fmt: skip
    p.add_argument("--no-activate", action="store_true", help="do not switch 'current'")
    add_train_part_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train detectors on the same split and compare them")
    _csv_options(p)
    p.add_argument("--detectors", type=detectors_arg, default=["isolation_forest", "pca_t2q"],
                   help="comma-separated (default: isolation_forest,pca_t2q)")  # fmt: skip
    p.add_argument("--features", type=features_arg, help="one feature list for every detector")
    p.add_argument("--feature-sets", type=feature_sets_arg,
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
    p.add_argument("--timestamp-column", help="stream-feature models: default ts, timestamp, ...")
    p.add_argument("--device-columns", type=device_columns_arg,
                   help="stream-feature models: default line,device ('' = one device)")  # fmt: skip
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="add score and is_anomaly columns to a CSV")
    _csv_options(p)
    p.add_argument("--out", type=Path, required=True, help="output CSV")
    p.add_argument("--model", type=Path, help="default: <models-dir>/current")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--chunk-rows", type=int, default=SCORE_CHUNK_ROWS)
    p.add_argument("--timestamp-column", help="stream-feature models: default ts, timestamp, ...")
    p.add_argument("--device-columns", type=device_columns_arg,
                   help="stream-feature models: default line,device ('' = one device)")  # fmt: skip
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("retrain", help="retrain from InfluxDB history; promote if not worse")
    p.add_argument("--influx-url", help="InfluxDB 1.x URL (default from config)")
    p.add_argument("--database")
    p.add_argument("--since", type=time_arg, help="RFC 3339 (default: until - 7 days)")
    p.add_argument("--until", type=time_arg, help="RFC 3339 (default: now)")
    p.add_argument("--line", help="only this line")
    p.add_argument("--device-regex", help="only devices matching this regex")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--detector", choices=sorted(ALL_DETECTORS))
    p.add_argument("--features", type=features_arg, help="default: the active model's features")
    p.add_argument("--param", type=param_arg, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int)
    p.add_argument("--labelled-csv", type=Path, help="also compare on this labelled CSV")
    p.add_argument("--label-column", help=f"with --labelled-csv (default {AUTO_LABEL_COLUMN})")
    p.add_argument("--fault-column", help=f"with --labelled-csv (default {AUTO_FAULT_COLUMN})")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", choices=["use", "gate", "ignore"], default="use",
                        help="operators' alert labels (alert_label): learn from them and "
                             "judge by them (use, default), only judge by them (gate), or "
                             "ignore them")  # fmt: skip
    labels.add_argument("--no-labels", dest="labels", action="store_const", const="ignore",
                        help="ignore operators' alert labels (as --labels ignore)")  # fmt: skip
    p.add_argument("--out", type=Path, help="write the comparison as JSON here")
    p.add_argument("--gateway-config", type=Path, default=Path("config/gateway.toml"),
                   help="its [alerts] and [sensor_faults] rules are replayed")  # fmt: skip
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
