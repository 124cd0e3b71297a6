"""Simulated sensor nodes: publish to the broker, or write a labelled CSV dataset.

python -m sensors.simulate --lines 2 --devices 3 --interval 1 --speed 1
python -m sensors.simulate --count 5000 --speed 0 --faults spike,dropout
python -m sensors.simulate --csv data/sim.csv --duration 3600 --seed 7
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from contextlib import ExitStack

from common.cli_types import utc_time_arg
from common.config import ConfigError
from common.logs import setup_logging
from common.progress import Progress
from sensors.cli_support import add_broker_args, broker_settings, stop_on_signals
from sensors.dataset_writer import DatasetWriter
from sensors.faults import parse_fault_types
from sensors.sim_publish import log_publish_summary, run_publish, summary_line
from sensors.simulator import DEFAULT_FAULT_RATE_PER_HOUR, Simulator

log = logging.getLogger("sensors.simulate")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _speed(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError("must be a number >= 0")
    return value


def _epoch(text: str) -> float:
    return utc_time_arg(text).timestamp()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sensors.simulate",
        description="Simulate factory sensor nodes with labelled faults.",
    )
    plant = parser.add_argument_group("plant")
    plant.add_argument("--lines", type=_positive_int, default=2)
    plant.add_argument("--devices", type=_positive_int, default=3, help="devices per line")
    plant.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    plant.add_argument("--seed", type=int, default=42)
    plant.add_argument("--device-prefix", default="press")
    plant.add_argument("--line-prefix", default="line")
    faults = parser.add_argument_group("faults")
    faults.add_argument(
        "--faults",
        default="all",
        help="all, none or a list: spike,drift,stuck,dropout,noise_burst,humidity_excursion",
    )
    faults.add_argument(
        "--fault-rate",
        type=float,
        default=DEFAULT_FAULT_RATE_PER_HOUR,
        help="fault starts per device-hour while no fault is active (default %(default)s)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--count", type=_positive_int, help="stop after this many readings")
    run.add_argument(
        "--duration", type=_positive_float, help="stop after this many simulated seconds"
    )
    run.add_argument(
        "--speed",
        type=_speed,
        help="1 = real time (default), 10 = ten times faster, 0 = as fast as possible",
    )
    run.add_argument("--csv", help="write a labelled CSV here instead of publishing")
    run.add_argument("--start", type=_epoch, help="with --csv: first timestamp (default: ends now)")
    run.add_argument("--labels-out", help="when publishing: CSV with labels of what was sent")
    add_broker_args(parser)
    return parser


def _write_csv(args: argparse.Namespace, sim: Simulator) -> int:
    max_steps = sim.steps_for_duration(args.duration) if args.duration else None
    start = args.start
    if start is None:
        steps = max_steps
        if args.count is not None:
            by_count = sim.steps_for_count(args.count)
            steps = by_count if steps is None else min(steps, by_count)
        start = sim.backdated_start(duration_s=steps * sim.interval_s)
    run = sim.run(start_ts=start, max_steps=max_steps)
    total = args.count or (max_steps or 0) * len(sim.devices)
    with open(args.csv, "w", encoding="utf-8", newline="") as out:
        writer = DatasetWriter(out)
        with Progress(total, "simulate", log) as progress:
            for reading in run:
                writer.write(reading)
                progress.advance()
                if args.count is not None and writer.rows >= args.count:
                    break
    log.info("wrote %d readings to %s", writer.rows, args.csv)
    log.info("readings per label: %s", dict(sorted(run.labels.items())))
    log.info("fault episodes: %s", dict(sorted(run.episodes.items())))
    log.info("dropped (dropout faults, no row): %d", run.dropped)
    labels = ",".join(f"{k}:{n}" for k, n in sorted(run.labels.items()))
    sys.stdout.write(f"rows={writer.rows} dropped={run.dropped} labels={labels}\n")
    return 0


def _publish(args: argparse.Namespace, sim: Simulator) -> int:
    settings = broker_settings(args)
    speed = 1.0 if args.speed is None else args.speed
    with ExitStack() as stack:
        labels_out = None
        if args.labels_out:
            labels_out = stack.enter_context(
                open(args.labels_out, "w", encoding="utf-8", newline="")
            )
        stop = stack.enter_context(stop_on_signals())
        stats = run_publish(
            settings,
            sim,
            count=args.count,
            duration_s=args.duration,
            speed=speed,
            stop=stop,
            labels_out=labels_out,
            client_id=args.client_id,
        )
    log_publish_summary(stats)
    sys.stdout.write(summary_line(stats))
    return 0 if stats.complete else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.csv is not None:
        if args.count is None and args.duration is None:
            parser.error("--csv needs --count or --duration")
        if args.speed is not None or args.labels_out:
            parser.error("--speed and --labels-out apply to publishing, not to --csv")
    else:
        if args.start is not None:
            parser.error("--start applies to --csv only (published timestamps end now)")
        if args.speed == 0 and args.count is None and args.duration is None:
            parser.error("--speed 0 needs --count or --duration")
        if args.speed is not None and args.speed > 0 and args.interval / args.speed < 0.002:
            parser.error("--interval / --speed must be >= 2 ms (timestamps have ms resolution)")
    try:
        sim = Simulator(
            lines=args.lines,
            devices_per_line=args.devices,
            interval_s=args.interval,
            seed=args.seed,
            fault_rate_per_hour=args.fault_rate,
            fault_types=parse_fault_types(args.faults),
            device_prefix=args.device_prefix,
            line_prefix=args.line_prefix,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        if args.csv is not None:
            return _write_csv(args, sim)
        return _publish(args, sim)
    except (ConfigError, OSError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
