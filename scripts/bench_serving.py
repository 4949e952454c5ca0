"""Benchmark: latency and throughput of `recommend` and `similar_items` through the real Triton server.

    python scripts/bench_serving.py --bundle artifacts/runs/demo/bundle                 # 10k, 100k, 1M items
    python scripts/bench_serving.py --bundle ... --items 10000 --concurrency 1 8 --protocols grpc

Loopback only, bounded: each (catalogue, protocol, model, concurrency) level stops after
`--requests` requests or `--seconds` seconds, whichever comes first, after `--warmup` requests.
The load generator is one asyncio process (tritonclient aio) on the same machine as the server.

Catalogues above the bundle's own size keep its trained query encoder and ranker and get synthetic
item vectors: each new item copies a real item's vector, content codes and category, plus Gaussian
noise (`--noise` x the per-dimension std), so the index sees clustered, model-shaped vectors rather
than uniform noise. Index: exact (Flat) up to `--flat-max` items, else `--ann` (IVF, nprobe from
`--nprobe`); its recall@10/@100 against exact search is measured and reported beside the latency.
Requests: sessions of 3-12 events drawn from the catalogue, with context, k=20, purchased excluded.

Results: JSON lines (one per level, with command, commit, machine, versions) in
benchmarks/results/serving.jsonl and a printed table; server peak RSS (server + python stubs).
`--repeats N` runs every level N times against the same server, in N rounds over all levels (so a
slow drift of the machine hits every level alike), and writes a markdown summary (medians, with the
min-max of throughput and p99 over the rounds) to `--summary`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment, scaled_vectors  # noqa: E402


def scaled_bundle(
    source: Path, out: Path, num_items: int, noise: float, ann: str, nprobe: int, flat_max: int, seed: int
):
    """A copy of `source` with `num_items` items (real ones first, then noisy copies) and a fresh index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from intentrec.serving.bundle import load_bundle, write_manifest
    from intentrec.serving.index import (
        build_index,
        recall_against_exact,
        resolve_factory,
        set_search_params,
        write_index,
    )

    if out.resolve() == source.resolve():
        raise SystemExit(f"error: --bundle {source} is inside --work; pass the trained bundle, not a scaled copy.")
    bundle = load_bundle(source)
    rng = np.random.default_rng(seed)
    real = bundle.embeddings[1:]
    N0 = len(real)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    vectors, base = scaled_vectors(real, num_items, noise, rng)
    np.save(out / "item_embeddings.npy", np.concatenate([np.zeros((1, real.shape[1]), np.float32), vectors]))
    items = {
        name: np.asarray(values)[base] for name, values in bundle.items.items() if name not in ("item_idx", "item_id")
    }
    items["item_idx"] = np.arange(1, num_items + 1)
    items["item_id"] = np.asarray(
        [*bundle.items["item_id"][: min(N0, num_items)], *[f"b{i}" for i in range(N0, num_items)]]
    )
    items["train_count"] = np.where(np.arange(num_items) < N0, items["train_count"], 0)
    pq.write_table(
        pa.table(
            {
                k: items[k]
                for k in ["item_idx", "item_id", *[c for c in bundle.items if c not in ("item_idx", "item_id")]]
            }
        ),
        out / "items.parquet",
    )
    factory = "Flat" if num_items <= flat_max else resolve_factory(ann, num_items)
    started = time.perf_counter()
    index = build_index(vectors, factory, seed=seed)
    build_s = time.perf_counter() - started
    params = {} if factory == "Flat" else {"nprobe": nprobe}
    set_search_params(index, params)
    write_index(index, out / "index.faiss")
    queries = vectors[rng.choice(num_items, 500, replace=False)] + rng.normal(0, 0.1, (500, vectors.shape[1])).astype(
        np.float32
    ) * real.std(axis=0)
    recall = {f"recall@{k}": recall_against_exact(index, vectors, queries, k) for k in (10, 100)}
    manifest = dict(bundle.manifest)
    manifest.update(
        num_items=num_items, index={"factory": factory, "search_params": params, **recall, "build_seconds": build_s}
    )
    write_manifest(out, manifest)
    return {"factory": factory, "search_params": params, "index_build_seconds": round(build_s, 2), **recall}


