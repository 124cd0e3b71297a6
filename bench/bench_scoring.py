"""Scoring speed: sklearn's ``score_samples`` vs the compiled forest (model.fastforest).

    python -m bench.bench_scoring                 # ~1 min on 2 cores
    python -m bench.bench_scoring --budget 0.3    # quicker, noisier

Trains the default detector (StandardScaler + IsolationForest, via
``model.training.train``) on simulator data, then times both paths on fresh
simulator readings for each batch size: median microseconds per call, rows/s and
the speed-up.  Before timing, it checks both give the same scores (max |diff|
over ~20 000 rows) and exits non-zero if they differ by more than 1e-12.  The last
table times the whole ``Scorer.score`` (calibration and envelope included) as the
API calls it for one record, with each raw-score path.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import sklearn

from model.artifact import save_artifact
from model.dataset import Dataset
from model.detectors import raw_scores
from model.fastforest import compile_forest
from model.scorer import load_scorer
from model.training import train
from sensors.dataset_writer import VALUE_COLUMNS
from sensors.simulator import Simulator

TOLERANCE = 1e-12
DEFAULT_SIZES = (1, 10, 100, 1000, 5000)


def simulator_arrays(seed: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Readings (n, 3) and 0/1 labels from 2 lines x 3 machines with all fault types."""
    run = Simulator(lines=2, devices_per_line=3, seed=seed).run(start_ts=0.0, max_steps=steps)
    readings = list(run)
    X = np.array([[r.values[c] for c in VALUE_COLUMNS] for r in readings])
    y = np.array([r.is_anomaly for r in readings], dtype=np.int8)
    return X, y


def time_calls(
    fns: list[Callable[[], object]], budget_s: float, min_rounds: int = 7
) -> list[list[float]]:
    """Seconds per call of each function, calls interleaved round-robin so that a
    busy machine slows all of them alike; runs for about ``budget_s``."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    deadline = time.perf_counter() + budget_s
    while len(times[0]) < min_rounds or time.perf_counter() < deadline:
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter_ns()
            fn()
            out.append((time.perf_counter_ns() - start) / 1e9)
    return times


def p(times: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(times), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of timing per cell")
    parser.add_argument("--train-steps", type=int, default=2000, help="simulator steps to train on")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    X_train, y_train = simulator_arrays(args.seed, args.train_steps)
    dataset = Dataset(
        X=X_train, y=y_train, faults=None, ts=None, feature_names=tuple(VALUE_COLUMNS)
    )
    pipeline, metadata = train(dataset, random_state=42)
    forest = compile_forest(pipeline)
    if forest is None:
        print("the default detector is not an IsolationForest pipeline", file=sys.stderr)
        return 1
    X_pool, _ = simulator_arrays(args.seed + 1, 20_000 // 6)  # fresh readings to score

    print(
        f"model: default detector ({metadata['detector']}, {forest.n_trees} trees, "
        f"{forest.n_levels} levels), trained on {len(X_train)} simulator rows; "
        f"numpy {np.__version__}, scikit-learn {sklearn.__version__}"
    )
    slow_all = pipeline.score_samples(X_pool)
    fast_all = forest.score_samples(X_pool)
    gap = float(np.max(np.abs(fast_all - slow_all)))
    same_bits = int(np.sum(fast_all == slow_all))
    print(
        f"check on {len(X_pool)} rows: max |fast - sklearn| = {gap:.3g}, "
        f"bit-identical {same_bits}/{len(X_pool)}"
    )
    if not gap <= TOLERANCE:
        print(f"FAIL: scores differ by more than {TOLERANCE}", file=sys.stderr)
        return 1

    print()
    print(
        f"{'rows/call':>9} | {'sklearn us/call':>15} {'rows/s':>10} | "
        f"{'fast us/call':>12} {'rows/s':>10} | {'speed-up':>8}"
    )
    print("-" * 77)
    for n in args.sizes:
        rows = X_pool[:n] if n <= len(X_pool) else np.resize(X_pool, (n, X_pool.shape[1]))
        slow_times, fast_times = time_calls(
            [partial(pipeline.score_samples, rows), partial(forest.score_samples, rows)],
            args.budget,
        )
        slow, fast = statistics.median(slow_times), statistics.median(fast_times)
        print(
            f"{n:>9} | {slow * 1e6:>15.1f} {n / slow:>10.0f} | "
            f"{fast * 1e6:>12.1f} {n / fast:>10.0f} | {slow / fast:>7.1f}x"
        )

    # The whole Scorer as /predict uses it, one record per call.
    with tempfile.TemporaryDirectory() as tmp:
        save_artifact(Path(tmp), pipeline, metadata)
        scorer = load_scorer(tmp)
        naive = load_scorer(tmp)
        naive._raw_scores = partial(raw_scores, pipeline)  # the pre-compilation path
    one = X_pool[:1]
    print()
    print(f"{'Scorer.score, 1 row':>22} | {'p50 us':>8} {'p99 us':>8}")
    print("-" * 42)
    paths = {"sklearn raw scores": naive, "compiled forest": scorer}
    all_times = time_calls([partial(s.score, one) for s in paths.values()], args.budget)
    for name, times in zip(paths, all_times, strict=True):
        print(f"{name:>22} | {p(times, 0.5) * 1e6:>8.1f} {p(times, 0.99) * 1e6:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
