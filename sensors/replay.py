"""Stream any CSV of readings to the broker, optionally at the recorded pace.

python -m sensors.replay --csv plant.csv --line line1 --device press-01 --speed 10
python -m sensors.replay --csv sim.csv --speed 0 --keep-timestamps

Timestamps are re-stamped by default: recordings are usually older than the
gateway's accepted age (30 days) and would be rejected.  Re-stamping keeps the
recorded gaps (divided by the speed); at speed 0 the timeline is shifted so that
the last row lands at "now".  ``--keep-timestamps`` sends the recorded times.

Naive timestamps are wall time in ``--timezone`` (default UTC); epoch numbers are
seconds unless ``--epoch-unit ms|us|ns`` says otherwise (a file in milliseconds is
refused with a message naming the flag, never guessed).  A ``seq`` column is sent as
each reading's ``seq``; without one, readings are numbered from 0 per device.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import tzinfo

from common.config import ConfigError
from common.logs import setup_logging
from common.mqtt import MqttSettings
from common.progress import Progress
from contract import encode_reading
from contract.timestamps import EPOCH_UNITS, CsvTimeRules, TimestampError, timezone_named
from sensors.cli_support import add_broker_args, broker_settings, stop_on_signals
from sensors.csv_source import BadRows, CsvSource, SourceError, parse_field_map
from sensors.pacing import Pacer, ms_after
from sensors.publisher import DeliveryStats, ReadingPublisher
from sensors.sim_publish import wait_for_room

log = logging.getLogger("sensors.replay")

# The gateway's default DecodeLimits: older or further-ahead timestamps are rejected.
GATEWAY_MAX_AGE_S = 30 * 86400.0
GATEWAY_MAX_FUTURE_S = 300.0


@dataclass
class ReplayStats(DeliveryStats):
    rows: int = 0  # good rows read
    bad: Counter[str] = field(default_factory=Counter)  # skipped rows per reason


class _Clock:
    """Maps a row's recorded time to the timestamp sent."""

    def __init__(self, speed: float, keep: bool, shift_s: float, stop: threading.Event):
        self.keep = keep
        self.shift_s = shift_s
        self.pacer = Pacer(speed, stop) if speed > 0 else None
        self._first: float | None = None
        self._offset = 0.0
        self._last: dict[tuple[str, str], float] = {}

    def stamp(self, key: tuple[str, str], source_ts: float, recorded: float | None) -> float | None:
        """Wait until the row is due (paced runs); None if stopped meanwhile."""
        if self._first is None:
            self._first = source_ts
        # Rows out of order are sent at once rather than waiting backwards.
        self._offset = max(self._offset, source_ts - self._first)
        ts = source_ts + self.shift_s
        if self.pacer is not None:
            scheduled = self.pacer.wait(self._offset)
            if scheduled is None:
                return None
            ts = scheduled
        if self.keep and recorded is not None:
            return round(recorded, 6)
        ts = ms_after(ts, self._last.get(key))
        self._last[key] = ts
        return ts


def _check_timeline(
    source: CsvSource, keep: bool, earliest: float | None, latest: float | None, now: float
) -> None:
    missing = source.plan.missing_fields
    if missing:
        log.warning(
            "no column for %s: a gateway requiring all fields (the default) rejects these rows",
            ", ".join(missing),
        )
    if earliest is None or latest is None:
        return
    if keep:
        if now - earliest > GATEWAY_MAX_AGE_S:
            log.warning(
                "rows older than 30 days will be rejected by the gateway; "
                "re-stamp (drop --keep-timestamps) to replay them"
            )
        if latest - now > GATEWAY_MAX_FUTURE_S:
            log.warning("rows in the future will be rejected by the gateway")
    elif latest - earliest > GATEWAY_MAX_AGE_S:
        log.warning("the file spans more than 30 days: the gateway rejects its oldest part")


def run_replay(
    settings: MqttSettings,
    source: CsvSource,
    *,
    speed: float = 1.0,
    keep_timestamps: bool = False,
    interval_s: float = 1.0,
    stop: threading.Event | None = None,
    client_id: str | None = None,
    max_pending: int = 10_000,
    connect_timeout_s: float = 10.0,
    flush_timeout_s: float = 30.0,
) -> ReplayStats:
    """Publish the good rows of ``source`` at QoS 1; ``speed`` 0 = as fast as possible.

    Rows without a timestamp column are ``interval_s`` apart.
    """
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError("speed must be >= 0")
    if not interval_s > 0:
        raise ValueError("interval must be > 0")
    has_ts = source.plan.ts_column is not None
    if keep_timestamps and not has_ts:
        raise SourceError("--keep-timestamps needs a timestamp column")
    stop = stop or threading.Event()
    scan = source.scan()
    now = time.time()
    _check_timeline(source, keep_timestamps, scan.earliest, scan.latest, now)
    latest = scan.latest if has_ts else (scan.rows - 1) * interval_s
    # Speed 0: shift the recorded timeline so that its last row is just before now.
    shift = now - 0.001 - (latest or 0.0) if speed == 0 else 0.0
    clock = _Clock(speed, keep_timestamps, shift, stop)
    stats = ReplayStats()
    bad = BadRows(stats.bad)
    seqs: Counter[tuple[str, str]] = Counter()
    progress = Progress(scan.rows, "replay", log)
    publisher = ReadingPublisher(
        settings, client_id or f"sensors-replay-{os.getpid()}", max_pending
    )
    began = time.monotonic()
    publisher.start(connect_timeout_s)
    try:
        for index, row in enumerate(source.rows(bad)):
            if stop.is_set():
                break
            stats.rows += 1
            key = (row.line, row.device)
            source_ts = row.ts if row.ts is not None else index * interval_s
            ts = clock.stamp(key, source_ts, row.ts)
            if ts is None or not wait_for_room(publisher, max_pending, stop):
                break
            seq = row.seq if row.seq is not None else seqs[key]  # the file's own, if it has one
            payload = encode_reading(row.values, ts=ts, seq=seq)
            if publisher.publish(row.line, row.device, payload):
                seqs[key] += 1
                stats.queued += 1
                stats.per_device[key] += 1
            progress.advance()
    finally:
        stats.settle(publisher, flush_timeout_s, stop, began)
    progress.done()
    return stats