def requests_pool(bundle_dir: Path, count: int, seed: int):
    from intentrec.serving.bundle import load_bundle
    from intentrec.serving.client import RecommendRequest

    bundle = load_bundle(bundle_dir, verify=False)
    rng = np.random.default_rng(seed)
    ids = bundle.items["item_id"].astype(str)
    vocab = bundle.manifest["vocab"]
    devices = [d for d in vocab.get("device_types", [])[1:]] or [None]
    pool = []
    for _ in range(count):
        n = int(rng.integers(3, 13))
        items = ids[rng.integers(0, len(ids), n)].tolist()
        t0 = 1_772_000_000_000 + int(rng.integers(0, 86_400_000))
        pool.append(
            RecommendRequest(
                item_ids=items,
                event_types=["view"] * (n - 1) + [str(rng.choice(["view", "add_to_cart", "purchase"]))],
                timestamps=[t0 + 30_000 * i for i in range(n)],
                now=t0 + 30_000 * n,
                device_type=str(rng.choice(devices)) if devices[0] else None,
                k=20,
            )
        )
    return pool, ids


def check_raw_reply(payload: bytes, model: str) -> dict:
    """Parse one raw reply, check it carries the model's outputs (a sample of replies is checked),
    and return its info (with the model's own `server_ms`)."""
    from intentrec.serving.client import GrpcReply

    reply = GrpcReply(payload)
    if reply.model_name != model or reply.as_numpy("item_ids") is None or reply.as_numpy("scores") is None:
        raise RuntimeError(f"unexpected reply from {model}: outputs {sorted(reply.arrays)}")
    return json.loads(reply.as_numpy("info")[0, 0])


def model_timing(samples: list[dict]) -> dict:
    """Medians of the `server_ms` the Triton model reports in sampled replies: its own milliseconds
    per execute call reading requests (parse), in each pipeline stage, and in all (total)."""
    keys = sorted({key for sample in samples for key in sample})
    return {
        f"model_{key}_ms" if key != "rows" else "model_rows": statistics.median(s[key] for s in samples if key in s)
        for key in keys
    }


async def run_level(url, protocol, model, pool, ids, concurrency, max_requests, max_seconds, warmup, client="sdk"):
    """One level. client=sdk: serving.client.AsyncClient (builds tensors and parses replies per call);
    client=raw (gRPC only): requests serialized in advance, replies parsed 1 in 50 (perf_analyzer's way)."""
    from intentrec.serving.client import AsyncClient, infer_request_bytes, recommend_arrays, similar_arrays

    latencies, errors, timings = [], [], []
    sent = [0]
    if client == "raw":
        import grpc

        if model == "recommend":
            payloads = [infer_request_bytes(model, recommend_arrays([q])) for q in pool]
        else:
            payloads = [
                infer_request_bytes(model, similar_arrays([[ids[(i * 7919) % len(ids)]]], [20])) for i in range(500)
            ]
        channel = grpc.aio.insecure_channel(url)
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None
        )

        async def call_raw(i):
            reply = await infer(payloads[i % len(payloads)], timeout=30)
            if i % 50 == 0:
                timings.append(check_raw_reply(reply, model).get("server_ms", {}))

        context = channel
    else:
        context = AsyncClient(url, protocol, timeout_s=30)
    async with context as sdk:

        async def call_sdk(i):
            if model == "recommend":
                reply = await sdk.recommend(pool[i % len(pool)])
            else:
                reply = await sdk.similar_items([ids[(i * 7919) % len(ids)]], 20)
            if i % 50 == 0:
                timings.append(reply.info.get("server_ms", {}))

        call = call_raw if client == "raw" else call_sdk
        for i in range(warmup):
            await call(i)
        deadline = time.perf_counter() + max_seconds

        async def worker():
            while sent[0] < max_requests and time.perf_counter() < deadline:
                i = sent[0]
                sent[0] += 1
                start = time.perf_counter()
                try:
                    await call(i)
                    latencies.append((time.perf_counter() - start) * 1000)
                except Exception as error:  # noqa: BLE001 - every failure is counted
                    errors.append(repr(error)[:200])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    lat = sorted(latencies)

    return {
        "client": client,
        "requests": len(lat),
        "errors": len(errors),
        "error_examples": errors[:3],
        "seconds": round(wall, 3),
        "throughput_rps": len(lat) / wall if wall else 0.0,
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        **model_timing(timings),
    }


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when there are none)."""
    return ordered[min(len(ordered) - 1, int(np.ceil(p / 100 * len(ordered))) - 1)] if ordered else float("nan")


def inprocess_level(bundle_dir: Path, pool, count: int, warmup: int) -> dict:
    """The same `recommend` requests answered in this process by serving.recommender (1 thread, one
    request per call, no Triton): the floor the server's latency is compared with, stage by stage."""
    import gc

    from intentrec.serving.recommender import Recommender

    recommender = Recommender(bundle_dir, threads=1, verify=False)
    latencies, stages = [], []
    for i in range(warmup + count):
        start = time.perf_counter()
        recommender.recommend([pool[i % len(pool)]])
        if i >= warmup:
            latencies.append((time.perf_counter() - start) * 1000)
            stages.append(dict(recommender.timing))
    del recommender
    gc.collect()
    lat = sorted(latencies)
    return {
        "benchmark": "serving_inprocess",
        "model": "recommend",
        "requests": len(lat),
        "p50_ms": statistics.median(lat),
        "p99_ms": percentile(lat, 99),
        **{f"stage_{key}_ms": statistics.median(s[key] for s in stages) for key in stages[0]},
    }


