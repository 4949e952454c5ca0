"""Benchmark: the ONNX ranker's latency per request (one query, its candidates), full vs low-rank cross layers.

    python scripts/bench_ranker.py                      # ranks 0 (full), 64, 32, and no cross layers
    python scripts/bench_ranker.py --candidates 50 100 --ranks 0 32

The ranker is built with the demo bundle's shapes (embedding 64, 7 context fields, 4 item feature
codes: a 369-wide input), exported with `serving.onnx_models.export_ranker` as export does, and run
by ONNX Runtime with one thread (the serving setting). Weights are random: latency does
not depend on them. Median and spread over `--repeats` blocks of `--calls` calls after a warm-up.
Results: JSON lines in benchmarks/results/ranker.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from bench_common import append_results, environment  # noqa: E402

CONTEXT_SIZES = [4, 25, 8, 7, 7, 20, 3]  # device, hour, day of week, referrer, region, gap bucket, loyalty
FEATURE_SIZES = [31, 181, 4, 11]  # category, brand, price tier, price bucket (the demo bundle's)
EMBEDDING_DIM = 64


def time_ranker(cross_rank: int, layers: int, candidates: int, calls: int, repeats: int) -> dict:
    import onnxruntime as ort
    import torch

    from intentrec.models.ranker import Ranker, RankerConfig
    from intentrec.serving.onnx_models import RANKER_INPUTS, example_ranker_inputs, export_ranker

    torch.manual_seed(0)
    ranker = Ranker(
        RankerConfig(cross_rank=cross_rank, num_cross_layers=layers), EMBEDDING_DIM, CONTEXT_SIZES, FEATURE_SIZES
    ).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ranker.onnx"
        export_ranker(ranker, path, EMBEDDING_DIM, FEATURE_SIZES, CONTEXT_SIZES)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = example_ranker_inputs(1, candidates, EMBEDDING_DIM, FEATURE_SIZES, CONTEXT_SIZES)
    feed = {name: tensor.numpy() for name, tensor in zip(RANKER_INPUTS, inputs)}
    for _ in range(max(20, calls // 5)):
        session.run(None, feed)
    blocks = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            session.run(None, feed)
        blocks.append((time.perf_counter() - started) / calls * 1000)
    return {
        "cross_rank": cross_rank,
        "cross_layers": layers,
        "candidates": candidates,
        "ms_median": statistics.median(blocks),
        "ms_min": min(blocks),
        "ms_max": max(blocks),
        "parameters": int(sum(p.numel() for p in ranker.parameters())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", nargs="+", type=int, default=[0, 64, 32], help="0 = full cross matrices")
    parser.add_argument("--candidates", nargs="+", type=int, default=[50])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ranker.jsonl")
    args = parser.parse_args()

    env = environment("torch", "onnxruntime")
    rows = []
    for candidates in args.candidates:
        variants = [(rank, 2) for rank in args.ranks] + [(0, 0)]
        for rank, layers in variants:
            row = time_ranker(rank, layers, candidates, args.calls, args.repeats)
            rows.append({"benchmark": "ranker_onnx", **row, "command": " ".join(sys.argv), **env})
        base = rows[-len(variants)]["ms_median"]
        for row in rows[-len(variants) :]:
            name = "no cross layers" if row["cross_layers"] == 0 else f"cross_rank {row['cross_rank'] or 'full'}"
            print(
                f"{candidates:4d} candidates  {name:16} {row['ms_median']:.3f} ms "
                f"({row['ms_min']:.3f}-{row['ms_max']:.3f})  {base / row['ms_median']:.2f}x the first  "
                f"{row['parameters']:,} parameters",
                flush=True,
            )
    append_results(args.out, rows)


if __name__ == "__main__":
    main()
