#!/usr/bin/env bash
# The README's detection figures: old default (isolation_forest) vs new default
# (dynamics), both trained as `make demo` trains (6 h, seed 1), replayed by the
# backtest on a held-out simulated day of 8 machines (seed 2028, never tuned on).
#   scripts/heldout-backtest.sh [SEED]       # ~3 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
SEED="${1:-2028}"
OUT="var/eval"
mkdir -p "$OUT"
"$PY" -m sensors.simulate --csv "$OUT/train.csv" --lines 2 --devices 4 --interval 1 \
  --duration 21600 --seed 1 --faults all
"$PY" -m sensors.simulate --csv "$OUT/heldout-$SEED.csv" --lines 2 --devices 4 --interval 1 \
  --duration 86400 --seed "$SEED" --faults all
for detector in isolation_forest dynamics; do
  rm -rf "${OUT:?}/models-$detector"
  "$PY" -m model train --csv "$OUT/train.csv" --models-dir "$OUT/models-$detector" \
    --label-column is_anomaly --fault-column fault --timestamp-column ts --detector "$detector"
done
"$PY" -m backtest --csv "$OUT/heldout-$SEED.csv" \
  --model "old (isolation_forest)=$OUT/models-isolation_forest/current" \
  --model "new (dynamics)=$OUT/models-dynamics/current" \
  --markdown "$OUT/heldout-$SEED.md" --json "$OUT/heldout-$SEED.json"
echo "table: $OUT/heldout-$SEED.md"
