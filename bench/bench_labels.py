"""What operators' labels do to retraining: ``python -m bench.bench_labels`` (~1-2 min).

Starts its own influxd, trains the active model (the default detector, simulated
plant, ``--model-seed``), stores 3 h of one line as the gateway stores it
(``--history-seed``; tests/labelled_history.py: press A runs a new recipe the model
flags, press B has one real humidity excursion, press C is normal), labels A's alerts
false alarms and B's fault a real one, then runs ``python -m model retrain`` twice on
copies of the models: learning from the labels (``--labels use``, the default) and
judging by them without learning (``--labels gate``, i.e. the previous retraining),
and ``python -m backtest --influx-url`` on the stored history with all three models.
Prints figures; the tests assert (tests/test_model_retrain_labels.py).

Report figures from seeds you did not develop on: the method was developed on model
seed 101 and history seed 7 (the tests' seeds); the defaults here are 2030 and 2031.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from devstack.influxdb import InfluxDB
from devstack.process import free_port
from tests.labelled_history import (
    GATEWAY_CONFIG,
    build_history,
    label_alerts,
    store_history,
    train_active_model,
)

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "factory"


def iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def _fmt(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def run(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stdout}\n{done.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_labels", description=__doc__)
    parser.add_argument("--model-seed", type=int, default=2030)
    parser.add_argument("--history-seed", type=int, default=2031)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp_name:
        tmp = Path(tmp_name)
        influx = InfluxDB(tmp / "influxdb", free_port()).start()
        try:
            influx.create_database(DATABASE)
            return _measure(tmp, influx.url, args.model_seed, args.history_seed)
        finally:
            influx.stop()


def _measure(tmp: Path, url: str, model_seed: int, history_seed: int) -> int:
    active = tmp / "active"
    train_active_model(active, seed=model_seed)
    original = (active / "current").resolve().name
    scenario = build_history("line1", seed=history_seed)
    store_history(scenario, url, DATABASE, active)
    label_alerts(scenario, url, DATABASE)
    window = ("--since", iso(scenario.since_ns), "--until", iso(scenario.until_ns))
    where = ("--influx-url", url, "--database", DATABASE, "--line", scenario.line, *window)

    reports, versions = {}, {"active": active / original}
    for mode in ("gate", "use"):
        models = tmp / mode
        shutil.copytree(active, models, symlinks=True)
        out = tmp / f"retrain-{mode}.json"
        config = ("--gateway-config", str(GATEWAY_CONFIG))
        run("-m", "model", "retrain", *where, "--models-dir", str(models), *config,
            "--labels", mode, "--out", str(out))  # fmt: skip
        reports[mode] = json.loads(out.read_text())
        versions[mode] = models / reports[mode]["candidate_version"]
    judged = tmp / "backtest.json"
    run("-m", "backtest", *where, "--config", str(GATEWAY_CONFIG), "--json", str(judged),
        *(a for name, path in versions.items() for a in ("--model", f"{name}={path}")))  # fmt: skip
    figures = json.loads(judged.read_text())["models"]

    n_false = sum(1 for lb in scenario.labels if lb["label"] == "false_alarm")
    n_real = len(scenario.labels) - n_false
    print(f"model seed {model_seed}, history seed {history_seed}: 3 h of 3 machines at 1 Hz; "
          f"labels: {n_false} false alarms (press A), {n_real} real fault (press B)\n")  # fmt: skip
    head = ("", "active model", "retrained, labels not learnt (gate)", "retrained with labels")
    rows = [head, ("---",) * 4]

    def row(name: str, get) -> None:
        rows.append((name, *(str(get(m)) for m in ("active", "gate", "use"))))

    row("alerts on labelled false alarms", lambda m: figures[m]["labels"]["alerts_on_false_alarms"])
    row(
        "confirmed faults caught",
        lambda m: f"{figures[m]['labels']['real_faults_caught']} of {n_real}",
    )
    row("alerts (all kinds), whole 3 h", lambda m: figures[m]["alerts"])
    row(
        "false alerts per machine-day",
        lambda m: f"{figures[m]['false_per_machine_day']:.1f}",
    )
    rows.append(("promoted", "", *(str(reports[m]["promoted"]) for m in ("gate", "use"))))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for mode in ("gate", "use"):
        print(f"\nretrain --labels {mode}:")
        for check in reports[mode]["checks"]:
            mark = "ok  " if check["ok"] else "FAIL"
            print(f"  [{mark}] {check['check']}: candidate {_fmt(check['candidate'])}, "
                  f"active {_fmt(check['active'])} ({check['rule']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
