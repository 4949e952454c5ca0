"""Benchmark: event collector ingest (events/s, latency) and profile reads, SQLite vs Redis, on loopback.

    python scripts/bench_events.py                         # both stores, batch 1 and 100, concurrency 1/4/16
    python scripts/bench_events.py --stores sqlite --batch-sizes 50 --concurrency 8 --max-requests 500

For each store the real collector (`python -m serving.events serve`, one uvicorn process) runs on a
free loopback port over a fresh store (redis-server with appendfsync=always, SQLite in WAL mode with
synchronous=FULL: every acknowledged batch is on disk). An asyncio client (httpx, same machine) sends
`POST /v1/events` batches at each concurrency until `--max-requests` requests or `--max-seconds`,
after `--warmup` requests. Reported: events/s, requests/s and p50/p95/p99 request latency; then
`--profile-reads` reads of what `recommend` does for a request naming a shopper (identity lookup,
recent events, purchases, traits) in process, and `GET /v1/profile/<id>` through the API.
Results: JSON lines in benchmarks/results/events.jsonl and a printed table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment  # noqa: E402


def make_events(prefix: str, count: int, customers: int, start_ms: int) -> list[dict]:
    rng = np.random.default_rng(0)
    kinds = ["view"] * 8 + ["add_to_cart", "purchase"]
    return [
        {
            "event_id": f"{prefix}-{n}",
            "event_time": start_ms + n * 1000,
            "item_id": f"i{int(rng.integers(0, 5000))}",
            "event_type": kinds[int(rng.integers(0, len(kinds)))],
            "device_id": f"d{n % customers}",
            "session_id": f"s{n % customers}-{n // 5000}",
            "customer_id": f"c{n % customers}" if n % 3 == 0 else None,
            "device_type": "mobile",
        }
        for n in range(count)
    ]


async def ingest_level(url: str, batches: list[list[dict]], concurrency: int, max_seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    cursor = 0
    deadline = time.perf_counter() + max_seconds

    async def worker(client):
        nonlocal cursor, errors
        while cursor < len(batches) and time.perf_counter() < deadline:
            batch = batches[cursor]
            cursor += 1
            started = time.perf_counter()
            reply = await client.post("/v1/events", json={"events": batch})
            latencies.append(time.perf_counter() - started)
            if reply.status_code != 200 or reply.json()["accepted"] != len(batch):
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    sent = len(latencies)
    events = sum(len(b) for b in batches[:sent])
    ms = np.asarray(latencies) * 1000
    return {
        "requests": sent,
        "events": events,
        "errors": errors,
        "seconds": seconds,
        "events_per_second": events / seconds,
        "requests_per_second": sent / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def profile_reads(store, customers: int, reads: int) -> dict:
    """What `Recommender.with_profile` reads, per request (median and p99 over `reads` shoppers)."""
    times = []
    for n in range(reads):
        started = time.perf_counter()
        keys = store.identity_keys("device", f"d{n % customers}")
        store.events_of(keys, limit=100)
        store.events_of(keys, limit=80, purchases_only=True)
        if keys.customer:
            store.traits(keys.customer)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99)), "reads": reads}


def api_profile_reads(url: str, customers: int, reads: int) -> dict:
    import httpx

    times = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(reads):
            started = time.perf_counter()
            reply = client.get(f"/v1/profile/device:d{n % customers}")
            times.append((time.perf_counter() - started) * 1000)
            assert reply.status_code == 200, reply.text
    return {"p50_ms": statistics.median(times), "p99_ms": float(np.percentile(times, 99)), "reads": reads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 100])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--max-requests", type=int, default=2000, help="per level")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="per level")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--profile-reads", type=int, default=500)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "events.jsonl")
    args = parser.parse_args()

    from intentrec.serving.events.local import Collector, RedisServer
    from intentrec.serving.events.store import open_store

    rows = []
    start_ms = 1_772_000_000_000
    for kind in args.stores:
        with tempfile.TemporaryDirectory(prefix=f"bench-events-{kind}-") as tmp:
            redis = RedisServer(Path(tmp) / "redis").start() if kind == "redis" else None
            url = redis.url if redis else f"sqlite:///{tmp}/events.db"
            try:
                with Collector(url, log_file=Path(tmp) / "collector.log") as collector:
                    for batch_size in args.batch_sizes:
                        for concurrency in args.concurrency:
                            prefix = f"b{batch_size}c{concurrency}"
                            total = (args.max_requests + args.warmup) * batch_size
                            events = make_events(prefix, total, args.customers, start_ms)
                            batches = [events[i : i + batch_size] for i in range(0, total, batch_size)]
                            asyncio.run(
                                ingest_level(collector.url, batches[: args.warmup], concurrency, args.max_seconds)
                            )
                            result = asyncio.run(
                                ingest_level(collector.url, batches[args.warmup :], concurrency, args.max_seconds)
                            )
                            row = {
                                "benchmark": "events_ingest",
                                "store": kind,
                                "batch_size": batch_size,
                                "concurrency": concurrency,
                                **result,
                            }
                            rows.append(row)
                            print(
                                f"{kind:6} batch {batch_size:>4} c={concurrency:>3}: {result['events_per_second']:>9,.0f} events/s "
                                f"{result['requests_per_second']:>7,.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                                f"p99 {result['p99_ms']:6.2f} ms  errors {result['errors']}",
                                flush=True,
                            )
                    store = open_store(url, readonly=True)
                    stored = store.count()
                    direct = profile_reads(store, args.customers, args.profile_reads)
                    store.close()
                    api = api_profile_reads(collector.url, args.customers, args.profile_reads)
                rows.append(
                    {
                        "benchmark": "profile_read",
                        "store": kind,
                        "path": "in-process",
                        "events_stored": stored,
                        **direct,
                    }
                )
                rows.append(
                    {
                        "benchmark": "profile_read",
                        "store": kind,
                        "path": "GET /v1/profile",
                        "events_stored": stored,
                        **api,
                    }
                )
                print(
                    f"{kind:6} profile read ({stored:,} events stored): in process p50 {direct['p50_ms']:.2f} ms "
                    f"p99 {direct['p99_ms']:.2f} ms; GET /v1/profile p50 {api['p50_ms']:.2f} ms p99 {api['p99_ms']:.2f} ms",
                    flush=True,
                )
            finally:
                if redis is not None:
                    redis.stop()
    common = {"command": " ".join(sys.argv), **environment("numpy")}
    append_results(args.out, [{**row, **common} for row in rows])


if __name__ == "__main__":
    main()