def log_replay_summary(stats: ReplayStats) -> None:
    log.info(
        "replayed %d rows: %d published (acknowledged by the broker) in %.1f s%s",
        stats.rows,
        stats.published,
        stats.elapsed_s,
        " (interrupted)" if stats.interrupted else "",
    )
    if stats.bad:
        log.warning("skipped %d bad rows: %s", sum(stats.bad.values()), dict(stats.bad))
    if not stats.complete:
        log.warning(
            "%d queued, %d refused by the broker, %d not acknowledged",
            stats.queued,
            stats.refused,
            stats.unacknowledged,
        )


def summary_line(stats: ReplayStats) -> str:
    """One machine-readable line for scripts and tests (published count first)."""
    bad = ",".join(f"{k}:{n}" for k, n in sorted(stats.bad.items())) or "-"
    return (
        f"published={stats.published} rows={stats.rows} queued={stats.queued} "
        f"refused={stats.refused} unacknowledged={stats.unacknowledged} bad={bad}\n"
    )


def _delimiter(text: str) -> str:
    text = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(text) != 1:
        raise argparse.ArgumentTypeError("a delimiter is one character (or \\t, tab)")
    return text


def _speed(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError("must be a number >= 0")
    return value


def _timezone(text: str) -> tzinfo:
    try:
        return timezone_named(text)
    except TimestampError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sensors.replay",
        description="Replay a CSV of sensor readings to the broker (QoS 1).",
    )
    parser.add_argument("--csv", required=True, help="the CSV file")
    parser.add_argument("--delimiter", type=_delimiter, default=",", help="default ','")
    parser.add_argument(
        "--map",
        dest="field_map",
        help='columns to fields, e.g. "Temperature_C=temperature_c,Humidity_%%=humidity_pct" '
        "(default: the contract's aliases)",
    )
    parser.add_argument(
        "--timestamp-column",
        help="ISO 8601 / RFC 3339 or an epoch number; default: ts, timestamp or time if present",
    )
    parser.add_argument(
        "--timezone",
        type=_timezone,
        default="UTC",
        help="zone of timestamps without an offset, e.g. Europe/Berlin (default UTC)",
    )
    parser.add_argument(
        "--epoch-unit",
        choices=list(EPOCH_UNITS),
        default="s",
        help="unit of numeric timestamps (default s; ms is never guessed)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="row gap without timestamps")
    parser.add_argument("--line-column", help="default: 'line' if present")
    parser.add_argument("--device-column", help="default: 'device' if present")
    parser.add_argument("--line", help="line name for every row")
    parser.add_argument("--device", help="device name for every row")
    parser.add_argument(
        "--speed", type=_speed, default=1.0, help="1 = recorded pace, 10 = ten times, 0 = no waits"
    )
    stamps = parser.add_mutually_exclusive_group()
    stamps.add_argument(
        "--restamp",
        dest="keep_timestamps",
        action="store_false",
        help="send 'now'-based timestamps keeping the gaps (default)",
    )
    stamps.add_argument("--keep-timestamps", dest="keep_timestamps", action="store_true")
    parser.set_defaults(keep_timestamps=False)
    add_broker_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not args.interval > 0:
        parser.error("--interval must be > 0")
    try:
        source = CsvSource(
            args.csv,
            delimiter=args.delimiter,
            field_map=parse_field_map(args.field_map) if args.field_map else None,
            ts_column=args.timestamp_column,
            line_column=args.line_column,
            device_column=args.device_column,
            line=args.line,
            device=args.device,
            time_rules=CsvTimeRules(timezone=args.timezone, epoch_unit=args.epoch_unit),
        )
        settings = broker_settings(args)
        with stop_on_signals() as stop:
            stats = run_replay(
                settings,
                source,
                speed=args.speed,
                keep_timestamps=args.keep_timestamps,
                interval_s=args.interval,
                stop=stop,
                client_id=args.client_id,
            )
    except (SourceError, ConfigError, OSError) as exc:
        log.error("%s", exc)
        return 2
    log_replay_summary(stats)
    sys.stdout.write(summary_line(stats))
    if not stats.complete or (stats.rows == 0 and stats.bad):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
