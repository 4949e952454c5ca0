#!/usr/bin/env bash
# The main job on the built-in synthetic shop: set up .venv, generate and prepare the shop, train the
# default model (dif_sr_filter: attribute-aware attention beside a filter branch, with context, cosine scores), evaluate it by full-catalogue ranking, run the
# popularity baseline through the same pipeline, export the model (ONNX + FAISS), serve it on the
# real Triton server (127.0.0.1) and send example requests: an intent shift, a context effect,
# business rules and similar items; then the personalization platform (event collector, identity
# across devices, recommend by identity, an in-store purchase, abandoned-cart message, campaign batch).
#   ./scripts/demo.sh                                  # 200k events, 8 epochs (a few minutes on 2 cores)
#   NUM_EVENTS=1000000 EPOCHS=10 ./scripts/demo.sh     # a bigger shop
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_services.sh"
NUM_EVENTS="${NUM_EVENTS:-200000}"
SEED="${SEED:-0}"
EPOCHS="${EPOCHS:-8}"
RUN=artifacts/runs/demo
DATA=(data=synthetic data.num_events="$NUM_EVENTS" data.seed="$SEED")

echo "[demo] 1/7 synthetic shop -> prepared sequences (${DATA[*]})"
python -m data.prepare "${DATA[@]}"

echo "[demo] 2/7 train the default model (${EPOCHS} epochs at most, early stopping on val NDCG@10), then its intent heads"
rm -rf "$RUN"
PREPARED=artifacts/data/synthetic
python -m training.train data_dir="$PREPARED" trainer.max_epochs="$EPOCHS" trainer.enable_progress_bar=false \
  seed="$SEED" run_dir="$RUN/train" intent.heads=second_stage

echo "[demo] 3/7 evaluate the best checkpoint again from disk (full-catalogue ranking)"
python -m training.evaluate ckpt_path="$RUN/train/checkpoints/best.ckpt" run_dir="$RUN/evaluate"

echo "[demo] 4/7 the popularity baseline through the same pipeline"
python -m training.train data_dir="$PREPARED" model=popularity run_dir="$RUN/popularity"

echo "[demo] 5/7 export: ONNX query encoder and ranker, item table, FAISS index (recall checked against exact search)"
python -m serving.export ckpt_path="$RUN/train/checkpoints/best.ckpt" export.out_dir="$RUN/bundle"

echo "[demo] 6/7 serve on Triton and send example requests"
python scripts/serving_demo.py --bundle "$RUN/bundle" --data-dir "$PREPARED"

echo "[demo] 7/7 personalization platform: collector + event store -> recommend by identity, store purchase, abandoned cart, campaign, trigger rules"
python scripts/platform_demo.py --bundle "$RUN/bundle"

echo "[demo] done: $RUN/train/metrics.md (every slice and K), $RUN/popularity/metrics.md, bundle $RUN/bundle"
