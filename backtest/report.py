"""Backtest summaries as a text table, JSON, or a Markdown "old vs new" comparison.

Undefined figures (NaN: no episodes, nothing detected, no state information) show as
``-`` in tables and as ``null`` in JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from backtest.episodes import OVERALL, Pointwise
from backtest.summary import FaultStats, Summary

MISSING = "-"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{100 * value:.1f}%"


FIRST_BY_SHOWN = 3


def _first_by(stats: FaultStats) -> str:
    shown = [f"{label} ({n})" for label, n in stats.first_by[:FIRST_BY_SHOWN]]
    rest = len(stats.first_by) - FIRST_BY_SHOWN
    if rest > 0:
        shown.append(f"+{rest} more")
    return ", ".join(shown) or MISSING


def _recall(stats: FaultStats) -> str:
    return f"{_pct(stats.recall)} ({stats.detected}/{stats.episodes})"


_COLUMNS = (
    ("fault", "<"),
    ("episodes", ">"),
    ("detected", ">"),
    ("recall", ">"),
    ("median delay s", ">"),
    ("p90 delay s", ">"),
    ("first detected by", "<"),
)


def _fault_row(stats: FaultStats) -> tuple[str, ...]:
    return (
        stats.kind,
        str(stats.episodes),
        str(stats.detected),
        _pct(stats.recall),
        _num(stats.delay_median_s),
        _num(stats.delay_p90_s),
        _first_by(stats),
    )


def _grid(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(row, _COLUMNS, widths, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def _share(count: int | None, share: float, total: int, baseline: float, what: str) -> str:
    if count is None:
        return MISSING
    text = f"{_pct(share)} ({count} of {total})"
    if math.isfinite(baseline):
        text += f"; {what} {_pct(baseline)} of the time"
    return text


def _pointwise_lines(pw: Pointwise | None) -> list[tuple[str, str]]:
    if pw is None:
        return [("pointwise precision / recall / F1", MISSING)]
    prf = " / ".join(_num(x, 3) for x in (pw.precision, pw.recall, pw.f1))
    return [
        ("pointwise precision / recall / F1", prf),
        ("pointwise false-positive rate", f"{_pct(pw.fpr)} of {pw.tn + pw.fp} normal rows"),
        ("unscored rows (warm-up)", f"{pw.unscored} ({pw.unscored_anomalies} anomalous)"),
    ]


def format_table(summary: Summary, title: str) -> str:
    """Fixed-width text: one row per fault type plus ``all``, then the overall figures."""
    header = tuple(name for name, _ in _COLUMNS)
    rows = [header, *(_fault_row(s) for s in summary.per_fault), _fault_row(summary.overall)]
    grid = _grid(rows)
    rule = "-" * len(grid[0])
    n_false = summary.false_alerts
    overall: list[tuple[str, str]] = [
        (
            "alerts (new firings)",
            f"{summary.alerts} ({summary.true_alerts} true, {n_false} false)",
        ),
        ("false alerts", str(n_false)),
        (
            "false alerts per machine-day",
            f"{_num(summary.false_per_machine_day, 2)} "
            f"({_num(summary.machine_days, 3)} machine-days, {summary.devices} devices)",
        ),
        (
            f"false alerts within {summary.near_s:g} s of a state change",
            _share(
                summary.false_near_change,
                summary.false_near_change_share,
                n_false,
                summary.near_change_time_share,
                "near a change",
            ),
        ),
        (
            "false alerts while running",
            _share(
                summary.false_running,
                summary.false_running_share,
                n_false,
                summary.running_time_share,
                "running",
            ),
        ),
        (
            "false alerts while idle",
            _share(
                summary.false_idle,
                summary.false_idle_share,
                n_false,
                1.0 - summary.running_time_share,
                "idle",
            ),
        ),
        *_pointwise_lines(summary.pointwise),
        ("grace after an episode", f"{summary.grace_s:g} s"),
    ]
    width = max(len(name) for name, _ in overall)
    lines = [title, "=" * len(title), grid[0], rule, *grid[1:-1], rule, grid[-1], ""]
    lines += [f"{name:<{width}}  {value}" for name, value in overall]
    return "\n".join(lines) + "\n"


def json_safe(value: Any) -> Any:
    """NaN and inf -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _stats_json(stats: FaultStats) -> dict[str, Any]:
    out = asdict(stats)
    out["first_by"] = dict(stats.first_by)
    return out


def to_json(summary: Summary) -> dict[str, Any]:
    """JSON-serialisable dict (NaN -> None); ``per_fault`` keyed by fault type."""
    out = asdict(summary)
    out["per_fault"] = {s.kind: _stats_json(s) for s in summary.per_fault}
    out["overall"] = _stats_json(summary.overall)
    return json_safe(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def compare_table(
    summaries: Mapping[str, Summary], extra: Sequence[tuple[str, list[str]]] = ()
) -> str:
    """Markdown table, one column per model (in the order given), one row per figure;
    ``extra`` rows (name, one cell per model) go last."""
    if not summaries:
        raise ValueError("nothing to compare")
    models = list(summaries)
    kinds: list[str] = []
    for summary in summaries.values():
        kinds += [s.kind for s in summary.per_fault if s.kind not in kinds]

    def per_kind(kind: str, summary: Summary) -> FaultStats | None:
        try:
            return summary.fault(kind)
        except KeyError:
            return None

    rows: list[tuple[str, list[str]]] = []
    for kind in [*kinds, OVERALL]:
        name = "all faults" if kind == OVERALL else kind
        cells = [per_kind(kind, summaries[m]) for m in models]
        rows.append((f"recall {name}", [_recall(c) if c else MISSING for c in cells]))
    for kind in [*kinds, OVERALL]:
        name = "all faults" if kind == OVERALL else kind
        cells = [per_kind(kind, summaries[m]) for m in models]
        rows.append(
            (f"median delay {name} (s)", [_num(c.delay_median_s) if c else MISSING for c in cells])
        )
    per_model = [summaries[m] for m in models]
    rows.append(("false alerts", [str(s.false_alerts) for s in per_model]))
    rows.append(
        ("false alerts per machine-day", [_num(s.false_per_machine_day, 2) for s in per_model])
    )
    for label, attr in (("precision", "precision"), ("recall", "recall"), ("F1", "f1")):
        figures = [getattr(s.pointwise, attr) if s.pointwise else None for s in per_model]
        rows.append((f"pointwise {label}", [_num(x, 3) for x in figures]))
    rows += [(name, [_md_cell(c) for c in cells]) for name, cells in extra]

    header = "| figure | " + " | ".join(_md_cell(m) for m in models) + " |"
    align = "|---|" + "---:|" * len(models)
    body = [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join([header, align, *body]) + "\n"
