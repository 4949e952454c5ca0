"""Benchmark: the web API's recommend (JSON over HTTP, serving.web) against the gRPC client, on one Triton server.

    python scripts/bench_web.py --bundle artifacts/runs/demo/bundle

One Triton server and one web API process (loopback, no token) serve the same bundle; each round sends the same
pool of requests (3-12 events of random catalogue items, k=20: bench_serving.requests_pool) one at a time, first through the gRPC client
(`serving.client.Client`), then as JSON to `POST /v1/recommend` over a kept-alive HTTP connection (httpx), bounded
in count (`--calls` after `--warmup`). Both paths reach the same `recommend` model; the difference is the web
API's cost (JSON, HTTP, the facade's own gRPC call). Results: JSON lines in benchmarks/results/web.jsonl and a
markdown summary of the medians over `--repeats` rounds (default benchmarks/results/web_<UTC time>.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment  # noqa: E402
from bench_intent import cell, timed  # noqa: E402
from bench_serving import requests_pool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--calls", type=int, default=1000, help="timed requests per path and round")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench_web")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "web.jsonl")
    parser.add_argument("--summary", type=Path, default=None)
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(
            f"error: no bundle at {args.bundle}; run ./scripts/demo.sh (or python -m serving.export) first."
        )

    import httpx

    from intentrec.serving.client import Client
    from intentrec.serving.events.local import WebApi
    from intentrec.serving.repository import ServingOptions, build
    from intentrec.serving.server import TritonServer

    common = {"command": " ".join(sys.argv), **environment("numpy", "onnxruntime", "tritonclient", "fastapi")}
    pool, _ = requests_pool(args.bundle, 500, 1)
    bodies = [{k: v for k, v in dataclasses.asdict(q).items() if v is not None} for q in pool]
    args.work.mkdir(parents=True, exist_ok=True)
    repository = build(args.bundle, args.work / "repository", ServingOptions(instances=1))
    rows = []
    with (
        TritonServer(repository, None, None, None, log_file=args.work / "server.log") as server,
        WebApi(server.grpc_url, log_file=args.work / "web.log") as web,
        Client(server.grpc_url) as client,
        httpx.Client(base_url=web.url, timeout=30) as http,
    ):

        def over_http(body: dict) -> None:
            reply = http.post("/v1/recommend", json=body)
            if reply.status_code != 200:
                raise SystemExit(f"error: the web API answered {reply.status_code}: {reply.text[:300]}")

        for round_ in range(args.repeats):
            for path, call, requests in (
                ("grpc client", client.recommend, pool),
                ("web API (HTTP JSON)", over_http, bodies),
            ):
                row = {
                    **common,
                    "benchmark": "web",
                    "path": path,
                    "round": round_,
                    **timed(call, requests, args.calls, args.warmup),
                }
                rows.append(row)
                print(f"round {round_} {path:20} p50 {row['p50_ms']:6.3f}  p99 {row['p99_ms']:6.3f} ms", flush=True)
    append_results(args.out, rows)
    lines = [
        f"# Web API against the gRPC client ({common['time']}, commit {common['git_commit']})",
        "",
        f"`{common['command']}`; {args.calls} sequential recommend requests per path after {args.warmup}, loopback, "
        f"one Triton instance; medians over {args.repeats} rounds (min-max of the rounds in brackets).",
        "",
        "| path | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for path in ("grpc client", "web API (HTTP JSON)"):
        picked = [r for r in rows if r["path"] == path]
        lines.append(f"| {path} | {cell(picked, 'p50_ms')} | {cell(picked, 'p99_ms')} |")
    summary = (
        args.summary or REPO / "benchmarks" / "results" / f"web_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md"
    )
    summary.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"rows": len(rows), "summary": str(summary)}))


if __name__ == "__main__":
    main()
