"""What every benchmark records beside its numbers: git commit, machine and library versions."""

from __future__ import annotations

import importlib
import json
import os
import platform
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
