#!/usr/bin/env bash
# The GPU check, for a machine whose Python already has torch (with CUDA), Lightning, numpy, pandas,
# pyarrow and onnxruntime; hydra-core, omegaconf and antlr4-python3-runtime may travel as wheels on
# PYTHONPATH. No .venv is made (the CPU-only pins of pyproject.toml do not apply there).
#   1. scripts/gpu_check.py: the default model on a shared set on the CPU and on the GPU (trainer=gpu:
#      bf16, batch 1024, scaled lr), and a 1M-event synthetic shop on the GPU; targets/s, step split,
#      TFLOP/s, peak memory, test NDCG@10 side by side; exit 1 when the GPU's NDCG@10 differs from the
#      CPU's beyond --tolerance. Without a GPU: the CPU half, a message, exit 0.
#   2. With a GPU: the gpu-marked tests and the checkpoint/resume training tests, on the GPU.
#   ./scripts/gpu_check.sh                                   # PYTHON=python3, Diginetica from ../shared/data
#   ./scripts/gpu_check.sh --shared .gpu_data --data diginetica
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" scripts/gpu_check.py "$@"
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/training/test_train.py \
    -k "gpu or killed or resumed or resuming or checkpoint"
fi
