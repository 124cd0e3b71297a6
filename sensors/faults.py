"""Labelled fault injection on top of a device's clean readings.

At most one fault is active per device at a time, so every reading has exactly one
label: the fault type, or ``none``.  Faults start as a Poisson process with a mean
rate per device-hour; durations and magnitudes are drawn per episode, types are
dealt from a shuffled deck.  Faults use a
generator of their own, so the same seed gives the same clean signal whether or not
faults are enabled (tests compare the two streams).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from contract import DEFAULT_FIELDS
from sensors.machine_model import HUMIDITY, SOUND, TEMPERATURE

NO_FAULT = "none"
SPIKE = "spike"
DRIFT = "drift"
STUCK = "stuck"
DROPOUT = "dropout"
NOISE_BURST = "noise_burst"
HUMIDITY_EXCURSION = "humidity_excursion"
FAULT_TYPES: tuple[str, ...] = (SPIKE, DRIFT, STUCK, DROPOUT, NOISE_BURST, HUMIDITY_EXCURSION)

# Sensor resolution of the simulated nodes.
DECIMALS = 2
_RANGES = {spec.name: (spec.minimum, spec.maximum) for spec in DEFAULT_FIELDS}


def parse_fault_types(spec: str) -> tuple[str, ...]:
    """``all``, ``none`` or a comma-separated list of :data:`FAULT_TYPES`."""
    words = [w.strip().lower() for w in spec.split(",") if w.strip()]
    if words in ([], ["none"]):
        return ()
    if words == ["all"]:
        return FAULT_TYPES
    unknown = [w for w in words if w not in FAULT_TYPES]
    if unknown:
        raise ValueError(
            f"unknown fault type(s) {unknown}; choose from {', '.join(FAULT_TYPES)}, all, none"
        )
    return tuple(dict.fromkeys(words))


def finish(values: dict[str, float]) -> dict[str, float]:
    """Clip to the contract's physical ranges and round to the sensor resolution."""
    out = {}
    for name, value in values.items():
        low, high = _RANGES[name]
        out[name] = round(float(min(max(value, low), high)), DECIMALS)
    return out


@dataclass(slots=True)
class Episode:
    kind: str
    steps_left: int
    field: str | None = None
    # spike: jump; drift: offset per second; noise_burst: extra std; excursion: level.
    magnitude: float = 0.0
    frozen: float = 0.0
    age_s: float = 0.0


class FaultInjector:
    def __init__(
        self,
        rng: np.random.Generator,
        fault_types: tuple[str, ...],
        rate_per_hour: float,
        interval_s: float,
        sound_std_db: float,
        deck_offset: int = 0,
    ):
        if rate_per_hour < 0:
            raise ValueError("fault rate must be >= 0")
        self.rng = rng
        self.fault_types = fault_types
        self.interval_s = interval_s
        self.sound_std_db = sound_std_db
        # Poisson starts: probability of at least one start within one interval.
        self.start_probability = (
            1.0 - math.exp(-rate_per_hour * interval_s / 3600.0) if fault_types else 0.0
        )
        self.active: Episode | None = None
        self.episodes: Counter[str] = Counter()
        self._last: dict[str, float] | None = None
        # No fault starts on the sample right after one ended: episodes stay separate
        # in the labels (episode-level evaluation, one alert per episode).
        self._just_ended = False
        # Types are dealt from a deck rather than drawn independently, so even a short
        # dataset gets a balanced mix; the first deck is rotated per device so that
        # neighbouring devices start with different fault types.
        self._deck: list[str] = []
        if fault_types:
            rotate = deck_offset % len(fault_types)
            self._deck = list(reversed(fault_types[rotate:] + fault_types[:rotate]))

    def _next_kind(self) -> str:
        if not self._deck:
            order = self.rng.permutation(len(self.fault_types))
            self._deck = [self.fault_types[int(i)] for i in order]
        return self._deck.pop()

    def _steps(self, low_s: float, high_s: float) -> int:
        return max(1, round(self.rng.uniform(low_s, high_s) / self.interval_s))

    def _sign(self) -> float:
        return 1.0 if self.rng.random() < 0.5 else -1.0

    def _start(self, clean: dict[str, float]) -> Episode:
        kind = self._next_kind()
        rng = self.rng
        if kind == SPIKE:
            field = TEMPERATURE if rng.random() < 0.5 else SOUND
            jump = rng.uniform(25.0, 60.0) if field == TEMPERATURE else rng.uniform(20.0, 35.0)
            return Episode(kind, int(rng.integers(1, 4)), field, jump * self._sign())
        if kind == DRIFT:
            per_minute = rng.uniform(1.0, 3.0) * self._sign()
            return Episode(kind, self._steps(180, 600), TEMPERATURE, per_minute / 60.0)
        if kind == STUCK:
            field = (TEMPERATURE, HUMIDITY, SOUND)[int(rng.integers(3))]
            last = self._last if self._last is not None else finish(clean)
            return Episode(kind, self._steps(30, 300), field, frozen=last[field])
        if kind == DROPOUT:
            return Episode(kind, self._steps(10, 180))
        if kind == NOISE_BURST:
            factor = rng.uniform(4.0, 8.0)
            # Added independent noise so the total std is factor x the normal std.
            extra = self.sound_std_db * math.sqrt(factor * factor - 1.0)
            return Episode(kind, self._steps(20, 120), SOUND, extra)
        return Episode(kind, self._steps(60, 600), HUMIDITY, rng.uniform(80.0, 95.0))

    def _distort(self, ep: Episode, values: dict[str, float]) -> None:
        ep.age_s += self.interval_s
        if ep.kind == SPIKE:
            values[ep.field] += ep.magnitude
        elif ep.kind == DRIFT:
            values[ep.field] += ep.magnitude * ep.age_s
        elif ep.kind == STUCK:
            values[ep.field] = ep.frozen
        elif ep.kind == NOISE_BURST:
            values[ep.field] += self.rng.standard_normal() * ep.magnitude
        elif ep.kind == HUMIDITY_EXCURSION:
            values[ep.field] = ep.magnitude + self.rng.standard_normal() * 0.5

    def apply(self, clean: dict[str, float]) -> tuple[dict[str, float] | None, str]:
        """Return (finished values, label); values is None while a dropout lasts."""
        starts = self.rng.random() < self.start_probability
        if self.active is None and starts and not self._just_ended:
            self.active = self._start(clean)
            self.episodes[self.active.kind] += 1
        self._just_ended = False
        ep = self.active
        if ep is None:
            values, label = finish(clean), NO_FAULT
        else:
            ep.steps_left -= 1
            if ep.steps_left <= 0:
                self.active = None
                self._just_ended = True
            if ep.kind == DROPOUT:
                return None, DROPOUT
            raw = dict(clean)
            self._distort(ep, raw)
            values, label = finish(raw), ep.kind
        self._last = values
        return values, label