def model_stats(http_url: str, model: str) -> dict:
    """Triton's cumulative statistics of `model` (all versions): counts and nanoseconds."""
    import urllib.request

    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as reply:
        stats = json.load(reply)["model_stats"]
    out = {"executions": 0, "inferences": 0, "success": 0, "queue_ns": 0, "input_ns": 0, "infer_ns": 0, "output_ns": 0}
    for version in stats:
        out["executions"] += int(version.get("execution_count", 0))
        out["inferences"] += int(version.get("inference_count", 0))
        inference = version.get("inference_stats", {})
        out["success"] += int(inference.get("success", {}).get("count", 0))
        out["queue_ns"] += int(inference.get("queue", {}).get("ns", 0))
        out["input_ns"] += int(inference.get("compute_input", {}).get("ns", 0))
        out["infer_ns"] += int(inference.get("compute_infer", {}).get("ns", 0))
        out["output_ns"] += int(inference.get("compute_output", {}).get("ns", 0))
    return out


def stats_delta(before: dict, after: dict) -> dict:
    """Server-side view of one level: rows per execute call (dynamic batching) and mean queue / compute time."""
    d = {key: after[key] - before[key] for key in before}
    return {
        "server_rows_per_execute": round(d["inferences"] / d["executions"], 2) if d["executions"] else None,
        "server_queue_ms": round(d["queue_ns"] / d["success"] / 1e6, 3) if d["success"] else None,
        "server_compute_ms": round(d["infer_ns"] / d["success"] / 1e6, 3) if d["success"] else None,
        "server_input_ms": round(d["input_ns"] / d["success"] / 1e6, 3) if d["success"] else None,
        "server_output_ms": round(d["output_ns"] / d["success"] / 1e6, 3) if d["success"] else None,
    }


