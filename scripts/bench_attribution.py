"""Benchmark: attribution and the experiment report over many events, on SQLite, Redis and exported Parquet.

    python scripts/bench_attribution.py                       # 10M events, every source
    python scripts/bench_attribution.py --events 1000000 --sources sqlite parquet

Fills a fresh store with `--events` events of simulated visits (the simulator's shape, generated
directly into the store, not through the live server: 1-4 views, a list of 10 impressions in one of
two arms, clicks by position, carts and purchases; about 18 events a visit), then runs `python -m
serving.events attribute` and `report` on it as separate processes and records each one's wall time
and peak resident memory (the child's own ru_maxrss). With `parquet`, the store is exported first and
the same commands read the export. Redis runs as a real redis-server (appendfsync always).
Results: JSON lines in benchmarks/results/attribution.jsonl and a printed table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import REPO, append_results, environment

T0 = 1_790_000_000_000


def visits(count: int, seed: int = 0):
    """Batches of events of simulated visits until `count` events (the last batch cut to the count)."""
    rng = np.random.default_rng(seed)
    batch, made, visit = [], 0, 0
    while made < count:
        shopper = f"b{visit // 2}"
        arm = "a" if hash((seed, shopper)) % 2 == 0 else "b"
        session, clock = f"{shopper}-{visit % 2}", T0 + visit * 60_000
        who = {"session_id": session, "device_id": shopper, "customer_id": shopper}
        rows = []
        for v in range(int(rng.integers(1, 5))):
            rows.append({"event_type": "view", "item_id": f"i{int(rng.integers(0, 50_000))}", "event_time": clock + v})
        rid = f"r{visit}"
        items = [f"i{int(x)}" for x in rng.integers(0, 50_000, 10)]
        for p, item in enumerate(items, start=1):
            rows.append({"event_type": "impression", "item_id": item, "event_time": clock + 10, "recommendation_id": rid,
                         "position": p, "placement": "product", "experiment": "bench", "arm": arm})  # fmt: skip
        cart = []
        for p, item in enumerate(items, start=1):
            if rng.random() < 0.12 / p**0.8:
                rows.append({"event_type": "click", "item_id": item, "event_time": clock + 20 + p,
                             "recommendation_id": rid, "position": p})  # fmt: skip
                if rng.random() < 0.4:
                    rows.append({"event_type": "add_to_cart", "item_id": item, "event_time": clock + 40 + p,
                                 "quantity": 1, "price": 20.0, "recommendation_id": rid})  # fmt: skip
                    cart.append(item)
        if cart and rng.random() < 0.5:
            rows += [{"event_type": "purchase", "item_id": item, "event_time": clock + 90, "quantity": 1, "price": 20.0}
                     for item in cart]  # fmt: skip
        for n, row in enumerate(rows):
            row.update(who, event_id=f"{session}-{n}")
        batch += rows
        made += len(rows)
        visit += 1
        if len(batch) >= 10_000 or made >= count:
            yield batch[: len(batch) - max(0, made - count)]
            batch = []


def fill(store, count: int) -> float:
    started = time.perf_counter()
    for batch in visits(count):
        store.append(batch)
    return time.perf_counter() - started


CHILD = """
import json, resource, sys, time
sys.argv = ["serving.events", *{args!r}]
from intentrec.serving.events.__main__ import main
started = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "seconds": time.perf_counter() - started,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD.format(args=args)], capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"code"')]
    if done.returncode or not lines:
        raise SystemExit(f"{args[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--sources", nargs="+", default=["sqlite", "redis", "parquet"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "attribution.jsonl")
    args = parser.parse_args()
    from intentrec.serving.events.export import export_events
    from intentrec.serving.events.local import RedisServer
    from intentrec.serving.events.store import RedisStore, SQLiteStore

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-attribution-") as tmp:
        tmp = Path(tmp)
        for kind in [s for s in args.sources if s in ("sqlite", "redis")] or ["sqlite"]:
            redis = None
            if kind == "redis":
                redis = RedisServer(tmp / "redis").start()
                store, url = RedisStore(redis.url), redis.url
            else:
                store, url = SQLiteStore(tmp / "events.db"), f"sqlite:///{tmp / 'events.db'}"
            filled = fill(store, args.events)
            print(f"[{kind}] stored {store.count():,} events in {filled:.0f} s", flush=True)
            sources = [(kind, f"store={url}")] if kind in args.sources else []
            if "parquet" in args.sources and kind == "sqlite" or args.sources == ["parquet"]:
                started = time.perf_counter()
                export_events(store, tmp / "export")
                print(f"[parquet] exported in {time.perf_counter() - started:.0f} s", flush=True)
                sources.append(("parquet", f"events={tmp / 'export'}"))
            for source, where in sources:
                for command in ("attribute", "report"):
                    extra = ["experiment=bench"] if command == "report" else []
                    result = measure([command, where, f"out={tmp / command / source}", *extra])
                    row = {"benchmark": "attribution", "command": command, "source": source, "events": args.events,
                           "seconds": round(result["seconds"], 1), "peak_mib": round(result["peak_mib"]),
                           "fill_seconds": round(filled, 1), **environment("pandas", "pyarrow")}  # fmt: skip
                    rows.append(row)
                    print(
                        f"{command:>9} {source:>7}: {row['seconds']:>7.1f} s, peak {row['peak_mib']:,} MiB", flush=True
                    )
            store.close()
            if redis is not None:
                redis.stop()
    append_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
