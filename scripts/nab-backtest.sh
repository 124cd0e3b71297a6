#!/usr/bin/env bash
# The README's real-data figures: NAB's machine and ambient temperature files, read as
# they are. Each model is trained on NAB's probationary first 15 % of a file and the
# backtest counts alerts from there on against NAB's labelled windows.
#   scripts/nab-backtest.sh [NAB_DIR]        # ~1 min
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
NAB="${1:-../shared/data/nab}"
OUT="var/eval/nab"
mkdir -p "$OUT"
for file in machine_temperature_system_failure ambient_temperature_system_failure; do
  csv="$NAB/$file.csv"
  rows=$(($(wc -l < "$csv") - 1))
  probation=$((rows * 15 / 100))
  # The first timestamp after the probationary rows.
  from=$(sed -n "$((probation + 2))p" "$csv" | cut -d, -f1)
  for detector in isolation_forest dynamics; do
    rm -rf "${OUT:?}/$file-$detector"
    "$PY" -m model train --csv "$csv" --features value --train-rows "$probation" \
      --detector "$detector" --models-dir "$OUT/$file-$detector"
  done
  "$PY" -m backtest --csv "$csv" --windows "$NAB/windows.json" --count-from "$from" \
    --model "old (isolation_forest)=$OUT/$file-isolation_forest/current" \
    --model "new (dynamics)=$OUT/$file-dynamics/current" \
    --markdown "$OUT/$file.md" --json "$OUT/$file.json"
done
