#!/usr/bin/env bash
# The main job on the built-in synthetic shop: set up .venv, generate the shop, prepare it, print statistics.
#   ./scripts/demo.sh                        # 200k events (default)
#   NUM_EVENTS=1000000 ./scripts/demo.sh     # a bigger shop
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
NUM_EVENTS="${NUM_EVENTS:-200000}"
SEED="${SEED:-0}"
echo "[demo] 1/1 synthetic shop -> prepared sequences (data.num_events=$NUM_EVENTS data.seed=$SEED)"
python -m data.prepare data=synthetic data.num_events="$NUM_EVENTS" data.seed="$SEED" "$@"
echo "[demo] done. Prepared data: artifacts/data/synthetic/ (stats.json); shop + ground truth: artifacts/shops/"
