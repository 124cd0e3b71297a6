"""The gateway benchmark's results: derived figures and the printed report.

``bench.bench_gateway`` runs the scenarios and hands the result dict here; this module
only reads it (and adds readings per CPU-second), so the report can be re-made from a
saved ``var/bench/gateway-*.json``.  A ``--compare-models`` result (one run per model
under ``runs``) prints each run's table, then the models side by side.
"""

from __future__ import annotations

from bench import decode_bench

# A paced run that stored this share of the offered rate kept up with it.
_KEPT_UP = 0.98


def add_efficiency(scenario: dict) -> None:
    """Readings per CPU-second of the process doing the work: on a shared machine
    this moves much less with other people's load than readings/s does.  Only where
    that process is saturated (max-rate throughput, backlog, a naive gateway that fell
    behind, a paced throughput run that fell behind what was offered); at a rate it
    keeps up with it would mostly measure idle overhead."""
    offered = scenario.get("offered_rate") if "sustained_rate" in scenario else None
    paced_and_kept_up = offered and scenario["sustained_rate"] >= _KEPT_UP * offered
    if paced_and_kept_up or scenario.get("kept_up") or "latency" in scenario:
        return
    rate = scenario.get("sustained_rate") or scenario.get("drain_rate") or scenario.get("rate")
    resources = scenario.get("resources", {})
    worker = "naive" if "kept_up" in scenario else "gateway"
    cpu = resources.get(worker, {}).get("cpu_pct")
    if rate and cpu:
        scenario["readings_per_cpu_s"] = round(rate / (cpu / 100), 1)


def brief(scenario: dict) -> str:
    keys = ("published", "stored", "loss", "sustained_rate", "drain_rate", "rate")
    return " ".join(f"{k}={scenario[k]}" for k in keys if k in scenario)


def format_state(state: dict) -> str:
    """The model's per-device state: bytes per device and the bound at its device cap."""
    if not state.get("max_devices"):
        return f"none kept per device ({state.get('inputs', '?')}: each reading stands alone)"
    text = (
        f"{state['bytes_per_device']:,.0f} B/device traced on {state['devices']} devices "
        f"x {state['readings_per_device']} readings ({state['inputs']}"
    )
    if "bank_array_bytes" in state:
        text += (
            f"; DeviceBank.memory_bytes() {state['bank_array_bytes']:,} B, "
            f"{state['bank_bytes_per_slot']:,.0f} B/slot"
        )
    return text + (
        f"); at most {state['max_devices']:,} devices kept -> <= {state['bound_mb']:,.1f} MB"
    )


