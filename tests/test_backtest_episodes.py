"""Event-level backtest scoring on small hand-made series with known episodes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from backtest.episodes import (
    NS_PER_DAY,
    AlertEvent,
    Episode,
    device_spans,
    episodes_from_labels,
    machine_days,
    match,
    pointwise,
    pointwise_from_scores,
)
from backtest.machine_state import machine_states
from backtest.report import compare_table, format_table, to_json
from backtest.summary import summarize

S = 1_000_000_000
A = "line1/press-01"
B = "line1/press-02"


def _rows(device: str, labels: list[str], t0_s: float = 0.0, seq0: int = 0):
    return [(device, round((t0_s + i) * S), label, seq0 + i) for i, label in enumerate(labels)]


def _columns(rows):
    keys, ts, faults, seq = zip(*rows, strict=True)
    return list(keys), list(ts), list(faults), list(seq)


# --------------------------------------------------------------------------- episodes


def test_runs_per_device_interleaved_and_out_of_order():
    a = _rows(A, ["none", "none", "spike", "spike", "none", "none", "stuck", "stuck", "stuck"])
    b = _rows(B, ["drift", "drift", "none", "none", "none", "noise_burst"], t0_s=0.5)
    rows = a + b
    order = np.random.default_rng(7).permutation(len(rows))
    keys, ts, faults, _ = _columns([rows[i] for i in order])

    episodes = episodes_from_labels(keys, ts, faults)

    assert episodes == [
        Episode(B, "drift", round(0.5 * S), round(1.5 * S), 2),
        Episode(A, "spike", 2 * S, 3 * S, 2),
        Episode(B, "noise_burst", round(5.5 * S), round(5.5 * S), 1),
        Episode(A, "stuck", 6 * S, 8 * S, 3),
    ]


def test_adjacent_runs_of_different_labels_and_case_are_separate_episodes():
    keys, ts, faults, _ = _columns(_rows(A, ["Spike", "spike", "stuck", "none", "NONE"]))
    episodes = episodes_from_labels(keys, ts, faults)
    assert [(e.kind, e.n_readings) for e in episodes] == [("spike", 2), ("stuck", 1)]


def test_dropout_from_seq_gap():
    # seq 3 and 4 lost: the device reports at 0,1,2 then 5,6 (1 s interval).
    rows = [(A, t * S, "none", t) for t in (0, 1, 2, 5, 6)]
    # One lost sample (seq 2) on B, and a node restart (seq back to 0) that is no gap.
    rows += [(B, t * S, "none", s) for t, s in ((0, 0), (1, 1), (3, 3), (4, 0), (5, 1))]
    keys, ts, faults, seq = _columns(rows[::-1])

    episodes = episodes_from_labels(keys, ts, faults, seq=seq)

    assert episodes == [
        Episode(B, "dropout", 2 * S, 2 * S, 1),
        Episode(A, "dropout", 3 * S, 4 * S, 2),
    ]
    # A fixed interval gives the same times here; without seq nothing is found.
    assert episodes_from_labels(keys, ts, faults, seq=seq, interval_s=1.0) == episodes
    assert episodes_from_labels(keys, ts, faults) == []


def test_dropout_times_use_the_gaps_own_spacing_without_an_interval():
    # 0.5 s sampling, seq 2..4 lost: first lost sample at 1.0 s, last at 2.0 s.
    rows = [(A, round(t * S), "none", s) for t, s in ((0.0, 0), (0.5, 1), (2.5, 5))]
    keys, ts, faults, seq = _columns(rows)
    assert episodes_from_labels(keys, ts, faults, seq=seq) == [
        Episode(A, "dropout", 1 * S, 2 * S, 3)
    ]


def test_rows_labelled_dropout_are_runs_too():
    keys, ts, faults, seq = _columns(_rows(A, ["none", "dropout", "dropout", "none"]))
    assert episodes_from_labels(keys, ts, faults, seq=seq) == [
        Episode(A, "dropout", 1 * S, 2 * S, 2)
    ]


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="length"):
        episodes_from_labels([A, A], [0, 1], ["none"])


# --------------------------------------------------------------------------- matching


def _alert(device: str, t_s: float, kind: str = "process_anomaly", detail: str = ""):
    return AlertEvent(device, round(t_s * S), kind, detail)


EPISODES = [
    Episode(A, "stuck", 10 * S, 20 * S, 11),  # alert during it
    Episode(A, "drift", 100 * S, 110 * S, 11),  # alert inside the grace after it
    Episode(A, "spike", 200 * S, 210 * S, 11),  # alert after the grace: false, missed
    Episode(A, "noise_burst", 300 * S, 310 * S, 11),  # two alerts in it
    Episode(B, "stuck", 400 * S, 410 * S, 11),  # alert on the other device only
]
ALERTS = [
    _alert(A, 15, "sensor_fault", "stuck"),
    _alert(A, 135),  # 25 s after the end: within 30 s grace
    _alert(A, 241),  # 31 s after the end: false
    _alert(A, 301),
    _alert(A, 305, "sensor_fault", "impossible_jump"),
    _alert(A, 405),  # during B's episode, but on A
]


def test_match_counts_detections_delays_and_false_alerts():
    m = match(EPISODES, ALERTS, grace_s=30)
    det = {d.episode.kind + d.episode.device: d for d in m.detections}

    stuck_a = det["stuck" + A]
    assert stuck_a.detected
    assert stuck_a.delay_s == 5.0
    assert stuck_a.first_alert == ALERTS[0]

    drift = det["drift" + A]
    assert drift.detected
    assert drift.delay_s == 35.0  # from the start, not the end

    assert not det["spike" + A].detected
    assert math.isnan(det["spike" + A].delay_s)

    burst = det["noise_burst" + A]
    assert burst.detected
    assert burst.n_alerts == 2
    assert burst.delay_s == 1.0

    assert not det["stuck" + B].detected

    assert m.false_alerts == (ALERTS[2], ALERTS[5])
    assert len(m.true_alerts) == 4
    assert m.assigned == (0, 1, -1, 3, 3, -1)


def test_grace_that_reaches_into_the_next_episode_never_double_counts():
    episodes = [Episode(A, "spike", 0, 10 * S, 3), Episode(A, "stuck", 12 * S, 20 * S, 9)]
    alerts = [_alert(A, 13, "sensor_fault", "stuck")]
    m = match(episodes, alerts, grace_s=30)
    # The alert belongs to the fault in progress, not the one that just ended.
    assert [d.detected for d in m.detections] == [False, True]
    assert m.assigned == (1,)
    assert m.false_alerts == ()


def test_alert_in_the_grace_goes_to_the_ended_episode_when_none_is_in_progress():
    episodes = [Episode(A, "spike", 0, 10 * S, 3), Episode(A, "stuck", 20 * S, 30 * S, 9)]
    m = match(episodes, [_alert(A, 15)], grace_s=30)
    assert [d.detected for d in m.detections] == [True, False]


def test_summary_per_fault_and_overall():
    spans = {A: (0, NS_PER_DAY), B: (0, NS_PER_DAY)}
    summary = summarize(match(EPISODES, ALERTS, grace_s=30), spans=spans)

    stuck = summary.fault("stuck")
    assert (stuck.episodes, stuck.detected, stuck.recall) == (2, 1, 0.5)
    assert stuck.delay_median_s == 5.0
    assert stuck.first_by == (("sensor_fault/stuck", 1),)
    dropout = summary.fault("dropout")
    assert dropout.episodes == 0
    assert math.isnan(dropout.recall)

    overall = summary.overall
    assert (overall.episodes, overall.detected, overall.recall) == (5, 3, 0.6)
    # Delays 5, 35, 1 s: median 5, p90 by linear interpolation 29.
    assert overall.delay_median_s == 5.0
    assert overall.delay_p90_s == pytest.approx(29.0)
    assert overall.first_by == (("process_anomaly", 2), ("sensor_fault/stuck", 1))
    assert (summary.alerts, summary.true_alerts, summary.false_alerts) == (6, 4, 2)
    assert summary.false_per_machine_day == 1.0
    assert summary.false_near_change is None
    assert math.isnan(summary.false_near_change_share)


def test_false_alerts_per_machine_day_with_different_spans():
    # A reports for a whole day, B for 12 h: 1.5 machine-days.
    keys = [A, A, A, B, B]
    ts = [0, NS_PER_DAY // 2, NS_PER_DAY, NS_PER_DAY // 4, 3 * NS_PER_DAY // 4]
    spans = device_spans(keys, ts)
    assert spans == {A: (0, NS_PER_DAY), B: (NS_PER_DAY // 4, 3 * NS_PER_DAY // 4)}
    assert machine_days(spans) == 1.5
    alerts = [_alert(A, 10), _alert(B, 20_000), _alert(B, 30_000)]
    summary = summarize(match([], alerts), spans=spans)
    assert summary.devices == 2
    assert summary.false_alerts == 3
    assert summary.false_per_machine_day == 2.0


# --------------------------------------------------------------------------- machine state


def _square_wave(device: str, seed: int, period_s: int = 200, cycles: int = 3):
    """Idle 52 dB / running 78 dB, noise 2 dB, 1 s samples; starts idle."""
    rng = np.random.default_rng(seed)
    t = np.arange(period_s * cycles)
    running = (t % period_s) >= period_s // 2
    values = np.where(running, 78.0, 52.0) + rng.normal(0.0, 2.0, t.size)
    edges = [int(x) * S for x in t[1:][running[1:] != running[:-1]]]
    return [device] * t.size, (t * S).tolist(), values, edges


def test_machine_state_changes_from_a_noisy_square_wave():
    ka, ta, va, edges_a = _square_wave(A, seed=1)
    kb, tb, vb, edges_b = _square_wave(B, seed=2, period_s=120)
    keys, ts = ka + kb, ta + tb
    values = np.concatenate([va, vb])
    values[3] = np.nan  # a missing reading is skipped

    changes = {k: list(t.changes_ns) for k, t in machine_states(keys, ts, values).items()}
    assert changes == {A: edges_a, B: edges_b}
    assert len(edges_a) == 5

    track = machine_states(keys, ts, values)[A]
    assert track.initial_running is False
    assert track.running_at(100 * S) is True  # the change itself has happened
    assert track.running_at(99 * S) is False
    assert track.off_below < 65.0 < track.on_above


def test_flat_column_has_no_state():
    assert machine_states([A] * 5, [i * S for i in range(5)], [70.0] * 5) == {}
    noise = np.random.default_rng(0).normal(78.0, 2.0, 200)
    # A machine that never stops: only noise, which a minimum gap keeps from flapping.
    assert machine_states([A] * 200, [i * S for i in range(200)], noise, min_gap=10.0) == {}


def test_where_false_alerts_fall():
    keys, ts, values, edges = _square_wave(A, seed=3, period_s=400, cycles=2)
    assert edges == [200 * S, 400 * S, 600 * S]
    states = machine_states(keys, ts, values)
    alerts = [
        _alert(A, 230),  # 30 s after turning on: near a change, running
        _alert(A, 260),  # 60 s after: near (inclusive), running
        _alert(A, 300),  # running, 100 s from either change
        _alert(A, 500),  # idle, 100 s from either change
        _alert(B, 100),  # no state for B: unknown, not near
    ]
    summary = summarize(match([], alerts), spans=device_spans(keys, ts), states=states, near_s=60)
    assert summary.false_alerts == 5
    assert summary.false_near_change == 2
    assert summary.false_near_change_share == 0.4
    assert (summary.false_running, summary.false_idle, summary.false_unknown_state) == (3, 1, 1)
    assert summary.false_running_share == 0.6
    assert summary.false_idle_share == 0.2
    # Baselines over A's span 0..799 s: near a change 140-260, 340-460, 540-660 s;
    # running 200-400 and 600-799 s.
    assert summary.near_change_time_share == pytest.approx(360 / 799)
    assert summary.running_time_share == pytest.approx(399 / 799)
    text = format_table(summary, "where")
    assert "40.0% (2 of 5); near a change 45.1% of the time" in text
    assert "60.0% (3 of 5); running 49.9% of the time" in text
    assert "20.0% (1 of 5); idle 50.1% of the time" in text

    # Change times alone give the "near" share but not running/idle.
    only_changes = summarize(match([], alerts), changes={A: edges}, near_s=60)
    assert only_changes.false_near_change == 2
    assert only_changes.false_running is None
    assert math.isnan(only_changes.near_change_time_share)


def test_time_near_changes_merges_overlaps_and_clips_to_the_span():
    spans = {A: (0, 100 * S), B: (0, 100 * S)}
    changes = {A: [50 * S, 10 * S]}  # windows [-20, 40] and [20, 80] -> [0, 80]
    summary = summarize(match([], []), spans=spans, changes=changes, near_s=30)
    assert summary.near_change_time_share == pytest.approx(80 / 200)
    assert math.isnan(summary.false_near_change_share)  # no false alerts


# --------------------------------------------------------------------------- pointwise


def test_pointwise_with_unscored_rows():
    # Two warm-up rows (NaN), one of them anomalous.
    scores = [np.nan, np.nan, 0.9, 0.8, 0.1, 0.7, 0.2, 0.95]
    labels = [1, 0, 1, 1, 1, 0, 0, 0]
    pw = pointwise_from_scores(scores, 0.5, labels)
    assert (pw.rows, pw.anomalies, pw.unscored, pw.unscored_anomalies) == (8, 4, 2, 1)
    assert (pw.tp, pw.fp, pw.fn, pw.tn) == (2, 2, 2, 2)
    assert pw.precision == 0.5
    assert pw.recall == 0.5
    assert pw.f1 == 0.5
    assert pw.fpr == 0.5
    # Same figures from flags plus a scored mask; a flag on an unscored row is ignored.
    flags = [True, False, True, True, False, True, False, True]
    scored = [False, False, True, True, True, True, True, True]
    assert pointwise(flags, labels, scored=scored) == pw


def test_pointwise_undefined_ratios_are_nan():
    pw = pointwise([False, False], [0, 0])
    assert math.isnan(pw.precision)
    assert math.isnan(pw.recall)
    assert pw.fpr == 0.0


# --------------------------------------------------------------------------- report


def _summary(alerts=ALERTS):
    labels = [0, 1, 1, 0]
    return summarize(
        match(EPISODES, alerts, grace_s=30),
        spans={A: (0, NS_PER_DAY), B: (0, NS_PER_DAY)},
        pointwise=pointwise([False, True, False, True], labels),
    )


def test_format_table_shows_the_numbers():
    text = format_table(_summary(), "backtest: model v1")
    lines = text.splitlines()
    assert lines[0] == "backtest: model v1"
    row = {line.split()[0]: line.split() for line in lines[2:] if line and line[0].isalpha()}
    assert row["stuck"][:6] == ["stuck", "2", "1", "50.0%", "5.0", "5.0"]
    assert "sensor_fault/stuck (1)" in text
    assert row["drift"][:6] == ["drift", "1", "1", "100.0%", "35.0", "35.0"]
    assert row["dropout"][:6] == ["dropout", "0", "0", "-", "-", "-"]
    assert row["all"][:6] == ["all", "5", "3", "60.0%", "5.0", "29.0"]
    assert "6 (4 true, 2 false)" in text
    assert "1.00 (2.000 machine-days, 2 devices)" in text
    assert "0.500 / 0.500 / 0.500" in text
    # Columns line up: every fault row starts its numbers at the same offset.
    fault_rows = [line for line in lines[2:12] if line[:1].isalpha()]
    assert len(fault_rows) == 8  # header, six fault types, all
    starts = {line.index(line.split()[1]) + len(line.split()[1]) for line in fault_rows[1:]}
    assert len(starts) == 1


def test_to_json_is_strict_json():
    data = to_json(_summary())
    text = json.dumps(data, allow_nan=False)
    assert data["per_fault"]["dropout"]["recall"] is None
    assert data["per_fault"]["stuck"]["first_by"] == {"sensor_fault/stuck": 1}
    assert data["overall"]["recall"] == 0.6
    assert data["false_per_machine_day"] == 1.0
    assert data["pointwise"]["f1"] == 0.5
    assert json.loads(text) == data


def test_compare_table_is_markdown_side_by_side():
    old = _summary()
    new = _summary(alerts=[*ALERTS, _alert(A, 205, "sensor_fault", "impossible_jump")])
    md = compare_table({"old": old, "new | v2": new})
    lines = md.splitlines()
    assert lines[0] == "| figure | old | new \\| v2 |"
    assert lines[1] == "|---|---:|---:|"
    cells = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert cells["recall spike"] == "| recall spike | 0.0% (0/1) | 100.0% (1/1) |"
    assert cells["recall all faults"] == "| recall all faults | 60.0% (3/5) | 80.0% (4/5) |"
    assert cells["median delay spike (s)"] == "| median delay spike (s) | - | 5.0 |"
    assert cells["false alerts per machine-day"] == "| false alerts per machine-day | 1.00 | 1.00 |"
    assert cells["pointwise F1"] == "| pointwise F1 | 0.500 | 0.500 |"
    assert all(line.count("|") == 4 for line in lines if "\\|" not in line)
