"""Alert lifecycle per device and kind: normal -> pending -> firing -> resolved.

The model gives a score; this module makes the decision.  An alert enters
``pending`` when the score reaches the enter threshold, fires once it has stayed
there for ``fire_after`` readings and ``min_duration_s`` seconds, and resolves only
after ``resolve_after`` consecutive readings below the (lower) exit threshold, so a
score hovering at the threshold does not flap.  While firing it is repeated every
``renotify_s``.  Rules can differ per line and device (glob patterns).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from gateway.config import AlertConfig, AlertRule

NORMAL = "normal"
PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Rule:
    enter_score: float  # 0: the model's threshold
    exit_ratio: float
    fire_after: int
    min_duration_s: float
    resolve_after: int
    renotify_s: float


def _merge(base: Rule, override: AlertRule) -> Rule:
    """The base rule with every key the override sets."""
    return Rule(
        **{
            name: getattr(base, name)
            if getattr(override, name) is None
            else getattr(override, name)
            for name in Rule.__slots__
        }
    )


class RuleBook:
    """Resolves the rule for a (line, device): first matching override wins."""

    def __init__(self, cfg: AlertConfig):
        self.default = Rule(
            cfg.enter_score,
            cfg.exit_ratio,
            cfg.fire_after,
            cfg.min_duration_s,
            cfg.resolve_after,
            cfg.renotify_s,
        )
        self._overrides = [(r.line, r.device, _merge(self.default, r)) for r in cfg.rules]
        self._cache: dict[tuple[str, str], Rule] = {}

    def for_device(self, line: str, device: str) -> Rule:
        key = (line, device)
        rule = self._cache.get(key)
        if rule is None:
            rule = next(
                (
                    r
                    for lp, dp, r in self._overrides
                    if fnmatch.fnmatchcase(line, lp) and fnmatch.fnmatchcase(device, dp)
                ),
                self.default,
            )
            self._cache[key] = rule
        return rule


@dataclass(slots=True)
class Lifecycle:
    state: str = NORMAL
    above_run: int = 0
    below_run: int = 0
    pending_since_ns: int = 0
    firing_since_ns: int = 0
    last_notified_ns: int = 0

    def update(self, score: float, threshold: float, ts_ns: int, rule: Rule) -> str | None:
        """Feed one observation; returns FIRING (new or repeated), RESOLVED, or None."""
        enter = rule.enter_score or threshold
        exit_ = enter * rule.exit_ratio
        if self.state == FIRING:
            if score < exit_:
                self.below_run += 1
                if self.below_run >= rule.resolve_after:
                    self.state, self.above_run, self.below_run = NORMAL, 0, 0
                    return RESOLVED
                return None
            self.below_run = 0
            if rule.renotify_s and ts_ns - self.last_notified_ns >= rule.renotify_s * 1e9:
                self.last_notified_ns = ts_ns
                return FIRING
            return None
        if score < enter:
            self.state, self.above_run = NORMAL, 0
            return None
        if self.state == NORMAL:
            self.state, self.pending_since_ns = PENDING, ts_ns
        self.above_run += 1
        held_s = (ts_ns - self.pending_since_ns) / 1e9
        if self.above_run >= rule.fire_after and held_s >= rule.min_duration_s:
            self.state, self.below_run = FIRING, 0
            self.firing_since_ns = self.last_notified_ns = ts_ns
            return FIRING
        return None


class AlertTracker:
    """Lifecycles for every (line, device, kind) seen anomalous; normal ones cost nothing."""

    def __init__(self, cfg: AlertConfig):
        self.rules = RuleBook(cfg)
        self._states: dict[tuple[str, str, str], Lifecycle] = {}

    def update(
        self, line: str, device: str, kind: str, score: float, threshold: float, ts_ns: int
    ) -> str | None:
        key = (line, device, kind)
        life = self._states.get(key)
        rule = self.rules.for_device(line, device)
        if life is None:
            if score < (rule.enter_score or threshold):
                return None
            life = self._states[key] = Lifecycle()
        transition = life.update(score, threshold, ts_ns, rule)
        if life.state == NORMAL:
            del self._states[key]
        return transition

    def restore_firing(
        self, line: str, device: str, kind: str, since_ns: int, notified_ns: int
    ) -> None:
        """An alert firing before a restart (retained device state): it goes on firing
        (reminders from ``notified_ns``) until readings say it is over."""
        key = (line, device, kind)
        if key not in self._states:
            self._states[key] = Lifecycle(
                FIRING, firing_since_ns=since_ns, last_notified_ns=notified_ns
            )

    def state(self, line: str, device: str, kind: str) -> str:
        life = self._states.get((line, device, kind))
        return life.state if life else NORMAL

    def is_new_firing(self, line: str, device: str, kind: str, ts_ns: int) -> bool:
        """Whether FIRING returned for the reading at ``ts_ns`` started the alert (else:
        a reminder of one already firing)."""
        life = self._states.get((line, device, kind))
        return life is not None and life.firing_since_ns == ts_ns

    def active(self, line: str, device: str) -> dict[str, Lifecycle]:
        return {
            k: v
            for (ln, dv, k), v in self._states.items()
            if ln == line and dv == device and v.state == FIRING
        }

    def firing(self) -> list[tuple[str, str, str]]:
        return [key for key, life in self._states.items() if life.state == FIRING]