def format_report(result: dict) -> str:
    if "runs" in result:
        return format_comparison(result)
    sc = result["scenarios"]
    rows = []

    def res(s: dict, group: str, key: str) -> str:
        value = s.get("resources", {}).get(group, {}).get(key)
        return "-" if value is None else f"{value:.0f}"

    if "throughput" in sc:
        s = sc["throughput"]
        label = f"@{s['offered_rate']:.0f}/s" if s["offered_rate"] else "(max)"
        rows.append(
            (f"throughput {label}", s["sustained_rate"], s["loss"], None, None, s,
             f"published {s['publish_rate']:.0f}/s; all stored "
             f"{s['drain_after_last_send_s']:.1f} s after the last send")
        )  # fmt: skip
    if "latency" in sc:
        s = sc["latency"]
        lat = s["latency"]["all"]
        rows.append(
            (f"latency @{s['offered_rate']:.0f}/s", s["publish_rate"], s["loss"],
             lat.get("p50_ms"), lat.get("p99_ms"), s,
             f"{lat.get('n', 0)} alerts, max {lat.get('max_ms', '-')} ms, "
             f"{s['latency']['missing']} missing, {s['latency']['wrong_state']} wrong")
        )  # fmt: skip
    if "backlog" in sc:
        s = sc["backlog"]
        rows.append(
            (f"backlog drain {s['published']:,}", s["drain_rate"], s["loss"], None, None, s,
             f"startup {s['startup_s']:.1f} s, drained in {s['drain_s']:.1f} s")
        )  # fmt: skip
    if "naive" in sc:
        s = sc["naive"]
        rows.append(
            ("naive per-message", s["rate"], None, None, None, s,
             f"offered {s['offered_rate']:.0f}/s; {'kept up' if s['kept_up'] else 'fell behind'}")
        )  # fmt: skip
    out = [
        f"{'scenario':<24} {'readings/s':>10} {'loss':>5} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'gw CPU%':>7} {'per CPU-s':>9} {'gw RSS MB':>9}  notes",
        "-" * 120,
    ]
    for name, rate, loss, p50, p99, s, note in rows:
        group = "naive" if name.startswith("naive") else "gateway"
        per_cpu = s.get("readings_per_cpu_s")
        out.append(
            f"{name:<24} {rate:>10,.0f} {'-' if loss is None else loss:>5} "
            f"{'-' if p50 is None else f'{p50:.1f}':>7} {'-' if p99 is None else f'{p99:.1f}':>7} "
            f"{res(s, group, 'cpu_pct'):>7} {'-' if per_cpu is None else f'{per_cpu:,.0f}':>9} "
            f"{res(s, group, 'max_rss_mb'):>9}  {note}"
        )
    if "naive_ratio" in result:
        out.append(
            f"\ngateway / naive per-message path: {result['naive_ratio']:.1f}x readings/s, "
            f"{result.get('naive_cpu_ratio', 0):.1f}x readings per CPU-second"
        )
    model = result.get("model", {})
    if model:
        out.append(
            f"\nmodel {model.get('version', '?')} ({model.get('detector', '?')}), "
            f"threshold {model.get('threshold', 0):.3f}"
        )
        if "state" in model:
            out.append(f"model state: {format_state(model['state'])}")
    groups = ("gateway", "naive", "mosquitto", "influxd", "loadgen", "harness", "other", "machine")
    cpus = result.get("machine", {}).get("cpus", "?")
    out += [
        "",
        f"CPU % of one core ({cpus} cores; 'other' = not the benchmark), max RSS MB in brackets",
        f"{'scenario':<12} " + " ".join(f"{g:>13}" for g in groups),
    ]
    for name in ("throughput", "latency", "backlog", "naive"):
        if name not in sc:
            continue
        r = sc[name].get("resources", {})
        cells = []
        for g in groups:
            cpu = r.get(g, {}).get("cpu_pct")
            rss = r.get(g, {}).get("max_rss_mb")
            cell = "-" if cpu is None else f"{cpu:.0f}" + (f" [{rss:.0f}]" if rss else "")
            cells.append(f"{cell:>13}")
        out.append(f"{name:<12} " + " ".join(cells))
    if "decode" in sc:
        out += ["", decode_bench.format_table(sc["decode"])]
    prof = sc.get("throughput", {}).get("profile")
    if prof and "busy_samples" in prof:
        out += [
            "",
            f"py-spy ({prof['mode']}), gateway during throughput, 100 Hz: "
            f"{prof['busy_samples']} busy samples (+{prof['waiting_samples']} waiting); "
            "shares of the busy ones",
        ]
        out.append("  threads: " + ", ".join(f"{n} {p}%" for n, p in prof["threads_pct"]))
        out.append(
            "  self time by package: " + ", ".join(f"{n} {p}%" for n, p in prof["package_self_pct"])
        )
        out.append("  self time:")
        out += [f"    {p:>5.1f}%  {n}" for n, p in prof["self_pct"]]
        out.append("  inclusive:")
        out += [f"    {p:>5.1f}%  {n}" for n, p in prof["inclusive_pct"]]
    out.append(f"\nload average before {result['loadavg_before']}, after {result['loadavg_after']}")
    return "\n".join(out)


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def comparison_rows(run: dict) -> list[tuple[str, str, str]]:
    """(key, figure, value) of one model's run, in the order of the side-by-side
    table; keys are unique (the same figure appears under several scenarios)."""
    sc = run["scenarios"]
    model = run.get("model", {})
    state = model.get("state", {})
    rows: list[tuple[str, str, str]] = [
        ("model", "detector", str(model.get("detector", "?"))),
        ("model", "version", str(model.get("version", "?"))),
    ]
    if "throughput" in sc:
        s = sc["throughput"]
        r = s.get("resources", {})
        gw = r.get("gateway", {})
        rows += [
            ("tp", f"throughput readings/s @{s['offered_rate']:.0f}/s", _num(s["sustained_rate"])),
            ("tp", "  loss", _num(s["loss"])),
            ("tp", "  rate while publishing", _num(s.get("rate_while_publishing"))),
            ("tp", "  gateway CPU %", _num(gw.get("cpu_pct"))),
            ("tp", "  readings per CPU-s", _num(s.get("readings_per_cpu_s"))),
            ("tp", "  gateway max RSS MB", _num(gw.get("max_rss_mb"), ",.1f")),
            ("tp", "  other CPU % (not the bench)", _num(r.get("other", {}).get("cpu_pct"))),
        ]
    if state:
        rows += [
            ("state", "model state B/device (traced)", _num(state.get("bytes_per_device"))),
            ("state", "  devices kept at most", _num(state.get("max_devices"))),
            ("state", "  state bound MB at that cap", _num(state.get("bound_mb"), ",.1f")),
        ]
    if "latency" in sc:
        s = sc["latency"]
        lat = s["latency"]
        rows += [
            ("lat", f"latency p50 / p99 ms @{s['offered_rate']:.0f}/s",
             f"{_num(lat['all'].get('p50_ms'), '.1f')} / {_num(lat['all'].get('p99_ms'), '.1f')}"),
            ("lat", "  alerts / missing / wrong",
             f"{lat['all'].get('n', 0)} / {lat['missing']} / {lat['wrong_state']}"),
            ("lat", "  loss", _num(s["loss"])),
        ]  # fmt: skip
    if "backlog" in sc:
        s = sc["backlog"]
        gw = s.get("resources", {}).get("gateway", {})
        rows += [
            ("bl", f"backlog drain readings/s ({s['published']:,})", _num(s["drain_rate"])),
            ("bl", "  loss", _num(s["loss"])),
            ("bl", "  readings per CPU-s", _num(s.get("readings_per_cpu_s"))),
            ("bl", "  gateway max RSS MB", _num(gw.get("max_rss_mb"), ",.1f")),
        ]
    if "naive_ratio" in run:
        rows.append(("naive", "gateway / naive readings/s", f"{run['naive_ratio']:.1f}x"))
    return rows


