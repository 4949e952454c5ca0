"""scripts/gpu_check.sh end to end on this machine: the CPU half on real data, then the message and exit 0
that a machine without a GPU gets (the GPU half runs where `torch.cuda.is_available()`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT


def test_the_gpu_check_runs_its_cpu_half_and_says_there_is_no_gpu(tmp_path, shared_data):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: scripts/gpu_check.sh runs its GPU half there (minutes)")
    shared = shared_data
    if not (shared / "diginetica").is_dir():
        pytest.skip(f"no Diginetica in {shared}")
    out = tmp_path / "gpu_check.jsonl"
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--shared", str(shared), "--out", str(out), "--epochs", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no CUDA GPU visible to torch: the CPU half ran" in done.stdout
    assert "| diginetica | cpu | 128 |" in done.stdout
    record = json.loads(out.read_text().splitlines()[-1])
    (row,) = record["rows"]
    assert record["gpu"] is False and record["status"] == 0
    assert row["test_ndcg@10"] > 0.05 and row["targets_per_second"] > 0  # a real model: popularity scores 0.003
    assert set(row["step_split_ms"]) == {"data", "forward", "backward", "optimizer"}
    assert all(value > 0 for value in row["step_split_ms"].values()) and row["peak_memory_mb"] > 0
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == record
