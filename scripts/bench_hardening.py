"""Benchmark: a good request's latency while another client floods `recommend` with 64 x 10k-event
requests, with the events-per-row cap on and off; and `recommend` at 1M items with and without the
request limits and error handling (this code against an earlier commit), side by side in one run.

    python scripts/bench_hardening.py --bundle artifacts/runs/demo/bundle --before <commit>
    python scripts/bench_hardening.py --parts flood --seconds 10 --rounds 3      # no earlier code

Part `flood` (the bundle's own catalogue), servers side by side on loopback, one instance each:
  - `cap on`: this code, `max_events=1000` (the default of conf/serving.yaml)
  - `cap off`: this code, `max_events=20000`, so the flood's 10,000 events per row are decoded
  - `before`: the code at `--before` (a git worktree; skipped without it)
  Each level sends sequential good requests (`--seconds` at most, `--requests` at most) alone, then
  while a second process sends 64-row x 10,000-event requests back to back. Recorded: the good
  requests' p50/p99, the model's own time for them (`server_ms.total`, 1 reply in 10), the flood's
  requests and how they ended (answered, refused), errors.
Part `scale` (`--items` items, IVF index as bench_serving builds it, reused while the source bundle is
the same): sequential good requests on this code and on `--before`, alternated level by level.
Part `limits`: in process, the microseconds `check_limits` adds to each request of the pool.
Levels run in `--rounds` rounds over all servers (a drift of the machine hits all alike); the summary
reports medians over the rounds with their min-max. Results: JSON lines in
benchmarks/results/hardening.jsonl and a markdown summary beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment  # noqa: E402

FLOOD_ROWS, FLOOD_EVENTS = 64, 10_000
INTEGER_INPUTS = ("k", "hour", "day_of_week")  # INT32 in repositories built before the hardening


def payload(arrays: dict[str, np.ndarray], int32: bool) -> bytes:
    from intentrec.serving.client import infer_request_bytes

    if int32:
        arrays = {k: v.astype(np.int32) if k in INTEGER_INPUTS else v for k, v in arrays.items()}
    return infer_request_bytes("recommend", arrays)


def raw_call(url: str):
    import grpc

    from intentrec.serving.client import GRPC_INFER, GRPC_OPTIONS

    channel = grpc.insecure_channel(url, options=GRPC_OPTIONS)
    return channel, channel.unary_unary(GRPC_INFER, request_serializer=None, response_deserializer=None)


def flood(url: str, item_id: str, int32: bool, stop, results) -> None:
    """Child process: 64 x 10k-event requests back to back until `stop`; puts its tally on `results`."""
    import grpc

    arrays = {
        "item_ids": np.full((FLOOD_ROWS, FLOOD_EVENTS), item_id.encode(), dtype=object),
        "k": np.full((FLOOD_ROWS, 1), 20, np.int64),
    }
    body = payload(arrays, int32)
    channel, call = raw_call(url)
    tally = {"answered": 0, "refused": 0, "other_errors": 0, "latencies_ms": [], "payload_bytes": len(body)}
    while not stop.is_set():
        started = time.perf_counter()
        try:
            call(body, timeout=120)
            tally["answered"] += 1
        except grpc.RpcError as error:
            kind = "refused" if error.code() == grpc.StatusCode.INVALID_ARGUMENT else "other_errors"
            tally[kind] += 1
        tally["latencies_ms"].append((time.perf_counter() - started) * 1000)
    channel.close()
    results.put(tally)


def victim(url: str, bodies: list[bytes], max_requests: int, max_seconds: float, warmup: int) -> dict:
    """Sequential good requests: their latencies and errors."""
    from intentrec.serving.client import GrpcReply

    channel, call = raw_call(url)
    for i in range(warmup):
        call(bodies[i % len(bodies)], timeout=60)
    latencies, errors, model_ms = [], [], []
    deadline = time.perf_counter() + max_seconds
    i = 0
    while i < max_requests and time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            reply = call(bodies[i % len(bodies)], timeout=60)
            latencies.append((time.perf_counter() - started) * 1000)
            if i % 10 == 0:  # a sample of replies: outputs present, and the model's own time (server_ms)
                parsed = GrpcReply(reply)
                if parsed.as_numpy("item_ids") is None:
                    errors.append("reply without item_ids")
                else:
                    model_ms.append(json.loads(parsed.as_numpy("info")[0, 0])["server_ms"]["total"])
        except Exception as error:  # noqa: BLE001 - every failure is counted
            errors.append(repr(error)[:200])
        i += 1
    channel.close()
    ordered = sorted(latencies)
    from bench_serving import percentile

    return {
        "requests": len(ordered),
        "errors": len(errors),
        "error_examples": errors[:3],
        "p50_ms": statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": percentile(ordered, 99),
        "model_total_ms": statistics.median(model_ms) if model_ms else float("nan"),
    }


def level(server: dict, bodies: dict, args, flooded: bool, item_id: str) -> dict:
    context = multiprocessing.get_context("spawn")
    stop, results, child = context.Event(), context.Queue(), None
    if flooded:
        child = context.Process(target=flood, args=(server["url"], item_id, server["int32"], stop, results))
        child.start()
        time.sleep(args.flood_lead)  # the flood is under way before the first good request
    row = victim(server["url"], bodies[server["int32"]], args.requests, args.seconds, args.warmup)
    if child is not None:
        stop.set()
        tally = results.get(timeout=300)
        child.join(timeout=60)
        lat = sorted(tally.pop("latencies_ms"))
        row.update(
            {f"flood_{k}": v for k, v in tally.items()},
            flood_p50_ms=statistics.median(lat) if lat else float("nan"),
        )
    return row


class BeforeServer:
    """tritonserver run by the code of an earlier commit (a git worktree) on a repository it builds."""

    def __init__(self, worktree: Path, bundle: Path, repository: Path, log: Path):
        from intentrec.serving.server import free_port

        self.worktree, self.bundle, self.repository, self.log = worktree, bundle, repository, log
        self.ports = [free_port() for _ in range(3)]
        self.process = None

    def _run(self, *args) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(self.worktree)}
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=self.worktree,
            env=env,
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def __enter__(self) -> dict:
        built = self._run("serving.repository", "build", "--bundle", str(self.bundle), "--out", str(self.repository))
        if built.wait(timeout=600) != 0:
            raise SystemExit(f"error: the --before code could not build its repository; see {self.log}")
        http, grpc_port, metrics = self.ports
        self.process = self._run(
            "serving.server",
            "--repository",
            str(self.repository),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics),
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"error: the --before server exited; see {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return {"url": f"127.0.0.1:{grpc_port}", "int32": True, "pid": self.process.pid}
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"error: the --before server was not ready in 600 s; see {self.log}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)


def worktree_of(rev: str, work: Path) -> Path:
    path = work / f"before-{rev}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True)
    return path


def limits_cost(bundle_dir: Path, passes: int = 20) -> dict:
    """In process: microseconds `check_limits` adds to one request of the pool (median over passes)."""
    from bench_serving import requests_pool

    from intentrec.serving.request import RequestLimits, check_limits

    pool, _ = requests_pool(bundle_dir, 500, 1)
    limits, per_request = RequestLimits(), []
    for _ in range(passes):
        started = time.perf_counter()
        for query in pool:
            check_limits(query, limits)
        per_request.append((time.perf_counter() - started) / len(pool) * 1e6)
    return {"check_limits_us": statistics.median(per_request), "requests": len(pool), "passes": passes}


def summary_table(rows: list[dict]) -> list[str]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if "part" not in row:
            continue
        groups.setdefault((row["part"], row["num_items"], row["code"], row["flood"]), []).append(row)
    lines = [
        "| part | items | code | flood | good p50 ms (min-max) | good p99 ms (min-max) | model's own ms, p50 | good requests | flood requests: refused / answered | flood p50 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (part, items, code, flooded), group in groups.items():

        def spread(key, group=group):
            values = [g[key] for g in group]
            return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

        floods = (
            f"{sum(g['flood_refused'] for g in group)} / {sum(g['flood_answered'] for g in group)}" if flooded else "-"
        )
        flood_p50 = f"{statistics.median(g['flood_p50_ms'] for g in group):.0f}" if flooded else "-"
        errors = sum(g["errors"] + g.get("flood_other_errors", 0) for g in group)
        lines.append(
            f"| {part} | {items:,} | {code} | {'64 x 10k' if flooded else 'none'} | {spread('p50_ms')} | "
            f"{spread('p99_ms')} | {statistics.median(g['model_total_ms'] for g in group):.3f} | "
            f"{sum(g['requests'] for g in group)} | {floods} | {flood_p50} | {errors} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--before", default=None, help="git commit of the code to compare with (a worktree)")
    parser.add_argument(
        "--parts", nargs="+", default=["flood", "scale", "limits"], choices=["flood", "scale", "limits"]
    )
    parser.add_argument("--items", type=int, default=1_000_000, help="catalogue of part scale")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per level, at most")
    parser.add_argument("--requests", type=int, default=2000, help="good requests per level, at most")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--flood-lead", type=float, default=2.0, help="seconds the flood runs before measuring")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench_hardening")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hardening.jsonl")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        raise SystemExit(f"error: --rounds {args.rounds} --seconds {args.seconds}: expected at least 1 and > 0.")
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"error: no bundle at {args.bundle}; run ./scripts/demo.sh (or python -m serving.export).")
    if "scale" in args.parts and not args.before:
        raise SystemExit("error: part scale compares with earlier code: give --before <commit> (or --parts flood).")

    from contextlib import ExitStack

    from bench_serving import requests_pool, scaled_bundle

    from intentrec.serving.client import recommend_arrays
    from intentrec.serving.repository import ServingOptions, build
    from intentrec.serving.server import TritonServer

    common = {"command": " ".join(sys.argv), **environment("numpy", "faiss", "onnxruntime", "tritonclient")}
    args.work.mkdir(parents=True, exist_ok=True)
    worktree = worktree_of(args.before, args.work) if args.before else None
    rows = []
    plans = []
    if "flood" in args.parts:
        plans.append(("flood", args.bundle, None))
    if "scale" in args.parts:
        plans.append(("scale", args.work / f"bundle_{args.items}", args.items))
    if "limits" in args.parts:
        rows.append({**limits_cost(args.bundle), "benchmark": "hardening_limits", **common})
        print(f"[limits] check_limits per request: median {rows[-1]['check_limits_us']:.1f} us", flush=True)
    for part, bundle_dir, num_items in plans:
        if num_items is not None:
            source = hashlib.sha256((args.bundle / "manifest.json").read_bytes()).hexdigest()
            stamp = bundle_dir / "scaled_from.txt"
            if stamp.is_file() and stamp.read_text() == f"{source} {num_items}":
                print(f"[bench] {num_items:,} items: reusing {bundle_dir} (same source bundle)", flush=True)
            else:
                print(f"[bench] {num_items:,} items: building the bundle and index ...", flush=True)
                scaled_bundle(args.bundle, bundle_dir, num_items, 0.3, "IVF{nlist},Flat", 32, 100_000, 0)
                stamp.write_text(f"{source} {num_items}")
        pool, ids = requests_pool(bundle_dir, 500, 1)
        arrays = [recommend_arrays([q]) for q in pool]
        bodies = {False: [payload(a, False) for a in arrays], True: [payload(a, True) for a in arrays]}
        with ExitStack() as stack:
            servers = {}
            variants = [("cap on", 1000), ("cap off", 20_000)] if part == "flood" else [("this code", 1000)]
            for name, cap in variants:
                repository = build(bundle_dir, args.work / f"repository_{part}_{cap}", ServingOptions(max_events=cap))
                server = stack.enter_context(
                    TritonServer(repository, None, None, None, log_file=args.work / f"server_{part}_{cap}.log")
                )
                servers[name] = {"url": server.grpc_url, "int32": False, "pid": server.process.pid}
            if worktree is not None:
                servers["before"] = stack.enter_context(
                    BeforeServer(
                        worktree, bundle_dir, args.work / f"repository_{part}_before", args.work / f"before_{part}.log"
                    )
                )
            floods = [False, True] if part == "flood" else [False]
            for round_number in range(args.rounds):
                for flooded in floods:
                    for code, server in servers.items():
                        row = level(server, bodies, args, flooded, str(ids[0]))
                        row.update(
                            benchmark="hardening",
                            part=part,
                            num_items=len(ids),
                            code=code if code != "before" else f"before ({args.before})",
                            flood=flooded,
                            round=round_number,
                            **common,
                        )
                        rows.append(row)
                        extra = (
                            f"  flood: {row['flood_refused']} refused, {row['flood_answered']} answered, "
                            f"p50 {row['flood_p50_ms']:.0f} ms"
                            if flooded
                            else ""
                        )
                        print(
                            f"[{part} r{round_number}] {row['code']:<22} flood={'yes' if flooded else 'no ':<3} "
                            f"good p50 {row['p50_ms']:7.2f} p99 {row['p99_ms']:8.2f} ms ({row['requests']} req, "
                            f"{row['errors']} errors){extra}",
                            flush=True,
                        )
    append_results(args.out, rows)
    summary = args.out.parent / f"hardening_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md"
    lines = [
        f"# bench_hardening: {common['time']}, commit {common['git_commit']}",
        "",
        f"`{common['command']}`",
        "",
        *summary_table(rows),
        "",
        *[
            f"check_limits in process: {row['check_limits_us']:.1f} us per request (median of {row['passes']} passes "
            f"over {row['requests']} requests)"
            for row in rows
            if "check_limits_us" in row
        ],
    ]
    summary.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"summary written to {summary}")


if __name__ == "__main__":
    main()
