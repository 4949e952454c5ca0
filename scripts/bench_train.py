"""Benchmark: training throughput (targets/s) of query encoders, losses, batchings and precisions, side by side.

    python scripts/bench_train.py                                               # synthetic shop, the default model
    python scripts/bench_train.py --data amazon_video_games --overrides experiment=amazon_video_games --loss chunked full
    python scripts/bench_train.py --data yoochoose --models dif_sr_filter transformer gru --batching padded bucketed
    python scripts/bench_train.py --device cuda --precision bf16-mixed --batch-size 128 1024   # on a GPU

Same data, same batches, same machine, one run: for each variant (model config, batching, heap mode,
precision, loss, batch size) `--warmup` steps, then `--repeats` timed blocks of `--steps` training steps
(the batch moved to the device, forward, the training loss, backward, AdamW step); the median block
gives targets/s (positions with a target) and sequences/s (windows). Then one more block times each
phase on its own (the device synchronised between phases, so their sum is a little above a step of the
throughput blocks): `data` (the data loader assembling the batch and its copy to the device),
`forward` (the query tower and the loss), `backward`, `optimizer`. Achieved TFLOP/s: the step's
floating-point operations (counted once by torch's FlopCounterMode) times steps per second. Peak
memory: the GPU's peak allocation, or the process's peak resident set on CPU (cumulative over the run).

Batchings: `padded` (random batches cut after their longest window), `untrimmed` (the same batches
padded to max_seq_len), `bucketed` (windows of similar length, about as many targets as a random
batch; `data.bucket_by_length=true`, training's default). Losses: `chunked` (the fused full softmax,
`loss.chunk_targets=auto`, training's default) and `full` (one (targets x items) logits matrix through
autograd, `loss.chunk_targets=0`). Results: JSON lines in benchmarks/results/train.jsonl and a table.

`--baseline <commit>` runs the same variants on that commit's code too (a temporary git worktree, one
child process; losses it does not have are left out) and prints this tree's targets/s over the
baseline's for each variant, and of this tree's first loss over the baseline's `full`.

    python scripts/bench_train.py --data diginetica --overrides experiment=diginetica --loss chunked full --baseline f8e105b
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import REPO, append_results, environment


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--models", nargs="+", default=["dif_sr_filter"], help="model configs (conf/model/*.yaml)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every variant")
    parser.add_argument("--batch-size", nargs="+", type=int, default=[128])
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument("--batching", nargs="+", default=["bucketed"], choices=["untrimmed", "padded", "bucketed"])
    parser.add_argument("--loss", nargs="+", default=["chunked"], choices=["chunked", "full"])
    parser.add_argument(
        "--heap",
        nargs="+",
        default=["keep"],
        choices=["keep", "glibc"],
        help="keep: freed memory stays in the heap (what training does); glibc: the allocator's defaults",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["32-true"],
        choices=["32-true", "bf16-mixed"],
        help="bf16-mixed: autocast to bfloat16 (trainer.precision=bf16-mixed)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train.jsonl")
    parser.add_argument("--baseline", help="git commit to measure beside this checkout (side by side, one run)")
    parser.add_argument("--rows-to", type=Path, help=argparse.SUPPRESS)  # a baseline child: write rows here only
    args = parser.parse_args()
    baseline = resolve_commit(args.baseline) if args.baseline else None

    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.flop_counter import FlopCounterMode

    import intentrec
    from intentrec.training.datamodule import ArrayDataset, BatchIndexSampler
    from intentrec.training.prepared import build_datamodule, prepared_data
    from intentrec.training.runtime import set_heap_mode
    from intentrec.training.train import build_task

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA GPU; use --device cpu or auto.")
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )

    def config(batch_size: int, extra: list[str]):
        overrides = [
            *args.overrides,
            f"data={args.data}",
            f"data.batch_size={batch_size}",
            f"data.max_seq_len={args.max_seq_len}",
            *extra,
        ]
        with initialize_config_dir(config_dir=str(tree / "conf"), version_base="1.3"):
            return compose("train", overrides)

    tree = Path(intentrec.__file__).resolve().parents[1]  # the code measured (a baseline worktree in a child)

    cfg = config(args.batch_size[0], [])
    data = prepared_data(cfg)

    def batches_of(batching: str, batch_size: int):
        """The batches of one epoch's first steps, and the loader's seconds per batch."""
        datamodule = build_datamodule(config(batch_size, []), data)
        datamodule.setup()
        count = args.warmup + (args.repeats + 1) * args.steps
        started = time.perf_counter()
        if batching == "untrimmed":
            dataset = ArrayDataset(datamodule.train_arrays, trim=False)
            sampler = BatchIndexSampler(len(dataset), batch_size, True, 0)
            batches = [dataset[index] for _, index in zip(range(count), sampler)]
        else:
            datamodule.bucket_by_length = batching == "bucketed"
            batches = [batch for _, batch in zip(range(count), datamodule.train_dataloader())]
        return datamodule, batches, (time.perf_counter() - started) / len(batches)

    rows = []
    variants = [
        (m, b, h, p, loss, n)
        for m in args.models
        for b in args.batching
        for h in args.heap
        for p in args.precision
        for loss in args.loss
        for n in args.batch_size
    ]
    prepared: dict = {}
    for model, batching, heap, precision, loss, batch_size in variants:
        if not set_heap_mode(heap == "keep"):
            print(f"heap mode {heap} could not be set (not glibc); measuring the allocator as it is")
        if (batching, batch_size) not in prepared:
            prepared[(batching, batch_size)] = batches_of(batching, batch_size)
        datamodule, batches, loader_seconds = prepared[(batching, batch_size)]
        chunking = "chunk_targets" in config(batch_size, []).loss  # a baseline may predate the chunked loss
        if loss == "chunked" and not chunking:
            continue
        extra = [f"loss.chunk_targets={'auto' if loss == 'chunked' else 0}"] if chunking else []
        cfg = config(batch_size, [f"model={model}", *extra])
        torch.manual_seed(0)
        task = build_task(cfg, data, datamodule).train().to(device)
        # Training's optimizer (its parameter groups, fused where torch has it); a baseline may predate it.
        build = getattr(task, "build_optimizer", None)
        optimizer = build(1e-3) if build else torch.optim.AdamW(task.parameters(), lr=1e-3)
        task.log = lambda *a, **k: None  # no trainer attached: skip Lightning logging in the raw loop
        autocast = precision == "bf16-mixed"
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def to_device(batch):
            return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

        def forward(batch, task=task, autocast=autocast):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                return task.training_step(batch, 0)

        def step(batch, optimizer=optimizer, forward=forward):
            optimizer.zero_grad(set_to_none=True)
            forward(to_device(batch)).backward()
            optimizer.step()

        cursor = 0
        for _ in range(args.warmup):
            step(batches[cursor % len(batches)])
            cursor += 1
        sync(device)
        blocks = []
        for _ in range(args.repeats):
            targets = sequences = 0
            started = time.perf_counter()
            for _ in range(args.steps):
                batch = batches[cursor % len(batches)]
                step(batch)
                targets += int((batch["targets"] > 0).sum())
                sequences += len(batch["targets"])
                cursor += 1
            sync(device)
            seconds = time.perf_counter() - started
            blocks.append({"seconds": seconds, "targets_per_second": targets / seconds, "steps": args.steps})
        # One block timed phase by phase.
        phases = {"data": [], "forward": [], "backward": [], "optimizer": []}
        for _ in range(args.steps):
            batch = batches[cursor % len(batches)]
            cursor += 1
            sync(device)
            t0 = time.perf_counter()
            on_device = to_device(batch)
            sync(device)
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_value = forward(on_device)
            sync(device)
            t2 = time.perf_counter()
            loss_value.backward()
            sync(device)
            t3 = time.perf_counter()
            optimizer.step()
            sync(device)
            t4 = time.perf_counter()
            phases["data"].append(loader_seconds + t1 - t0)
            phases["forward"].append(t2 - t1)
            phases["backward"].append(t3 - t2)
            phases["optimizer"].append(t4 - t3)
        split_ms = {name: 1000 * statistics.median(values) for name, values in phases.items()}
        batch = to_device(batches[0])
        with FlopCounterMode(display=False) as counter:
            optimizer.zero_grad(set_to_none=True)
            forward(batch).backward()
        flops_per_target = counter.get_total_flops() / max(int((batch["targets"] > 0).sum()), 1)
        median_tps = statistics.median(b["targets_per_second"] for b in blocks)
        row = {
            "benchmark": "train_throughput",
            "data": args.data,
            "model": model,
            "encoder": str(cfg.model.encoder),
            "batching": batching,
            "heap": heap,
            "precision": precision,
            "loss": loss,
            "chunk_targets": task.loss_chunk(device) if loss == "chunked" else 0,
            "code": "this" if args.rows_to is None else "baseline",
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "num_items": data.num_items,
            "batch_size": batch_size,
            "max_seq_len": args.max_seq_len,
            "embedding_dim": int(cfg.model.embedding_dim),
            "num_layers": int(cfg.model.num_layers),
            "overrides": args.overrides,
            "targets_per_second_median": median_tps,
            "targets_per_second_min": min(b["targets_per_second"] for b in blocks),
            "targets_per_second_max": max(b["targets_per_second"] for b in blocks),
            "step_split_ms": split_ms,
            "tflops_achieved": flops_per_target * median_tps / 1e12,
            "peak_memory_mb": peak_memory_mb(device),
            "blocks": blocks,
            "command": " ".join(sys.argv),
            "torch_threads": torch.get_num_threads(),
            **environment("torch", "numpy"),
        }
        rows.append(row)
        split = " ".join(f"{k} {v:.1f}" for k, v in split_ms.items())
        print(
            f"{args.data:12} {model:14} {batching:9} {heap:5} {precision:10} {loss:8} b{batch_size:<5} "
            f"{median_tps:>10,.0f} targets/s ({row['targets_per_second_min']:,.0f}-{row['targets_per_second_max']:,.0f})  "
            f"ms: {split}  {row['tflops_achieved']:.3f} TFLOP/s  peak {row['peak_memory_mb']:,.0f} MB",
            flush=True,
        )
    if args.rows_to is not None:
        args.rows_to.write_text("\n".join(json.dumps(row) for row in rows))
        return
    base = rows[0]
    for row in rows:
        ratio = row["targets_per_second_median"] / base["targets_per_second_median"]
        print(
            f"  {row['model']:14} {row['batching']:9} {row['heap']:5} {row['precision']:10} {row['loss']:8} "
            f"b{row['batch_size']:<5} {ratio:.2f}x the first row"
        )
    if baseline is not None:
        baseline_rows = run_baseline(baseline, sys.argv[1:], args.overrides)

        def key(row):
            return (row["model"], row["batching"], row["heap"], row["precision"], row["batch_size"])

        full = {key(r): r for r in baseline_rows if r["loss"] == "full"}
        for row in rows:
            other = full.get(key(row))
            if other is None:
                continue
            ratio = row["targets_per_second_median"] / other["targets_per_second_median"]
            row["baseline"] = {"commit": baseline, "targets_per_second_median": other["targets_per_second_median"],
                               "ratio": ratio}  # fmt: skip
            print(
                f"  {row['model']:14} {row['batching']:9} {row['precision']:10} {row['loss']:8} b{row['batch_size']:<5} "
                f"{row['targets_per_second_median']:,.0f} targets/s vs {other['targets_per_second_median']:,.0f} "
                f"at {baseline} (full softmax): {ratio:.2f}x"
            )
        rows += baseline_rows
    append_results(args.out, rows)


def resolve_commit(ref: str) -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=REPO, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"error: --baseline {ref} is not a commit of {REPO}.")
    return out.stdout.strip()[:12]


# Runs this script inside another code tree: with `python -c` the current directory (the tree) is
# searched first, so `intentrec` is that tree's; PYTHONPATH gives this checkout's scripts/ (bench_common).
CHILD = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def run_baseline(commit: str, argv: list[str], overrides: list[str]) -> list[dict]:
    """The same variants measured on `commit`'s code (a temporary worktree); its rows, code='baseline'."""
    drop = {"--baseline", "--out", "--rows-to", "--overrides", "--loss"}  # the baseline runs its full softmax
    forwarded, skip = [], False
    for token in argv:
        if skip and not token.startswith("--"):
            continue
        skip = token in drop
        if not skip:
            forwarded.append(token)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as temporary:
        tree, rows_file = Path(temporary) / "baseline", Path(temporary) / "rows.jsonl"
        # The baseline prepares its own copy of the data (its artifacts/) from the same source files:
        # `../shared` beside it is this checkout's.
        if (REPO.parent / "shared").exists():
            (Path(temporary) / "shared").symlink_to(REPO.parent / "shared")
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO, check=True, capture_output=True
        )
        try:
            print(f"[bench] the same variants at {commit} ...", flush=True)
            script = str(Path(__file__).resolve())
            command = [
                sys.executable,
                "-c",
                CHILD,
                script,
                *forwarded,
                "--loss",
                "full",
                "--rows-to",
                str(rows_file),
                "--overrides",
                *overrides,
            ]
            env = {**os.environ, "PYTHONPATH": str(Path(script).parent)}
            out = subprocess.run(command, cwd=tree, text=True, env=env)
            if out.returncode != 0:
                raise SystemExit(f"error: the baseline run at {commit} failed (exit {out.returncode}).")
            rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
            return [{**row, "git_commit": commit} for row in rows]  # the code measured, not this checkout's
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)


if __name__ == "__main__":
    main()
