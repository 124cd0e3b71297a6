"""Deterministic multi-device simulation: labelled readings in time order.

Devices are sampled round-robin once per interval; device ``i`` of ``n`` is offset
by ``i/n`` of an interval, so the stream is strictly time-ordered and no two
readings of a device share a timestamp.  ``seq`` counts a device's samples,
including the ones lost in a dropout, so a dropout shows as a gap in seq and ts.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from sensors.faults import FAULT_TYPES, NO_FAULT, FaultInjector
from sensors.machine_model import MachineModel

# ts is carried with millisecond resolution (CSV and payload agree exactly).
_TS_DECIMALS = 3
MIN_INTERVAL_S = 0.01
DEFAULT_FAULT_RATE_PER_HOUR = 2.0

# Seed-sequence spawn keys: separate streams for machine behaviour and faults.
# (Non-zero: numpy treats trailing zero entropy words as absent.)
_MODEL_STREAM = 1
_FAULT_STREAM = 2


@dataclass(frozen=True, slots=True)
class SimReading:
    line: str
    device: str
    ts: float  # epoch seconds, ms resolution
    seq: int
    values: dict[str, float]
    fault: str
    is_anomaly: int


@dataclass(frozen=True, slots=True)
class DeviceId:
    line: str
    device: str
    index: int


def device_names(
    lines: int, devices_per_line: int, device_prefix: str = "press", line_prefix: str = "line"
) -> tuple[DeviceId, ...]:
    """``line1/press-01 .. line2/press-04 ..``: device numbers are unique plant-wide,
    so anything keyed by device name alone cannot mix two machines up."""
    total = lines * devices_per_line
    width = max(2, len(str(total)))
    out = []
    for line in range(lines):
        for slot in range(devices_per_line):
            index = line * devices_per_line + slot
            name = f"{device_prefix}-{index + 1:0{width}d}"
            out.append(DeviceId(f"{line_prefix}{line + 1}", name, index))
    return tuple(out)


@dataclass
class SimRun:
    """One pass over the simulation; iterate it, then read the counters."""

    sim: Simulator
    start_ts: float
    max_steps: int | None
    emitted: int = 0
    dropped: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    dropped_by_device: Counter[str] = field(default_factory=Counter)
    _injectors: list[FaultInjector] = field(default_factory=list, repr=False)

    @property
    def episodes(self) -> Counter[str]:
        """Fault episodes started so far, per type."""
        total: Counter[str] = Counter()
        for injector in self._injectors:
            total.update(injector.episodes)
        return total

    def __iter__(self) -> Iterator[SimReading]:
        sim = self.sim
        devices = sim.devices
        # Every pass starts from the seed again, counters included.
        self.emitted = self.dropped = 0
        self.labels.clear()
        self.dropped_by_device.clear()
        self._injectors = []
        models = []
        for dev in devices:
            model = MachineModel(np.random.default_rng([sim.seed, dev.index, _MODEL_STREAM]))
            models.append(model)
            self._injectors.append(
                FaultInjector(
                    np.random.default_rng([sim.seed, dev.index, _FAULT_STREAM]),
                    sim.fault_types,
                    sim.fault_rate_per_hour,
                    sim.interval_s,
                    model.params.sound_std_db,
                    deck_offset=dev.index,
                )
            )
        n = len(devices)
        interval = sim.interval_s
        step = 0
        while self.max_steps is None or step < self.max_steps:
            base = self.start_ts + step * interval
            for dev, model, injector in zip(devices, models, self._injectors, strict=True):
                values, label = injector.apply(model.step(interval))
                if values is None:
                    self.dropped += 1
                    self.dropped_by_device[dev.device] += 1
                    continue
                self.emitted += 1
                self.labels[label] += 1
                ts = round(base + interval * dev.index / n, _TS_DECIMALS)
                yield SimReading(
                    dev.line, dev.device, ts, step, values, label, int(label != NO_FAULT)
                )
            step += 1


class Simulator:
    """Configuration of a simulated plant; each :meth:`run` replays it from the start."""

    def __init__(
        self,
        lines: int = 1,
        devices_per_line: int = 3,
        interval_s: float = 1.0,
        seed: int = 0,
        fault_rate_per_hour: float = DEFAULT_FAULT_RATE_PER_HOUR,
        fault_types: tuple[str, ...] = FAULT_TYPES,
        start_ts: float | None = None,
        device_prefix: str = "press",
        line_prefix: str = "line",
    ):
        """``fault_rate_per_hour``: Poisson rate of fault starts per device while none
        is active; ``start_ts`` (epoch s): default for :meth:`run`, else now."""
        if lines < 1 or devices_per_line < 1:
            raise ValueError("need at least one line and one device per line")
        if not (math.isfinite(interval_s) and interval_s >= MIN_INTERVAL_S):
            raise ValueError(f"interval must be >= {MIN_INTERVAL_S} s")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        if not (math.isfinite(fault_rate_per_hour) and fault_rate_per_hour >= 0):
            raise ValueError("fault rate must be a number >= 0")
        unknown = set(fault_types) - set(FAULT_TYPES)
        if unknown:
            raise ValueError(f"unknown fault type(s): {sorted(unknown)}")
        self.devices = device_names(lines, devices_per_line, device_prefix, line_prefix)
        self.interval_s = float(interval_s)
        self.seed = seed
        self.fault_rate_per_hour = float(fault_rate_per_hour)
        self.fault_types = tuple(fault_types)
        self.start_ts = start_ts

    def run(self, *, start_ts: float | None = None, max_steps: int | None = None) -> SimRun:
        """A fresh pass; ``start_ts`` defaults to the constructor's, else to now."""
        if start_ts is None:
            start_ts = self.start_ts if self.start_ts is not None else time.time()
        return SimRun(self, start_ts, max_steps)

    def __iter__(self) -> Iterator[SimReading]:
        return iter(self.run())

    def steps_for_duration(self, duration_s: float) -> int:
        return max(1, math.ceil(duration_s / self.interval_s - 1e-9))

    def steps_for_count(self, count: int) -> int:
        """Steps needed to emit ``count`` readings (dropouts emit nothing)."""
        if count <= 0:
            return 0
        if "dropout" not in self.fault_types or self.fault_rate_per_hour == 0:
            return math.ceil(count / len(self.devices))
        # Deterministic, so a dry pass tells exactly how many steps it takes.
        for emitted, reading in enumerate(self.run(start_ts=0.0), start=1):
            if emitted == count:
                return reading.seq + 1
        raise AssertionError("an unbounded run always reaches the count")

    def backdated_start(
        self, *, count: int | None = None, duration_s: float | None = None, now: float | None = None
    ) -> float:
        """Start of a run that ends no later than ``now``: the whole run lies in the past."""
        if count is not None:
            steps = self.steps_for_count(count)
        elif duration_s is not None:
            steps = self.steps_for_duration(duration_s)
        else:
            raise ValueError("a backdated run needs a count or a duration")
        now = time.time() if now is None else now
        # Floor to the ms and keep one ms spare so rounding can never reach ``now``.
        return math.floor((now - steps * self.interval_s) * 1000) / 1000 - 0.001
