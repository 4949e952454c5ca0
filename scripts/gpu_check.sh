#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine whose Python already has torch with CUDA and the
# project's dependencies (no .venv is made: the CPU-only pins of pyproject.toml do not apply there):
# the gpu-marked tests, and the training tests of checkpointing and resume, which then run on the GPU.
#   ./scripts/gpu_check.sh                 # PYTHON=python3 by default
#   ./scripts/gpu_check.sh -x              # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("error: no CUDA GPU visible to torch; run this on a machine with one")
print(f"[gpu] {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/training/test_train.py \
  -k "gpu or killed or resumed or resuming or checkpoint" "$@"
