"""What every benchmark records beside its numbers: git commit, machine and library versions."""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def environment(*libraries: str) -> dict:
    """git commit, machine, Python and the given libraries' versions, and the time (UTC)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "git_commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine()},
        "versions": {
            "python": platform.python_version(),
            **{name: _version(name) for name in libraries},
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _version(name: str) -> str:
    module = importlib.import_module(name)
    if hasattr(module, "__version__"):
        return module.__version__
    from importlib.metadata import version

    return version(name)


def append_results(path: Path, rows: list[dict]) -> None:
    """Append one JSON line per result row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(f"results appended to {path}")


def noisy_copies(real, count: int, noise: float, rng):
    """`count` copies of random rows of `real` (N, D) plus Gaussian noise of `noise` x the per-dimension
    std: model-shaped clusters for scale points. Returns (vectors float32, source row of each)."""
    import numpy as np

    base = rng.integers(0, len(real), count)
    vectors = real[base] + rng.normal(0, 1, (count, real.shape[1])).astype(np.float32) * real.std(axis=0) * noise
    return vectors.astype(np.float32), base


def scaled_vectors(real, num_items: int, noise: float, rng):
    """The real rows first, then noisy copies up to `num_items`. Returns (vectors, source row of each)."""
    import numpy as np

    copies, base = noisy_copies(real, max(0, num_items - len(real)), noise, rng)
    vectors = np.concatenate([real.astype(np.float32), copies])[:num_items]
    return np.ascontiguousarray(vectors), np.concatenate([np.arange(len(real)), base])[:num_items]


def round_trips(client, request, calls: int = 200, warmup: int = 20) -> tuple[float, float]:
    """(p50, p99) milliseconds of `calls` sequential `client.recommend(request)` calls after `warmup` calls."""
    for _ in range(warmup):
        client.recommend(request)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        client.recommend(request)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * len(times)) - 1]
