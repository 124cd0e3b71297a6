"""Per-device alert state: when a run of anomalous readings fires, when it resolves.

The model gives a score; this module makes the decision, with a count-based
hysteresis so a single noisy reading near the threshold does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import AlertConfig

FIRING = "firing"
RESOLVED = "resolved"


@dataclass(slots=True)
class _DeviceState:
    firing: bool = False
    anomalous_run: int = 0
    normal_run: int = 0
    last_notified_ns: int = 0


class AlertTracker:
    def __init__(self, cfg: AlertConfig):
        self._cfg = cfg
        self._devices: dict[tuple[str, str], _DeviceState] = {}

    def update(self, line: str, device: str, is_anomaly: bool, ts_ns: int) -> str | None:
        """Feed one scored reading; returns the alert state to publish, if any."""
        state = self._devices.get((line, device))
        if state is None:
            if not is_anomaly:
                return None  # normal devices need no state
            state = self._devices[(line, device)] = _DeviceState()
        if is_anomaly:
            state.anomalous_run += 1
            state.normal_run = 0
            if not state.firing and state.anomalous_run >= self._cfg.fire_after:
                state.firing = True
                state.last_notified_ns = ts_ns
                return FIRING
            renotify_ns = self._cfg.renotify_s * 1e9
            if state.firing and renotify_ns and ts_ns - state.last_notified_ns >= renotify_ns:
                state.last_notified_ns = ts_ns
                return FIRING
            return None
        state.normal_run += 1
        state.anomalous_run = 0
        if state.firing and state.normal_run >= self._cfg.resolve_after:
            del self._devices[(line, device)]
            return RESOLVED
        if not state.firing:
            del self._devices[(line, device)]
        return None

    def firing(self) -> list[tuple[str, str]]:
        return [key for key, st in self._devices.items() if st.firing]
