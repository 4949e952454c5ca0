"""Benchmark: what experiment assignment and list ids add to an in-process `recommend` call.

    python scripts/bench_experiments.py                            # the demo bundle
    python scripts/bench_experiments.py --bundle <bundle> --rounds 7 --calls 2000

Two recommenders over the same bundle answer the same seeded requests (bench_serving.requests_pool),
one request per call on 1 thread: one without an experiment, one with a two-arm experiment whose arms
both serve the model (so the only extra work is the assign stage: the shopper's unit, SHA-256 and the
arm lookup). Rounds alternate the two (A B, B A, ...); per recommender the median over rounds of each
round's p50 and p99. The list id (intentrec.ids.new_id) is made in both; its own cost is timed apart
(timeit, median of 5 x 200,000 calls) and added: assignment + id = (B - A) + new_id. JSON lines go to
benchmarks/results/experiments.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_common import REPO, append_results, environment
from bench_serving import requests_pool


def round_latencies(recommender, pool, calls: int) -> list[float]:
    out = []
    for i in range(calls):
        start = time.perf_counter()
        recommender.recommend([pool[i % len(pool)]])
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "experiments.jsonl")
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        print(
            f"error: --bundle {args.bundle} is not an export bundle; run ./scripts/demo.sh or pass --bundle",
            file=sys.stderr,
        )
        return 2
    from intentrec.ids import new_id
    from intentrec.serving.experiments import Experiment
    from intentrec.serving.recommender import Recommender

    requests, _ = requests_pool(args.bundle, 500, seed=0)
    pool = [replace(q, shopper=f"customer:c{i}") for i, q in enumerate(requests)]
    split = Experiment.from_dict(
        {"name": "bench", "salt": "bench-1", "arms": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]}
    )
    plain = Recommender(args.bundle, threads=1, verify=False)
    assigned = Recommender(args.bundle, threads=1, verify=False, experiment=split)
    for recommender in (plain, assigned):
        round_latencies(recommender, pool, 200)  # warm-up
    p50s, p99s = {"plain": [], "assigned": []}, {"plain": [], "assigned": []}
    for r in range(args.rounds):
        order = [("plain", plain), ("assigned", assigned)]
        for name, recommender in order if r % 2 == 0 else order[::-1]:
            latencies = round_latencies(recommender, pool, args.calls)
            p50s[name].append(float(np.percentile(latencies, 50)))
            p99s[name].append(float(np.percentile(latencies, 99)))
    id_us = statistics.median(timeit.repeat(new_id, number=200_000, repeat=5)) / 200_000 * 1e6
    p50 = {k: statistics.median(v) for k, v in p50s.items()}
    p99 = {k: statistics.median(v) for k, v in p99s.items()}
    added = p50["assigned"] - p50["plain"] + id_us / 1000
    row = {
        "benchmark": "experiments",
        "bundle": str(args.bundle),
        "items": int(plain.catalogue.num_items),
        "rounds": args.rounds,
        "calls": args.calls,
        "p50_ms": {k: round(v, 4) for k, v in p50.items()},
        "p99_ms": {k: round(v, 4) for k, v in p99.items()},
        "p50_rounds_ms": {k: [round(x, 4) for x in v] for k, v in p50s.items()},
        "new_id_us": round(id_us, 3),
        "assignment_plus_id_ms": round(added, 4),
        **environment("numpy", "onnxruntime", "faiss"),
    }
    append_results(args.out, [row])
    print(
        f"p50 without experiment {p50['plain']:.4f} ms, with {p50['assigned']:.4f} ms "
        f"(ratio {p50['assigned'] / p50['plain']:.3f}); new_id {id_us:.2f} us; "
        f"assignment + id: {added * 1000:.1f} us per call (the limit: 50 us)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