def format_comparison(result: dict) -> str:
    """Each model's own report, then one column per model."""
    runs = result["runs"]
    out = []
    for label, run in runs.items():
        out += [f"=== {label} ===", format_report({"machine": result["machine"], **run}), ""]
    tables: dict[str, dict[tuple[str, str], str]] = {}
    names: list[tuple[str, str]] = []
    for label, run in runs.items():
        rows = comparison_rows(run)
        tables[label] = {(sec, name): value for sec, name, value in rows}
        names += [(sec, name) for sec, name, _ in rows if (sec, name) not in names]
    width = max([len(n) for _, n in names] + [24])
    cols = [max(len(label), 12, *(len(v) for v in tables[label].values())) for label in runs]
    out.append(f"models side by side (same invocation, one after the other); {_target(result)}")
    out.append(
        f"{'':<{width}}  " + "  ".join(f"{lb:>{w}}" for lb, w in zip(runs, cols, strict=True))
    )
    out.append("-" * (width + sum(w + 2 for w in cols)))
    for key in names:
        cells = [f"{tables[lb].get(key, '-'):>{w}}" for lb, w in zip(runs, cols, strict=True)]
        out.append(f"{key[1]:<{width}}  " + "  ".join(cells))
    out.append(f"\nload average before {result['loadavg_before']}, after {result['loadavg_after']}")
    return "\n".join(out)


def _target(result: dict) -> str:
    s = result.get("settings", {})
    return (
        f"{s.get('devices', '?')} devices, {s.get('duration_s', '?')} s throughput, "
        f"{result['machine']['cpus']} cores"
    )
