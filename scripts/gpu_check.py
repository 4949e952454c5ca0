"""The GPU check: the default model trained on a shared set on the CPU and on the GPU (bf16, the
large-batch recipe of `trainer=gpu`), and on a 1M-event synthetic shop on the GPU; throughput, step-time
split, achieved TFLOP/s, peak memory and test NDCG@10 side by side; non-zero exit when the GPU's
quality differs from the CPU's beyond noise. Run by scripts/gpu_check.sh.

    python scripts/gpu_check.py                                  # Diginetica from ../shared/data
    python scripts/gpu_check.py --data lastfm --shared /path/to/data --events 1000000

Without a CUDA GPU it runs the CPU half, says so and exits 0. Each training run is
`python -m training.train experiment=<data> ranker.enabled=false seed=<seed>` with `trainer=cpu`
or `trainer=gpu` (its metrics.json gives targets/s, training seconds and test NDCG@10); the step
split, TFLOP/s and peak memory come from `scripts/bench_train.py` on the same data and batch size.
Quality: |NDCG@10 on the GPU - on the CPU| must stay within `--tolerance` (relative; default 0.05,
about three standard deviations of the default model over seeds on Diginetica, docs/results.md).
Results: a table, and JSON lines in benchmarks/results/gpu_check.jsonl (and $OUT when set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPO, append_results, environment

NEEDED = ("torch", "pytorch_lightning", "numpy", "pandas", "pyarrow", "hydra", "omegaconf", "scipy")


def missing_packages() -> list[str]:
    import importlib.util

    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def run(command: list[str], log: Path) -> None:
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"error: {' '.join(command)} failed (exit {done.returncode}) after "
                         f"{time.perf_counter() - started:.0f} s; the end of {log}:\n{tail}")  # fmt: skip


def train(name: str, overrides: list[str], work: Path) -> dict:
    """One training run; its figures from metrics.json."""
    run_dir = work / name
    run(
        [sys.executable, "-m", "training.train", *overrides, "ranker.enabled=false", f"run_dir={run_dir}"],
        work / f"{name}.log",
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = metrics["info"]
    return {
        "test_ndcg@10": metrics["test/ndcg@10"],
        "targets_per_second": info["train_targets_per_second"],
        "train_seconds": info["train_seconds"],
        "epochs": info["epochs"],
        "wall_seconds": info.get("seconds"),
    }


def bench(name: str, data: str, overrides: list[str], device: str, batch_size: int, work: Path) -> dict:
    """The step split, TFLOP/s and peak memory of a few training steps (scripts/bench_train.py)."""
    out = work / f"{name}.jsonl"
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    command = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--data", data, "--overrides", *overrides,
               "--device", device, "--precision", precision, "--batch-size", str(batch_size),
               "--steps", "10", "--repeats", "1", "--warmup", "3", "--out", str(out)]  # fmt: skip
    run(command, work / f"{name}.bench.log")
    row = json.loads(out.read_text().splitlines()[-1])
    return {
        "step_split_ms": row["step_split_ms"],
        "tflops_achieved": row["tflops_achieved"],
        "peak_memory_mb": row["peak_memory_mb"],
        "bench_targets_per_second": row["targets_per_second_median"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="diginetica", help="a shared set with an experiment config (conf/experiment)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the synthetic shop (GPU half)")
    parser.add_argument("--synthetic-epochs", type=int, default=3)
    parser.add_argument(
        "--epochs", type=int, default=None, help="cap the shared set's epochs (default: its experiment's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.jsonl")
    args = parser.parse_args()
    missing = missing_packages()
    if missing:
        raise SystemExit(
            f"error: this Python ({sys.executable}) lacks {', '.join(missing)}; carry them as wheels "
            "(pip download --no-deps ... hydra-core omegaconf antlr4-python3-runtime) and put them on PYTHONPATH."
        )
    import torch

    gpu = torch.cuda.is_available()
    folder = {"yoochoose": "yoochoose-100k", "amazon_video_games": "amazon-video-games"}.get(args.data, args.data)
    source = args.shared / folder
    if not source.is_dir():
        raise SystemExit(
            f"error: no {source}; give --shared <folder holding {folder}/> (the shared data travels with the check)."
        )
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as temporary:
        work = Path(temporary)
        shared = [
            f"experiment={args.data}",
            f"data.path={source}",
            f"seed={args.seed}",
            f"artifacts_dir={work / 'artifacts'}",
            *([f"trainer.max_epochs={args.epochs}"] if args.epochs else []),
        ]
        plan = [("cpu", args.data, [*shared, "trainer=cpu"], "cpu", 128)]
        if gpu:
            plan.append(("gpu", args.data, [*shared, "trainer=gpu"], "cuda", 1024))
            synthetic = ["data=synthetic", f"data.num_events={args.events}", f"trainer.max_epochs={args.synthetic_epochs}",
                         f"seed={args.seed}", f"artifacts_dir={work / 'artifacts'}", "trainer=gpu"]  # fmt: skip
            plan.append(("gpu", "synthetic", synthetic, "cuda", 1024))
        for device_name, data, overrides, device, batch_size in plan:
            name = f"{data}-{device_name}"
            print(f"[gpu-check] {name}: training ({' '.join(overrides[:1] + overrides[-1:])}) ...", flush=True)
            row = {"data": data, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                   "batch_size": batch_size, **train(name, overrides, work)}  # fmt: skip
            bench_overrides = [o for o in overrides if not o.startswith(("trainer", "seed", "data=synthetic"))]
            row.update(bench(name, data, bench_overrides, device, batch_size, work))
            rows.append(row)
            print(
                f"[gpu-check] {name}: {row['targets_per_second']:,.0f} targets/s, test NDCG@10 {row['test_ndcg@10']:.4f}",
                flush=True,
            )
    print()
    print(
        "| data | device | batch | training targets/s | train s (epochs) | step ms: data / forward / backward / optimizer | TFLOP/s | peak memory MB | test NDCG@10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        split = " / ".join(f"{r['step_split_ms'][k]:.1f}" for k in ("data", "forward", "backward", "optimizer"))
        print(f"| {r['data']} | {r['device']} | {r['batch_size']} | {r['targets_per_second']:,.0f} | "
              f"{r['train_seconds']:.0f} ({r['epochs']}) | {split} | {r['tflops_achieved']:.3f} | {r['peak_memory_mb']:,.0f} | "
              f"{r['test_ndcg@10']:.4f} |")  # fmt: skip
    status, message = 0, "no CUDA GPU visible to torch: the CPU half ran; the GPU half needs a machine with one."
    if gpu:
        cpu_row, gpu_row = rows[0], rows[1]
        change = gpu_row["test_ndcg@10"] / cpu_row["test_ndcg@10"] - 1
        speed = gpu_row["targets_per_second"] / cpu_row["targets_per_second"]
        message = (f"{args.data}: GPU {speed:.1f}x the CPU's training targets/s; test NDCG@10 {change:+.1%} against the "
                   f"CPU (tolerance {args.tolerance:.0%})")  # fmt: skip
        if abs(change) > args.tolerance:
            status, message = 1, "error: " + message + ": the GPU run's quality differs beyond noise."
    print(f"\n[gpu-check] {message} ({time.perf_counter() - started:.0f} s)")
    record = {"benchmark": "gpu_check", "rows": rows, "gpu": gpu, "status": status, "command": " ".join(sys.argv),
              **environment("torch", "numpy")}  # fmt: skip
    append_results(args.out, [record])
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu_check.json").write_text(json.dumps(record, indent=1))
    raise SystemExit(status)


if __name__ == "__main__":
    main()
