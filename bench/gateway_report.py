"""The gateway benchmark's results: derived figures and the printed report.

``bench.bench_gateway`` runs the scenarios and hands the result dict here; this module
only reads it (and adds readings per CPU-second), so the report can be re-made from a
saved ``var/bench/gateway-*.json``.
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


def format_report(result: dict) -> str:
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
    groups = ("gateway", "naive", "mosquitto", "influxd", "loadgen", "harness", "other", "machine")
    out += [
        "",
        f"CPU % of one core ({result['machine']['cpus']} cores; 'other' = not the benchmark), "
        "max RSS MB in brackets",
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
