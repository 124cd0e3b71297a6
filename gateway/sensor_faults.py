"""Sensor faults, told apart from machine anomalies.

A machine anomaly is a plausible reading that the model finds unusual; a sensor
fault is evidence that the measurement itself is wrong: a value frozen at one
number, a change faster than the sensor can follow, a value outside the physical
range, a device that stopped reporting (the deadman fires although no message
arrived), or a burst of undecodable messages.  Each fires once when seen and
resolves after ``resolve_after`` good readings (dropout: on the next reading).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from contract import Reading
from gateway.alerts import FIRING, RESOLVED
from gateway.config import SensorFaultConfig

STUCK = "stuck"
JUMP = "impossible_jump"
OUT_OF_RANGE = "out_of_range"
DROPOUT = "dropout"
DECODE_ERRORS = "decode_errors"
KINDS = (STUCK, JUMP, OUT_OF_RANGE, DROPOUT, DECODE_ERRORS)


@dataclass(frozen=True, slots=True)
class FaultTransition:
    line: str
    device: str
    fault: str
    state: str  # FIRING or RESOLVED
    detail: str
    ts_ns: int
    values: dict[str, float]


@dataclass(slots=True)
class _Watch:
    last_values: dict[str, float] = field(default_factory=dict)
    same_run: dict[str, int] = field(default_factory=dict)
    last_ts_ns: int = 0
    last_seen: float = 0.0  # monotonic receive time
    errors: deque = field(default_factory=deque)


class SensorFaults:
    def __init__(self, cfg: SensorFaultConfig):
        self._cfg = cfg
        self._devices: dict[tuple[str, str], _Watch] = {}
        # (line, device, fault) -> consecutive good observations while firing
        self._firing: dict[tuple[str, str, str], int] = {}
        # (line, device) -> number of its faults firing; most devices have none, and
        # for them the "still fine" bookkeeping is skipped (hot path).
        self._active: dict[tuple[str, str], int] = {}

    def restore_firing(self, line: str, device: str, fault: str) -> None:
        """A fault firing before a restart (retained device state): it resolves as any
        other, after ``resolve_after`` good readings."""
        fkey = (line, device, fault)
        if fkey not in self._firing:
            self._firing[fkey] = 0
            self._active[(line, device)] = self._active.get((line, device), 0) + 1

    def firing(self, line: str, device: str) -> list[str]:
        if (line, device) not in self._active:
            return []
        return [f for (ln, dv, f) in self._firing if ln == line and dv == device]

    def _set(
        self,
        key: tuple[str, str],
        fault: str,
        active: bool,
        detail: str,
        ts_ns: int,
        values: dict[str, float],
        out: list[FaultTransition],
        need: int | None = None,
    ) -> None:
        if not active and key not in self._active:
            return
        fkey = (*key, fault)
        if active:
            if fkey not in self._firing:
                out.append(FaultTransition(*key, fault, FIRING, detail, ts_ns, values))
                self._active[key] = self._active.get(key, 0) + 1
            self._firing[fkey] = 0
        elif fkey in self._firing:
            self._firing[fkey] += 1
            if self._firing[fkey] >= (need or self._cfg.resolve_after):
                del self._firing[fkey]
                self._release(key)
                out.append(FaultTransition(*key, fault, RESOLVED, "back to normal", ts_ns, values))

    def _release(self, key: tuple[str, str]) -> None:
        left = self._active.get(key, 1) - 1
        if left:
            self._active[key] = left
        else:
            self._active.pop(key, None)

    def on_reading(self, reading: Reading, now: float) -> list[FaultTransition]:
        key = (reading.line, reading.device)
        watch = self._devices.get(key)
        if watch is None:
            watch = self._devices[key] = _Watch()
        out: list[FaultTransition] = []
        values, ts = reading.values, reading.ts_ns
        # Every device is checked on every reading, so the fault-free case is kept
        # cheap: details are formatted and _set is called only when something fires
        # or this device has a fault to resolve.
        faulty = key in self._active
        if faulty:
            self._set(key, DROPOUT, False, "", ts, values, out, need=1)
        last = watch.last_values
        same_run = watch.same_run
        for f, v in values.items():
            same_run[f] = same_run.get(f, 1) + 1 if last.get(f) == v else 1
        stuck_after = self._cfg.stuck_after
        frozen = [f for f, n in same_run.items() if n >= stuck_after]
        if frozen or faulty:
            detail = f"{', '.join(frozen)} unchanged for {stuck_after} readings" if frozen else ""
            self._set(key, STUCK, bool(frozen), detail, ts, values, out)
        jumps = []
        dt = (ts - watch.last_ts_ns) / 1e9
        if watch.last_ts_ns and dt > 0:
            for f, limit in self._cfg.max_rate.items():
                if f in values and f in last:
                    rate = abs(values[f] - last[f]) / dt
                    if rate > limit:
                        jumps.append(f"{f} changed {rate:.1f}/s (limit {limit:g}/s)")
        if jumps or faulty:
            self._set(key, JUMP, bool(jumps), "; ".join(jumps), ts, values, out)
        if faulty:
            self._set(key, OUT_OF_RANGE, False, "", ts, values, out)
            self._set(key, DECODE_ERRORS, False, "", ts, values, out)
        watch.last_values = dict(values)
        watch.last_ts_ns = max(ts, watch.last_ts_ns)
        watch.last_seen = now
        return out

    def on_rejected(
        self, line: str, device: str, reason: str, detail: str, ts_ns: int, now: float
    ) -> list[FaultTransition]:
        key = (line, device)
        watch = self._devices.get(key)
        if watch is None:
            watch = self._devices[key] = _Watch(last_seen=now)
        watch.last_seen = now
        out: list[FaultTransition] = []
        if reason == "out_of_range":
            self._set(key, OUT_OF_RANGE, True, detail, ts_ns, {}, out)
        errors = watch.errors
        errors.append(now)
        while errors and now - errors[0] > self._cfg.error_window_s:
            errors.popleft()
        if len(errors) >= self._cfg.error_burst:
            self._set(
                key,
                DECODE_ERRORS,
                True,
                f"{len(errors)} rejected messages in {self._cfg.error_window_s:g}s "
                f"(last: {reason})",
                ts_ns,
                {},
                out,
            )
        return out

    def check_deadman(self, now: float, now_ns: int) -> list[FaultTransition]:
        """Called periodically: devices silent for ``deadman_s`` are in dropout."""
        out: list[FaultTransition] = []
        if not self._cfg.deadman_s:
            return out
        for key, watch in list(self._devices.items()):
            silent = now - watch.last_seen
            if silent > self._cfg.forget_after_s:
                del self._devices[key]
                for fkey in [k for k in self._firing if k[:2] == key]:
                    del self._firing[fkey]
                self._active.pop(key, None)
            elif silent > self._cfg.deadman_s:
                self._set(key, DROPOUT, True, f"no reading for {silent:.0f}s", now_ns, {}, out)
        return out
