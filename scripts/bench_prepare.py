"""Benchmark: generate and prepare the synthetic shop, in fresh processes, with peak memory.

    python scripts/bench_prepare.py                               # 1M and 10M events, 3 repeats each
    python scripts/bench_prepare.py --sizes 1000000 --repeats 5

Each repeat runs in a new Python process, so its peak resident memory (ru_maxrss) is its own. The
shop is generated once per size and then re-generated for each timed generation repeat into a fresh
folder; preparation reuses the first shop. Results: JSON lines in benchmarks/results/prepare.jsonl
(command, git commit, machine, versions, every repeat) and a printed table of medians (min-max).
Targets (issue 2): prepare 1M events in < 60 s; generate + prepare 10M with peak memory < 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from intentrec.data.synthetic import ShopConfig, generate
stage, num_events, artifacts = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()
if stage == "generate":
    generate(ShopConfig(num_events=num_events, seed=0), artifacts / "shop")
else:
    from hydra import compose, initialize_config_dir
    from intentrec.data.prepare import run
    with initialize_config_dir(config_dir=sys.argv[4], version_base="1.3"):
        cfg = compose("prepare", [f"data.num_events={num_events}", f"artifacts_dir={artifacts}"])
    run(cfg)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(stage: str, num_events: int, artifacts: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, stage, str(num_events), str(artifacts), str(REPO / "conf")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prepare.jsonl")
    args = parser.parse_args()
    env = environment("numpy", "pandas", "pyarrow")
    command = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        for size in args.sizes:
            for stage in ("generate", "prepare"):
                runs = []
                for repeat in range(args.repeats):
                    # Generation writes into a fresh folder each time; preparation reuses the shop
                    # that data.prepare generated on its first run (not timed: warm-up).
                    artifacts = workdir / f"{size}-gen-{repeat}" if stage == "generate" else workdir / f"{size}-prep"
                    if stage == "prepare" and repeat == 0:
                        child("prepare", size, artifacts)
                    runs.append(child(stage, size, artifacts))
                    if stage == "generate":
                        shutil.rmtree(artifacts, ignore_errors=True)
                seconds = [r["seconds"] for r in runs]
                memory = [r["peak_rss_mib"] for r in runs]
                row = {
                    "benchmark": f"{stage}_synthetic",
                    "num_events": size,
                    "repeats": args.repeats,
                    "seconds_median": statistics.median(seconds),
                    "seconds_min": min(seconds),
                    "seconds_max": max(seconds),
                    "events_per_second": size / statistics.median(seconds),
                    "peak_rss_mib_max": max(memory),
                    "runs": runs,
                    "command": command,
                    **env,
                }
                rows.append(row)
                print(
                    f"{stage:9} {size:>11,} events  {row['seconds_median']:7.2f} s median "
                    f"({row['seconds_min']:.2f}-{row['seconds_max']:.2f})  {row['events_per_second']:>11,.0f} events/s  "
                    f"peak {row['peak_rss_mib_max']:,.0f} MiB",
                    flush=True,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    append_results(args.out, rows)


if __name__ == "__main__":
    main()
