"""Benchmark: training throughput (targets/s and sequences/s) of each query encoder, side by side.

    python scripts/bench_train.py                                   # synthetic shop, all encoders
    python scripts/bench_train.py --data yoochoose --encoders transformer --steps 30

Same data, same batches, same machine, one run: for each variant and batching (`padded`: random
batches cut after their longest window, the training default; `untrimmed`: the same random batches
padded to max_seq_len; `bucketed`: batches of windows of similar length holding about as many targets
as a random batch, `data.bucket_by_length=true`) and heap mode (`keep`: freed memory stays in the heap, as
training sets it; `glibc`: the allocator's defaults), `--warmup` steps, then `--repeats` timed blocks of
`--steps` training steps (forward, full-softmax loss over the catalogue, backward,
AdamW step); the median block gives targets/s (positions with a target) and sequences/s (windows).
Results: JSON lines in benchmarks/results/train.jsonl and a printed table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--encoders", nargs="+", default=["transformer", "gru", "mean"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-seq-len", type=int, default=50)
    parser.add_argument(
        "--batching", nargs="+", default=["padded", "bucketed"], choices=["untrimmed", "padded", "bucketed"]
    )
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
        help="bf16-mixed: CPU autocast to bfloat16 (trainer.precision=bf16-mixed)",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train.jsonl")
    args = parser.parse_args()

    import torch
    from hydra import compose, initialize_config_dir

    from intentrec.training.datamodule import ArrayDataset, BatchIndexSampler
    from intentrec.training.prepared import build_datamodule, prepared_data
    from intentrec.training.runtime import set_heap_mode
    from intentrec.training.train import build_task

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train", [f"data={args.data}", f"data.batch_size={args.batch_size}", f"data.max_seq_len={args.max_seq_len}"]
        )
    data = prepared_data(cfg)
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    batch_lists = {}
    for batching in args.batching:
        if batching == "untrimmed":
            arrays = datamodule.train_arrays
            dataset = ArrayDataset(arrays, trim=False)
            sampler = BatchIndexSampler(len(dataset), args.batch_size, True, 0)
            batch_lists[batching] = [dataset[index] for index in sampler]
        else:
            datamodule.bucket_by_length = batching == "bucketed"
            batch_lists[batching] = list(datamodule.train_dataloader())
    rows = []
    variants = [(e, b, h, p) for e in args.encoders for b in args.batching for h in args.heap for p in args.precision]
    for encoder, batching, heap, precision in variants:
        if not set_heap_mode(heap == "keep"):
            print(f"heap mode {heap} could not be set (not glibc); measuring the allocator as it is")
        batches = batch_lists[batching]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose(
                "train",
                [
                    f"data={args.data}",
                    f"data.batch_size={args.batch_size}",
                    f"data.max_seq_len={args.max_seq_len}",
                    f"model.encoder={encoder}",
                    "loss.name=full",
                ],
            )
        torch.manual_seed(0)
        task = build_task(cfg, data, datamodule).train()
        optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)

        autocast = precision == "bf16-mixed"

        def step(batch, task=task, optimizer=optimizer, autocast=autocast):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = task.training_step(batch, 0)
            loss.backward()
            optimizer.step()
            return int((batch["targets"] > 0).sum())

        task.log = lambda *a, **k: None  # no trainer attached: skip Lightning logging in the raw loop
        cursor = 0
        for _ in range(args.warmup):
            step(batches[cursor % len(batches)])
            cursor += 1
        blocks = []
        for _ in range(args.repeats):
            targets = sequences = 0
            started = time.perf_counter()
            for _ in range(args.steps):
                batch = batches[cursor % len(batches)]
                targets += step(batch)
                sequences += len(batch["targets"])
                cursor += 1
            seconds = time.perf_counter() - started
            blocks.append(
                {
                    "seconds": seconds,
                    "targets_per_second": targets / seconds,
                    "sequences_per_second": sequences / seconds,
                }
            )
        row = {
            "benchmark": "train_throughput",
            "data": args.data,
            "encoder": encoder,
            "batching": batching,
            "heap": heap,
            "precision": precision,
            "num_items": data.num_items,
            "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len,
            "embedding_dim": int(cfg.model.embedding_dim),
            "num_layers": int(cfg.model.num_layers),
            "loss": "full softmax",
            "targets_per_second_median": statistics.median(b["targets_per_second"] for b in blocks),
            "sequences_per_second_median": statistics.median(b["sequences_per_second"] for b in blocks),
            "targets_per_second_min": min(b["targets_per_second"] for b in blocks),
            "targets_per_second_max": max(b["targets_per_second"] for b in blocks),
            "blocks": blocks,
            "steps_per_block": args.steps,
            "command": " ".join(sys.argv),
            "torch_threads": torch.get_num_threads(),
            **environment("torch", "numpy"),
        }
        rows.append(row)
        print(
            f"{args.data:12} {encoder:12} {batching:9} {heap:6} {precision:10} {row['targets_per_second_median']:>10,.0f} targets/s "
            f"({row['targets_per_second_min']:,.0f}-{row['targets_per_second_max']:,.0f})  "
            f"{row['sequences_per_second_median']:>8,.0f} sequences/s",
            flush=True,
        )
    base = rows[0]
    for row in rows:
        ratio = row["targets_per_second_median"] / base["targets_per_second_median"]
        print(
            f"  {row['encoder']:12} {row['batching']:9} {row['heap']:6} {row['precision']:10} {ratio:.2f}x the "
            f"{base['encoder']} ({base['batching']}, heap {base['heap']}, {base['precision']})"
        )
    append_results(args.out, rows)


if __name__ == "__main__":
    main()