class PeakMemory:
    """Samples RSS of the server process tree every 0.2 s."""

    def __init__(self, pid):
        import psutil

        self.process, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import psutil

        while not self.stop.is_set():
            try:
                total = self.process.memory_info().rss + sum(
                    c.memory_info().rss for c in self.process.children(recursive=True)
                )
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--protocols", nargs="+", default=["grpc", "http"], choices=["grpc", "http"])
    parser.add_argument("--models", nargs="+", default=["recommend", "similar_items"])
    parser.add_argument(
        "--clients",
        nargs="+",
        default=["sdk", "raw"],
        choices=["sdk", "raw"],
        help="sdk: serving.client.AsyncClient; raw: pre-serialized gRPC requests (gRPC only)",
    )
    parser.add_argument("--requests", type=int, default=2000, help="per level, at most")
    parser.add_argument("--seconds", type=float, default=8.0, help="per level, at most")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--instances", type=int, default=2, help="Triton instances per model (2 cores here)")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--flat-max", type=int, default=100_000)
    parser.add_argument("--ann", default="IVF{nlist},Flat")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument(
        "--inprocess",
        type=int,
        default=500,
        help="requests answered in process (no Triton) per catalogue first, for comparison; 0 skips",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds over all levels against the same server; medians are reported"
    )
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench_serving")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serving.jsonl")
    parser.add_argument(
        "--summary",
        type=Path,
        default=None,
        help="markdown summary (default: benchmarks/results/serving_<UTC time>.md when --repeats > 1)",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats {args.repeats}: expected 1 or more rounds.")
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(
            f"error: no bundle at {args.bundle}; run ./scripts/demo.sh (or python -m serving.export) first."
        )

    from intentrec.serving.repository import ServingOptions, build
    from intentrec.serving.server import TritonServer

    # Recorded when the run starts: the commit and time of the code that ran, not of a later commit.
    common = {"command": " ".join(sys.argv), **environment("numpy", "faiss", "onnxruntime", "tritonclient")}
    rows = []
    for num_items in args.items:
        bundle_dir = args.work / f"bundle_{num_items}"
        print(f"[bench] catalogue {num_items:,}: building the bundle and index ...", flush=True)
        index_info = scaled_bundle(
            args.bundle, bundle_dir, num_items, args.noise, args.ann, args.nprobe, args.flat_max, 0
        )
        print(f"[bench]   index {index_info}", flush=True)
        pool, ids = requests_pool(bundle_dir, 500, 1)
        if args.inprocess and "recommend" in args.models:
            row = {**inprocess_level(bundle_dir, pool, args.inprocess, args.warmup), "num_items": num_items, "k": 20}
            rows.append(row)
            stages = ", ".join(f"{k[6:-3]} {v:.3f}" for k, v in row.items() if k.startswith("stage_"))
            print(
                f"{num_items:>9,} in-process    recommend     c=1   p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms  "
                f"stages (ms): {stages}",
                flush=True,
            )
        repository = build(bundle_dir, args.work / f"repository_{num_items}", ServingOptions(instances=args.instances))
        started = time.perf_counter()
        with TritonServer(repository, None, None, None, log_file=args.work / f"server_{num_items}.log") as server:
            load_s = time.perf_counter() - started
            memory = PeakMemory(server.process.pid)
            for protocol in args.protocols:
                url = server.grpc_url if protocol == "grpc" else server.http_url
                levels = [
                    (r, m, c, k)
                    for r in range(args.repeats)
                    for m in args.models
                    for k in args.clients
                    if protocol == "grpc" or k == "sdk"
                    for c in args.concurrency
                ]
                for repeat, model, concurrency, client in levels:
                    before = model_stats(server.http_url, model)
                    result = asyncio.run(
                        run_level(
                            url,
                            protocol,
                            model,
                            pool,
                            ids,
                            concurrency,
                            args.requests,
                            args.seconds,
                            args.warmup,
                            client,
                        )
                    )
                    row = {
                        "benchmark": "serving",
                        "model": model,
                        "protocol": protocol,
                        "concurrency": concurrency,
                        "num_items": num_items,
                        "k": 20,
                        "instances": args.instances,
                        "repeat": repeat,
                        "repeats": args.repeats,
                        "index": index_info,
                        "server_ready_seconds": round(load_s, 2),
                        **result,
                        **stats_delta(before, model_stats(server.http_url, model)),
                    }
                    rows.append(row)
                    print(
                        f"{num_items:>9,} {protocol:4} {client:3} {model:13} c={concurrency:<3} r{repeat} "
                        f"{row['throughput_rps']:>7.0f} req/s  "
                        f"p50 {row['p50_ms']:6.2f}  p95 {row['p95_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms  "
                        f"errors {row['errors']}  server: {row['server_rows_per_execute']} rows/execute, "
                        f"queue {row['server_queue_ms']} ms, compute {row['server_compute_ms']} ms; "
                        f"model: total {row.get('model_total_ms')} ms, parse {row.get('model_parse_ms')} ms",
                        flush=True,
                    )
            peak = memory.close()
        for row in rows:
            if row["num_items"] == num_items and row["benchmark"] == "serving":
                row["server_peak_rss_mib"] = round(peak / 2**20, 1)
        print(f"[bench]   server peak RSS {peak / 2**20:.0f} MiB (server + python stubs)", flush=True)
    append_results(args.out, [{**row, **common} for row in rows])
    if args.repeats > 1 or args.summary:
        path = args.summary or args.out.parent / f"serving_{common['time'].replace(':', '').replace('-', '')}.md"
        path.write_text(
            f"# Serving, {args.repeats} rounds per level\n\n`{common['command']}`, commit "
            f"{common['git_commit']}, {common['time']}\n\n" + summary_table(rows)
        )
        print(f"summary written to {path}")


def _span(values: list[float], digits: int) -> str:
    """`median (min-max)`, or the value alone when there is one."""
    fmt = f"{{:,.{digits}f}}"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def summary_table(rows: list[dict]) -> str:
    """One markdown row per (catalogue, model, protocol, client, concurrency): medians over the rounds,
    with the min-max of throughput and p99."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get("benchmark") == "serving":
            key = (row["num_items"], row["model"], row["protocol"], row["client"], row["concurrency"])
            groups.setdefault(key, []).append(row)
    lines = [
        "| catalogue | model | protocol | client | c | rounds | req/s | p50 ms | p95 ms | p99 ms | errors | server peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (items, model, protocol, client, concurrency), group in sorted(groups.items()):
        lines.append(
            f"| {items:,} | {model} | {protocol} | {client} | {concurrency} | {len(group)} "
            f"| {_span([g['throughput_rps'] for g in group], 0)} "
            f"| {statistics.median(g['p50_ms'] for g in group):.2f} "
            f"| {statistics.median(g['p95_ms'] for g in group):.2f} "
            f"| {_span([g['p99_ms'] for g in group], 1)} "
            f"| {sum(g['errors'] for g in group)} | {group[0].get('server_peak_rss_mib', float('nan')):,.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
