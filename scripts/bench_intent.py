"""Benchmark: what the intent heads cost `recommend`, and the `intent` model alone, through the real Triton server.

    python scripts/bench_intent.py --bundle artifacts/runs/demo/bundle      # a bundle exported with intent heads

The same bundle is served twice, side by side in one run: as exported (the query encoder also answers the
heads, `recommend` carries `info.intent`) and without heads (the same ONNX graph cut to its `query` output,
no `intent.json`: what the model serves without heads). Each round starts a fresh server for each variant in
turn and sends one request at a time over loopback gRPC (`--calls` after `--warmup`), bounded in count; the
heads' variant also answers the `intent` model alone. The in-process recommender's encode stage is timed
alike. Results: JSON lines in benchmarks/results/intent.jsonl and a markdown summary of the medians over
`--repeats` rounds (default benchmarks/results/intent_<UTC time>.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment  # noqa: E402
from bench_serving import requests_pool  # noqa: E402


def without_heads(source: Path, out: Path) -> Path:
    """A copy of bundle `source` whose query encoder answers the query alone (no intent outputs, no intent.json)."""
    import onnx
    from onnx.utils import Extractor

    from intentrec.serving.bundle import load_bundle, write_manifest

    bundle = load_bundle(source)
    if not bundle.manifest.get("intent"):
        raise SystemExit(
            f"error: {source} has no intent heads; export a checkpoint trained with intent.heads=second_stage"
        )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and file.name not in ("intent.json", "manifest.json"):
            shutil.copy2(file, out / file.name)
    graph = onnx.load(str(source / "query_encoder.onnx"))
    inputs = [i.name for i in graph.graph.input if i.name not in {x.name for x in graph.graph.initializer}]
    onnx.save(Extractor(graph).extract_model(inputs, ["query"]), str(out / "query_encoder.onnx"))
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "bundle_format")}
    write_manifest(out, {**manifest, "intent": None})
    return out


def timed(call, pool, calls: int, warmup: int) -> dict:
    for i in range(warmup):
        call(pool[i % len(pool)])
    times = []
    for i in range(calls):
        started = time.perf_counter()
        call(pool[i % len(pool)])
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"requests": calls, "p50_ms": statistics.median(times), "p99_ms": times[max(0, int(0.99 * calls) - 1)]}


def inprocess(bundle: Path, pool, calls: int, warmup: int) -> dict:
    from intentrec.serving.recommender import Recommender

    recommender = Recommender(bundle, threads=1, verify=False)
    encode = []

    def call(query):
        recommender.recommend([query])
        encode.append(recommender.timing["encode"])

    row = timed(call, pool, calls, warmup)
    return {**row, "encode_p50_ms": statistics.median(encode[warmup:])}


def cell(rows: list[dict], key: str, digits: int = 3) -> str:
    """The median of `key` over `rows`, with its min-max in brackets."""
    values = [r[key] for r in rows]
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--calls", type=int, default=1000, help="timed requests per level")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each starts a server per variant")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench_intent")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "intent.jsonl")
    parser.add_argument("--summary", type=Path, default=None)
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(
            f"error: no bundle at {args.bundle}; run ./scripts/demo.sh (or python -m serving.export) first."
        )

    from intentrec.serving.client import Client
    from intentrec.serving.repository import ServingOptions, build
    from intentrec.serving.server import TritonServer

    common = {"command": " ".join(sys.argv), **environment("numpy", "onnxruntime", "tritonclient")}
    variants = {"heads": args.bundle, "no_heads": without_heads(args.bundle, args.work / "bundle_no_heads")}
    pool, _ = requests_pool(args.bundle, 500, 1)
    rows = []
    for round_ in range(args.repeats):
        for variant, bundle in variants.items():
            row = inprocess(bundle, pool, args.calls, args.warmup)
            rows.append({**common, "benchmark": "intent", "variant": variant, "model": "recommend (in process)",
                         "round": round_, **row})  # fmt: skip
            repository = build(bundle, args.work / f"repository_{variant}", ServingOptions(instances=1))
            with TritonServer(repository, None, None, None, log_file=args.work / f"server_{variant}.log") as server:
                with Client(server.grpc_url) as client:
                    measured = {"recommend": timed(client.recommend, pool, args.calls, args.warmup)}
                    if variant == "heads":
                        measured["intent"] = timed(client.intent, pool, args.calls, args.warmup)
            for model, values in measured.items():
                rows.append({**common, "benchmark": "intent", "variant": variant, "model": model, "round": round_,
                             **values})  # fmt: skip
            for r in rows[-1 - len(measured) :]:
                extra = f"  encode p50 {r['encode_p50_ms']:.3f}" if "encode_p50_ms" in r else ""
                print(f"round {round_} {variant:9} {r['model']:24} p50 {r['p50_ms']:6.3f}  p99 {r['p99_ms']:6.3f} ms{extra}",
                      flush=True)  # fmt: skip
    append_results(args.out, rows)
    lines = [
        f"# Intent heads: recommend latency with and without them ({common['time']}, commit {common['git_commit']})",
        "",
        f"`{common['command']}`; {args.calls} sequential requests per level after {args.warmup}, loopback gRPC, "
        f"1 instance; medians over {args.repeats} rounds (min-max of the rounds in brackets).",
        "",
        "| model | variant | p50 ms | p99 ms | encode stage p50 ms |",
        "|---|---|---|---|---|",
    ]
    for model in ("recommend (in process)", "recommend", "intent"):
        for variant in variants:
            picked = [r for r in rows if r["model"] == model and r["variant"] == variant]
            if not picked:
                continue

            encode = cell(picked, "encode_p50_ms") if "encode_p50_ms" in picked[0] else "-"
            lines.append(f"| {model} | {variant} | {cell(picked, 'p50_ms')} | {cell(picked, 'p99_ms')} | {encode} |")
    summary = (
        args.summary or REPO / "benchmarks" / "results" / f"intent_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md"
    )
    summary.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"summary written to {summary}")
    print(json.dumps({"rows": len(rows)}))


if __name__ == "__main__":
    main()
