"""Benchmark: FAISS retrieval on the model's item vectors: exact search first, then IVF and HNSW settings.

    python scripts/bench_retrieval.py --bundle artifacts/runs/demo/bundle              # 100k and 1M items
    python scripts/bench_retrieval.py --items 100000 --nprobe 8 32 --ef 64 128 --queries 200

Vectors: the bundle's own item embeddings (the trained model's), then noisy copies of them up to the
catalogue size (`--noise` x the per-dimension std, as scripts/bench_serving.py does), so the index
sees model-shaped clusters, not uniform noise. Queries: `--queries` further noisy copies of real
item vectors that are not in the catalogue. For each index: build seconds (training + adding),
queries/s at batch 1 (one query per search call, `--threads` OpenMP threads: 1 is what each serving
instance uses) and at batch 256, and recall@10 / recall@100 against the exact (Flat) results.
Medians over `--repeats` timed passes (every pass's rate is kept too). Results: JSON lines in
benchmarks/results/retrieval.jsonl, each with the bundle manifest's sha256 of item_embeddings.npy
(runs on different vectors differ in recall, not only in speed), and a printed table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment, noisy_copies, scaled_vectors  # noqa: E402


def catalogue(bundle_dir: Path, num_items: int, num_queries: int, noise: float, seed: int):
    from intentrec.serving.bundle import load_bundle

    real = load_bundle(bundle_dir, verify=False).embeddings[1:].astype(np.float32)
    rng = np.random.default_rng(seed)
    vectors, _ = scaled_vectors(real, num_items, noise, rng)
    queries, _ = noisy_copies(real, num_queries, noise, rng)
    return vectors, np.ascontiguousarray(queries)


def timed_search(index, queries: np.ndarray, k: int, batch: int, repeats: int) -> tuple[list[float], np.ndarray]:
    """(queries/s of each of `repeats` passes, ids of the last pass)."""
    rates, ids = [], None
    for _ in range(repeats):
        found = []
        started = time.perf_counter()
        for start in range(0, len(queries), batch):
            found.append(index.search(queries[start : start + batch], k)[1])
        rates.append(len(queries) / (time.perf_counter() - started))
        ids = np.concatenate(found)
    return rates, ids


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(e[:k])) / k for f, e in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--batch1-queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads for searches (builds use all cores)")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "retrieval.jsonl")
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(
            f"error: no bundle at {args.bundle}; run ./scripts/demo.sh (or python -m serving.export) first."
        )

    import os

    import faiss

    from intentrec.serving.index import build_index, resolve_factory, set_search_params

    cores = os.cpu_count() or 1
    # the bundle manifest's digest of item_embeddings.npy identifies the vectors across benchmarks
    vectors_sha = json.loads((args.bundle / "manifest.json").read_text())["files"]["item_embeddings.npy"][:16]
    rows = []
    for num_items in args.items:
        vectors, queries = catalogue(args.bundle, num_items, args.queries, args.noise, args.seed)
        single = queries[: args.batch1_queries]
        settings = [("Flat", {})]
        settings += [(resolve_factory("IVF{nlist},Flat", num_items), {"nprobe": p}) for p in args.nprobe]
        settings += [(f"HNSW{args.hnsw_m}", {"efSearch": ef}) for ef in args.ef]
        built: dict[str, tuple] = {}
        exact = None
        for factory, params in settings:
            if factory not in built:
                faiss.omp_set_num_threads(cores)
                started = time.perf_counter()
                built[factory] = (build_index(vectors, factory, seed=args.seed), time.perf_counter() - started)
                print(f"[bench] {num_items:,} {factory}: built in {built[factory][1]:.1f} s", flush=True)
            index, build_s = built[factory]
            set_search_params(index, params)
            faiss.omp_set_num_threads(args.threads)
            rates1, _ = timed_search(index, single, 100, 1, args.repeats)
            rates256, found = timed_search(index, queries, 100, 256, args.repeats)
            qps1, qps256 = statistics.median(rates1), statistics.median(rates256)
            if exact is None:
                exact = found  # Flat comes first: the reference
            row = {
                "benchmark": "retrieval",
                "num_items": num_items,
                "dim": int(vectors.shape[1]),
                "factory": factory,
                "search_params": params,
                "build_seconds": round(build_s, 2),
                "qps_batch1": round(qps1, 1),
                "qps_batch256": round(qps256, 1),
                "qps_batch1_passes": [round(r, 1) for r in rates1],
                "qps_batch256_passes": [round(r, 1) for r in rates256],
                "recall@10": recall(found, exact, 10),
                "recall@100": recall(found, exact, 100),
                "queries": len(queries),
                "search_threads": args.threads,
                "build_threads": cores,
                "bundle": str(args.bundle),
                "vectors_sha256": vectors_sha,
            }
            rows.append(row)
        flat = next(r for r in rows if r["num_items"] == num_items and r["factory"] == "Flat")
        for row in rows:
            if row["num_items"] == num_items:
                row["speedup_batch1_vs_exact"] = round(row["qps_batch1"] / flat["qps_batch1"], 1)
                row["speedup_batch256_vs_exact"] = round(row["qps_batch256"] / flat["qps_batch256"], 1)
                print(
                    f"{num_items:>9,} {row['factory']:18} {str(row['search_params']):18} build {row['build_seconds']:6.1f} s  "
                    f"batch1 {row['qps_batch1']:>8,.0f} q/s ({row['speedup_batch1_vs_exact']:>5.1f}x)  "
                    f"batch256 {row['qps_batch256']:>8,.0f} q/s  recall@10 {row['recall@10']:.3f}  "
                    f"recall@100 {row['recall@100']:.3f}",
                    flush=True,
                )
    common = {"command": " ".join(sys.argv), **environment("numpy", "faiss")}
    append_results(args.out, [{**row, **common} for row in rows])


if __name__ == "__main__":
    main()
