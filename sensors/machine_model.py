"""Normal behaviour of one machine's sensor node, stepped on a simulated clock.

A machine alternates between running and idle in a production cycle of a few
minutes.  Temperature follows the machine state through a first-order thermal lag,
sound follows it almost at once (motor spin-up), and humidity is a slow ambient
variation pulled slightly down by the machine's heat.  Every device draws its own
parameters and noise from its own generator, so a device behaves the same whatever
other devices or faults are simulated next to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TEMPERATURE = "temperature_c"
HUMIDITY = "humidity_pct"
SOUND = "sound_db"


@dataclass(frozen=True, slots=True)
class MachineParams:
    ambient_c: float
    idle_c: float
    running_c: float
    heat_tau_s: float
    cool_tau_s: float
    cycle_period_s: float
    duty: float
    idle_db: float
    running_db: float
    sound_std_db: float
    temp_noise_c: float
    humidity_mean_pct: float
    humidity_amplitude_pct: float
    humidity_period_s: float
    humidity_phase: float
    # Relative humidity drops as air near the machine warms up.
    humidity_per_heat_c: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> MachineParams:
        def u(low: float, high: float) -> float:
            # Plain floats: numpy scalars would leak into payloads and CSV text.
            return float(rng.uniform(low, high))

        ambient = u(20.0, 26.0)
        return cls(
            ambient_c=ambient,
            idle_c=ambient + u(4.0, 6.0),
            running_c=u(60.0, 75.0),
            heat_tau_s=u(20.0, 35.0),
            # Cooling by convection is slower than heating under load.
            cool_tau_s=u(30.0, 50.0),
            cycle_period_s=u(180.0, 420.0),
            duty=u(0.5, 0.75),
            idle_db=u(50.0, 55.0),
            running_db=u(72.0, 82.0),
            sound_std_db=u(1.0, 2.0),
            temp_noise_c=u(0.1, 0.25),
            humidity_mean_pct=u(43.0, 48.0),
            humidity_amplitude_pct=u(3.0, 5.0),
            humidity_period_s=u(1800.0, 5400.0),
            humidity_phase=u(0.0, 2 * math.pi),
            humidity_per_heat_c=u(0.04, 0.07),
        )


# Spin-up/down of motors and fans: seconds, much faster than the thermal lag.
_SOUND_TAU_S = 2.0
# Ambient humidity wanders (doors, ventilation) on a time scale of minutes.
_HUMIDITY_WANDER_TAU_S = 120.0
_HUMIDITY_WANDER_STD = 0.4
_HUMIDITY_NOISE_STD = 0.1
# Each run of the cycle is a slightly different job: load varies a little.
_RUN_TEMP_JITTER_C = 2.0
_RUN_SOUND_JITTER_DB = 1.5


def _lag(current: float, target: float, dt: float, tau: float) -> float:
    """Exact first-order step towards ``target`` (stable for any dt)."""
    return target + (current - target) * math.exp(-dt / tau)


class MachineModel:
    """One device's clean readings; call :meth:`step` once per sampling interval."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.params = p = MachineParams.draw(rng)
        self.elapsed_s = 0.0
        self.running = bool(rng.random() < p.duty)
        self._new_phase_targets()
        # Start part-way through the current phase so devices are not in lock-step.
        self._phase_left_s = self._phase_length() * rng.uniform(0.0, 1.0)
        self._temperature = self._temp_target if self.running else p.idle_c
        self._sound = self._sound_target if self.running else p.idle_db
        self._humidity_wander = 0.0

    def _phase_length(self) -> float:
        p = self.params
        share = p.duty if self.running else 1.0 - p.duty
        return p.cycle_period_s * share * self.rng.uniform(0.8, 1.2)

    def _new_phase_targets(self) -> None:
        p = self.params
        if self.running:
            self._temp_target = p.running_c + self.rng.uniform(-1, 1) * _RUN_TEMP_JITTER_C
            self._sound_target = p.running_db + self.rng.uniform(-1, 1) * _RUN_SOUND_JITTER_DB
        else:
            self._temp_target = p.idle_c
            self._sound_target = p.idle_db

    def _advance_cycle(self, dt: float) -> None:
        self._phase_left_s -= dt
        while self._phase_left_s <= 0.0:
            self.running = not self.running
            self._new_phase_targets()
            self._phase_left_s += self._phase_length()

    def step(self, dt: float) -> dict[str, float]:
        """Advance by ``dt`` seconds and return the clean reading (not yet rounded)."""
        p = self.params
        self._advance_cycle(dt)
        self.elapsed_s += dt
        heating = self._temp_target > self._temperature
        tau = p.heat_tau_s if heating else p.cool_tau_s
        self._temperature = _lag(self._temperature, self._temp_target, dt, tau)
        self._sound = _lag(self._sound, self._sound_target, dt, _SOUND_TAU_S)

        noise = self.rng.standard_normal(4).tolist()
        # Ornstein-Uhlenbeck wander: stationary std _HUMIDITY_WANDER_STD for any dt.
        keep = math.exp(-dt / _HUMIDITY_WANDER_TAU_S)
        self._humidity_wander = self._humidity_wander * keep + noise[2] * (
            _HUMIDITY_WANDER_STD * math.sqrt(1.0 - keep * keep)
        )
        cycle = math.sin(2 * math.pi * self.elapsed_s / p.humidity_period_s + p.humidity_phase)
        heat = max(0.0, self._temperature - p.idle_c)
        humidity = (
            p.humidity_mean_pct
            + p.humidity_amplitude_pct * cycle
            + self._humidity_wander
            - p.humidity_per_heat_c * heat
            + noise[3] * _HUMIDITY_NOISE_STD
        )
        return {
            TEMPERATURE: self._temperature + noise[0] * p.temp_noise_c,
            HUMIDITY: humidity,
            SOUND: self._sound + noise[1] * p.sound_std_db,
        }
