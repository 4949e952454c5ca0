"""Report of a hyper-parameter search (`python -m training.train -m hparams_search=<variant> ...`).

    python -m training.study artifacts/multiruns/<time>          # writes <sweep dir>/study.md

One row per trial, best first: the value the sweeper optimized (the trial's `optimized_metric`, read
from its metrics.json), the searched parameters, the test metrics beside them (reported, never used
to choose) and the training time; below, the best trial's command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def trials(sweep_dir: Path) -> list[dict]:
    """Every finished trial below `sweep_dir`: its overrides, searched parameters and metrics."""
    results = sweep_dir / "optimization_results.yaml"
    searched = set((yaml.safe_load(results.read_text()) or {}).get("best_params", {})) if results.is_file() else set()
    rows = []
    for metrics_path in sorted(sweep_dir.glob("*/metrics.json")):
        run = metrics_path.parent
        overrides_path = run / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.is_file() else []
        given = dict(item.split("=", 1) for item in overrides if "=" in item)
        config_path = run / ".hydra" / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        monitor = (config.get("evaluate") or {}).get("monitor", "ndcg@10")
        objective = config.get("optimized_metric") or f"val/{monitor}"
        metrics = json.loads(metrics_path.read_text())
        rows.append(
            {
                "run": run,
                "trial": int(run.name.split("-", 1)[0]) if run.name.split("-", 1)[0].isdigit() else run.name,
                "objective": objective,
                "value": metrics.get(objective),
                "params": {key: given[key] for key in given if key in searched} if searched else given,
                "overrides": overrides,
                "model": (config.get("model") or {}).get("name"),
                "test": {key: metrics.get(key) for key in ("test/ndcg@10", "test/hr@10")},
                "seconds": (metrics.get("info") or {}).get("seconds"),
            }
        )
    if not rows:
        raise SystemExit(f"error: no trial (*/metrics.json) under {sweep_dir}; run a search first (see --help).")
    return sorted(rows, key=lambda row: -(row["value"] if row["value"] is not None else float("-inf")))


def _number(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}" if abs(number) < 1e-2 or abs(number) >= 1e3 else f"{number:.4f}".rstrip("0").rstrip(".")


def write_study(sweep_dir: Path) -> Path:
    rows = trials(sweep_dir)
    params = sorted({key for row in rows for key in row["params"]})
    objective = rows[0]["objective"]
    lines = [
        f"# Study {sweep_dir.name}: {len(rows)} trials, best first by {objective}",
        "",
        "| trial | " + objective + " | " + " | ".join(params) + " | test/ndcg@10 | test/hr@10 | seconds |",
        "|---" * (len(params) + 5) + "|",
    ]
    for row in rows:
        cells = [str(row["trial"]), _number(row["value"])] + [_number(row["params"].get(key, "")) for key in params]
        cells += [_number(row["test"]["test/ndcg@10"]), _number(row["test"]["test/hr@10"]), _number(row["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    best = rows[0]
    kept = [item for item in best["overrides"] if not item.startswith("hparams_search=")]
    if best["model"] and not any(item.startswith("model=") for item in kept):
        kept.insert(0, f"model={best['model']}")  # the search config chose it
    command = " ".join(kept)
    lines += ["", "Best trial, as one run:", "", "```bash", f"python -m training.train {command}", "```", ""]
    out = sweep_dir / "study.md"
    out.write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder (hydra.sweep.dir) of a hparams_search run")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"error: {args.sweep_dir} is not a folder; give the sweep folder of a hparams_search run.")
    out = write_study(args.sweep_dir)
    print(out.read_text())
    print(f"-> {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
