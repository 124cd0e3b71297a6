"""``python -m model`` commands over the models directory: retrain, rollback, list,
activate, info."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from datetime import UTC, datetime

from model.artifact import (
    ModelError,
    activate,
    active_version,
    list_versions,
    read_metadata,
    resolve,
    rollback,
    rollback_target,
)
from model.cli_support import (
    config_of,
    emit,
    format_value,
    models_dir_of,
    pick,
    summary_lines,
    write_atomic_text,
)
from model.dataset import canonical_feature, default_features
from model.detectors import ALL_DETECTORS
from model.retrain import (
    ModelFigures,
    RetrainError,
    RetrainReport,
    RetrainRequest,
    Tolerances,
    run_retrain,
)
from model.scorer import load_scorer

_LOG = logging.getLogger(__name__)


def _retrain_request(args: argparse.Namespace) -> RetrainRequest:
    cfg = config_of(args)
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
    tolerances = Tolerances(
        false_alerts_per_machine_day=settings.false_alerts_tolerance,
        recall=settings.recall_tolerance,
    )
    gateway_config = args.gateway_config
    return RetrainRequest(
        models_dir=models_dir_of(args),
        since_ns=since,
        until_ns=until,
        settings=settings,
        detector=args.detector,
        default_detector=cfg.train.detector,
        detector_settings={d: cfg.train.detector_params(d) for d in ALL_DETECTORS},
        params=dict(args.param),
        features=features,
        default_features=tuple(cfg.train.features) or tuple(default_features()),
        line=args.line,
        device_regex=args.device_regex,
        force=args.force,
        seed=pick(args.seed, cfg.train.seed),
        envelope_weight=cfg.train.envelope_weight,
        labelled_csv=args.labelled_csv,
        label_column=args.label_column,
        fault_column=args.fault_column,
        gateway_config=gateway_config,
        tolerances=tolerances,
        labels=getattr(args, "labels", "use"),
    )


def _iso_ns(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat(timespec="seconds")[:19] + "Z"


def _count(value: object) -> str:
    return "-" if value is None else str(value)


def _recall_cell(stats: dict | None) -> str:
    if not stats or not stats.get("episodes"):
        return "-"
    return f"{stats['detected']}/{stats['episodes']} ({format_value(stats['recall'], 3)})"


def _per_fault(m: ModelFigures) -> dict:
    return (m.labelled or {}).get("per_fault", {})


def _label_lines(h: dict) -> list[str]:
    counts = h.get("labelled_alerts") or {}
    mode = h.get("labels", "use")
    if mode == "ignore":
        return ["           operators' labels ignored (--no-labels)"]
    if not any(counts.values()):
        return ["           no operators' labels in the range"]
    lines = [
        f"           operators' labels: {counts.get('false_alarm', 0)} false alarms, "
        f"{counts.get('real_fault', 0)} real faults"
        + (" (judged by only; trained as without labels)" if mode == "gate" else "")
    ]
    used = h.get("labels_used")
    if used:
        lines.append(
            f"           trained on as normal: {used['false_alarm_kept']} flagged readings in "
            f"false-alarm periods ({used['false_alarm_readings']} readings in them)"
        )
        lines.append(
            f"           left out near confirmed faults: {used['real_fault_readings']} readings "
            f"(+-{h['fault_margin_s']:g} s), {used['real_fault_excluded_only']} of them "
            "only for that"
        )
    return lines


def _false_alarm_cell(f: dict) -> str:
    return (
        f"{f['alerts_on_false_alarms']} (on {f['false_alarm_periods_alerted']} "
        f"of {f['false_alarm_periods']})"
    )


def _label_rows(models: list[ModelFigures]) -> list[tuple[str, list[str]]]:
    if not all(m.labels for m in models):
        return []
    n = models[0].labels
    return [
        (f"backtest, labelled alerts ({n['replayed']} readings replayed)", []),
        (
            "  alerts on labelled false alarms",
            [_false_alarm_cell(m.labels) for m in models],
        ),
        (
            "  confirmed faults caught",
            [f"{m.labels['real_faults_caught']} of {m.labels['real_faults']}" for m in models],
        ),
        ("  unlabelled alerts", [str(m.labels["unlabelled_alerts"]) for m in models]),
    ]


def format_retrain(report: RetrainReport) -> list[str]:
    h = report.history
    where = f"database {h['database']}"
    if h["line"]:
        where += f", line {h['line']}"
    if h["device_regex"]:
        where += f", devices /{h['device_regex']}/"
    if h["exclusion"] == "labelled":
        how = f"all of them in time order, {h['train_labelled_anomalous']} labelled anomalous"
    else:
        how = (
            f"clean ones only; also left out: {h['window_touched']} with an excluded reading "
            f"in their window, {h['warmup']} warm-up"
        )
    cand = report.candidate
    lines = [
        f"history    {_iso_ns(h['since_ns'])} .. {_iso_ns(h['until_ns'])}, {where}",
        f"           {h['readings']} readings from {h['devices']} devices: {h['anomalous']} "
        f"flagged anomalous, {h['near_sensor_fault_only']} more near sensor faults "
        f"(+-{h['fault_margin_s']:g} s)",
        f"           trained on {h['train']} readings before {_iso_ns(h['holdout_from_ns'])} "
        f"({how})",
        *_label_lines(h),
        f"           held out {h['holdout']} readings from then on "
        f"({format_value(cand.backtest['machine_days'], 3)} machine-days); replayed from "
        f"{h['replay_context_readings']} readings per device earlier",
        "",
    ]
    models = [m for m in (report.active, report.candidate) if m is not None]
    names = ["active", "candidate"] if report.active else ["candidate"]
    width = max(26, *(len(m.version) + 2 for m in models))

    def backtest(key: str, digits: int | None = None) -> list[str]:
        if digits is None:
            return [_count(m.backtest.get(key)) for m in models]
        return [format_value(m.backtest.get(key), digits) for m in models]

    rows: list[tuple[str, list[str]]] = [
        ("", names),
        ("version", [m.version for m in models]),
        ("detector", [m.detector for m in models]),
        ("threshold", [f"{m.threshold:.4f}" for m in models]),
        (f"backtest, held-out history ({h['gateway_config']} rules)", []),
        ("  process-anomaly alerts", backtest("alerts")),
        ("  false alerts", backtest("false_alerts")),
        ("  false alerts per machine-day", backtest("false_alerts_per_machine_day", 2)),
        (
            "  sensor-fault periods alerted",
            [
                f"{m.backtest['sensor_fault_episodes_alerted']} of "
                f"{m.backtest['sensor_fault_episodes']}"
                for m in models
            ],
        ),
        ("  unscored (warm-up)", backtest("unscored")),
        ("side figures, clean held-out readings", []),
        ("  alert rate", [format_value(m.holdout.get("false_alarm_rate"), 4) for m in models]),
        ("  flap rate", [format_value(m.holdout.get("flap_rate"), 4) for m in models]),
        ("  score p99", [format_value(m.holdout.get("score_p99"), 4) for m in models]),
    ]
    rows += _label_rows(models)
    if cand.labelled is not None:
        rows.append((f"backtest, labelled CSV ({cand.labelled['rows']} readings)", []))
        kinds = sorted({k for m in models for k in _per_fault(m)})
        for kind in kinds:
            rows.append(
                (
                    f"  episode recall: {kind}",
                    [
                        _recall_cell((m.labelled or {}).get("per_fault", {}).get(kind))
                        for m in models
                    ],
                )
            )
        rows.append(
            (
                "  false alerts per machine-day",
                [format_value((m.labelled or {}).get("false_alerts_per_machine_day"), 2)
                 for m in models],
            )
        )  # fmt: skip
        rows.append(
            (
                "  pointwise precision/recall/F1",
                [
                    "/".join(
                        format_value(((m.labelled or {}).get("pointwise") or {}).get(k), 3)
                        for k in ("precision", "recall", "f1")
                    )
                    for m in models
                ],
            )
        )
    label_width = max(32, *(len(label) + 2 for label, cells in rows if cells))
    for label, cells in rows:
        lines.append((f"{label:<{label_width}}" + "".join(f"{c:<{width}}" for c in cells)).rstrip())
    lines.append("")
    lines.append('"not worse" checks:')
    for check in report.checks:
        mark = "ok  " if check["ok"] else "FAIL"
        if "periods" in check:  # alerts on labelled false alarms
            c_hit, a_hit = check["alerted_periods"]
            lines.append(
                f"  [{mark}] {check['check']}: candidate {check['candidate']} (on {c_hit} of "
                f"{check['periods']}), active {check['active']} (on {a_hit}) ({check['rule']})"
            )
        elif "detected" in check:  # episode recall: the counts say more than the ratio
            (c_hit, a_hit), n = check["detected"], check["episodes"]
            lines.append(
                f"  [{mark}] {check['check']}: candidate {c_hit}/{n}, active {a_hit}/{n} "
                f"({check['rule']})"
            )
        elif check["rule"]:
            lines.append(
                f"  [{mark}] {check['check']}: candidate {format_value(check['candidate'], 3)}, "
                f"active {format_value(check['active'], 3)} ({check['rule']})"
            )
        else:
            lines.append(f"  [{mark}] {check['check']}")
    candidate = cand.version
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
        emit(line)
    if args.out:
        write_atomic_text(args.out, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    models_dir = models_dir_of(args)
    target = rollback_target(models_dir)
    # Load it first: rolling back to a model the gateway cannot load would take it down.
    load_scorer(models_dir / target)
    was, now = rollback(models_dir)
    emit(f"rolled back: active model is now {now} (was {was})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    models_dir = models_dir_of(args)
    versions = list_versions(models_dir)
    if not versions:
        emit(f"no model versions in {models_dir}")
        return 0
    active = active_version(models_dir)
    emit(f"  {'version':<28} {'created':<21} {'detector':<17} {'threshold':>9} {'test F1':>8}")
    for version in versions:
        try:
            meta = read_metadata(models_dir / version)
        except ModelError as exc:
            emit(f"  {version:<28} unreadable: {exc}")
            continue
        test = (meta.get("metrics") or {}).get("test") or {}
        mark = "*" if version == active else " "
        emit(
            f"{mark} {version:<28} {meta.get('created_at', '?'):<21} "
            f"{meta.get('detector', '?'):<17} {meta.get('threshold', float('nan')):>9.4f} "
            f"{format_value(test.get('f1')):>8}"
        )
    if active is None:
        emit("no active model ('current' is not set)")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    models_dir = models_dir_of(args)
    # Load it first: activating a model the gateway cannot load would take it down.
    load_scorer(models_dir / args.version)
    activate(models_dir, args.version)
    emit(f"active model is now {args.version}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    version_dir = resolve(args.model if args.model else models_dir_of(args))
    meta = read_metadata(version_dir)
    if args.json:
        emit(json.dumps(meta, indent=2))
        return 0
    models_dir = version_dir.parent
    for line in summary_lines(meta, active_version(models_dir)):
        emit(line)
    emit(f"path       {version_dir}")
    return 0
