"""Benchmark: in-process `recommend` latency of this checkout against another commit, side by side in one run.

    python scripts/bench_pipeline.py --baseline 067191c                  # 1M items, scaled from the demo bundle
    python scripts/bench_pipeline.py --baseline HEAD~3 --items 100000 --rounds 3

Both code trees answer the same seeded requests (sessions of 3-12 events with context, k=20, purchased
excluded; `bench_serving.requests_pool`) from the same bundle (`bench_serving.scaled_bundle`: the demo
bundle's model, `--items` items, IVF index above 100k), one request per call on 1 thread, each tree in
its own process with the baseline checked out in a temporary git worktree. Rounds alternate the trees
(A B, B A, ...) so a drift of the machine hits both alike. Per tree: the median over rounds of each
round's p50 and p99 and of its stage medians; the ratio this/baseline. JSON lines go to
benchmarks/results/pipeline.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench_common import REPO, append_results, environment
from bench_serving import requests_pool, scaled_bundle

# Runs inside a code tree (its folder is the current directory, so `intentrec` is that tree's).
CHILD = r"""
import gc, json, statistics, sys, time
from pathlib import Path
import intentrec
tree, bundle, pool_file, warmup = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3], int(sys.argv[4])
assert Path(intentrec.__file__).resolve().is_relative_to(tree), (intentrec.__file__, tree)
try:
    from intentrec.serving.request import Query
except ImportError:  # a tree before serving.request
    from intentrec.serving.recommender import Query
from intentrec.serving.recommender import Recommender
pool = [Query(**fields) for fields in json.loads(Path(pool_file).read_text())]
recommender = Recommender(bundle, threads=1, verify=False)
latencies, stages = [], []
for i in range(warmup + len(pool)):
    start = time.perf_counter()
    recommender.recommend([pool[i % len(pool)]])
    if i >= warmup:
        latencies.append((time.perf_counter() - start) * 1000)
        stages.append(dict(recommender.timing))
latencies.sort()
row = {"p50_ms": statistics.median(latencies), "p99_ms": latencies[int(0.99 * len(latencies)) - 1]}
row.update({f"stage_{k}_ms": statistics.median(s[k] for s in stages) for k in stages[0]})
print(json.dumps(row))
"""


def run_tree(tree: Path, bundle: Path, pool_file: Path, warmup: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(bundle), str(pool_file), str(warmup)],
        cwd=tree, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"error: the run in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(rounds: list[dict]) -> dict:
    keys = sorted({k for r in rounds for k in r})
    return {k: statistics.median(r[k] for r in rounds if k in r) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git commit (or ref) to compare this checkout with")
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000, help="per round and tree")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench_pipeline")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pipeline.jsonl")
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(
            f"error: no bundle at {args.bundle}; run ./scripts/demo.sh (or python -m serving.export) first."
        )
    if args.rounds < 1 or args.requests < 1:
        raise SystemExit("error: --rounds and --requests must be 1 or more.")
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.baseline}^{{commit}}"], cwd=REPO, capture_output=True, text=True
    )
    if commit.returncode != 0:
        raise SystemExit(f"error: --baseline {args.baseline} is not a commit of {REPO}.")
    common = {"command": " ".join(sys.argv), "baseline": commit.stdout.strip()[:12], **environment("numpy", "faiss")}
    bundle = args.work / f"bundle_{args.items}"
    print(f"[bench] catalogue {args.items:,}: building the bundle and index ...", flush=True)
    index = scaled_bundle(args.bundle, bundle, args.items, 0.3, "IVF{nlist},Flat", 32, 100_000, 0)
    pool, _ = requests_pool(bundle, args.requests, seed=0)
    pool_file = args.work / "requests.json"
    pool_file.write_text(json.dumps([asdict(q) for q in pool]))
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as temporary:
        baseline = Path(temporary) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), common["baseline"]], cwd=REPO,
                       check=True, capture_output=True)  # fmt: skip
        try:
            trees = {"this": REPO, "baseline": baseline}
            results: dict[str, list[dict]] = {"this": [], "baseline": []}
            for r in range(args.rounds):
                for name in ("this", "baseline") if r % 2 == 0 else ("baseline", "this"):
                    row = run_tree(trees[name], bundle, pool_file, args.warmup)
                    results[name].append(row)
                    print(
                        f"[bench] round {r + 1} {name}: p50 {row['p50_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms",
                        flush=True,
                    )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, capture_output=True)
    this, base = summarize(results["this"]), summarize(results["baseline"])
    row = {
        "benchmark": "pipeline_inprocess",
        "items": args.items,
        "index": {k: index[k] for k in ("factory", "recall@10", "recall@100") if k in index},
        "requests": args.requests,
        "rounds": args.rounds,
        "this": this,
        "baseline_tree": base,
        "p50_ratio": this["p50_ms"] / base["p50_ms"],
        "p99_ratio": this["p99_ms"] / base["p99_ms"],
        "p50_rounds_ms": {name: [round(r["p50_ms"], 4) for r in rows] for name, rows in results.items()},
        **common,
    }
    print(
        f"[bench] p50 {this['p50_ms']:.3f} ms (this) vs {base['p50_ms']:.3f} ms ({common['baseline']}): "
        f"{row['p50_ratio']:.3f}x; p99 {row['p99_ratio']:.3f}x",
        flush=True,
    )
    append_results(args.out, [row])
    shutil.rmtree(args.work / f"bundle_{args.items}", ignore_errors=True)


if __name__ == "__main__":
    main()
