"""Leaderboard of runs: mean ± std over seeds per (dataset, variant), as markdown, CSV and a plot.

    python -m training.train -m model=transformer,transformer_no_context,mean_pool,popularity,cooccurrence seed=0,1,2
    python -m training.compare artifacts/multiruns/<time>            # every metrics.json below it
    python -m training.compare run_a run_b ... --out artifacts/compare/mine --metric test/ndcg@10

Writes `leaderboard.md`, `leaderboard.csv` and `leaderboard.png` (NDCG@K and Recall@K = HR@K per
variant) into `--out` (default: `<first run folder>/compare`), and `learning_curves-<data>.png` (the
validation metric against epoch and training seconds of every trained run, and with `--recbole
<recbole_<model>.json>` RecBole's runs on the same split). The `p vs best` column is a
paired permutation test over test examples between the data set's best row and each other row
(training.significance; per-example metrics from each run's `ranks.npz`, averaged over seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

SAMPLED = re.compile(r"test_sampled\d+/(hr|ndcg)@10")

COLUMNS = (
    "test/ndcg@10",
    "test/hr@10",
    "test/mrr@10",
    "test/ndcg@20",
    "test/hr@20",
    "test/intent_shift/ndcg@10",
    "test/session_start/ndcg@10",
    "test/cold/hr@10",
    "test/coverage@10",
    "val/ndcg@10",
)


def find_runs(paths: list[Path]) -> list[Path]:
    runs = []
    for path in paths:
        if (path / "metrics.json").is_file():
            runs.append(path)
        elif path.is_dir():
            runs.extend(sorted(p.parent for p in path.rglob("metrics.json")))
        else:
            raise SystemExit(f"error: {path} is neither a run folder (with metrics.json) nor a folder of runs.")
    # A folder inside another run (e.g. <run>/evaluate) is a re-evaluation of that run: count the run once.
    runs = [r for r in runs if not any(other != r and other in r.parents for other in runs)]
    if not runs:
        raise SystemExit(
            f"error: no metrics.json under {', '.join(map(str, paths))}; train first (python -m training.train ...)."
        )
    return runs


STAGES = (("", ""), ("rerank_", "+ranker"), ("hybrid_", "+cooccurrence"))


def split_stages(metrics: dict) -> dict[str, dict]:
    """A run's metrics per stage: the model's own (`test/...`), and when present the re-ranked
    (`rerank_test/...`) and hybrid (`hybrid_test/...`) ones, each with plain `test/...` keys, so that a
    stage becomes its own leaderboard row (`<model>+ranker`, `<model>+cooccurrence`)."""
    staged = tuple(prefix for prefix, _ in STAGES if prefix)
    stages = {"": {key: value for key, value in metrics.items() if not key.startswith(staged)}}
    for prefix, label in STAGES[1:]:
        values = {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}
        if values:
            stages[label] = values
    return stages


STAGE_PREFIX = {label: prefix for prefix, label in STAGES}


def aggregate(runs: list[Path]) -> dict[tuple[str, str], dict]:
    """(data, model) -> {metric: (mean, std, n)}, the seeds seen, and the run folders with the stage prefix
    of their metrics (`runs`, `stage`), for significance tests."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    folders: dict[tuple[str, str], list[Path]] = defaultdict(list)
    curves: dict[tuple[str, str], list[list[dict]]] = defaultdict(list)
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        info = metrics.pop("info", {})
        data, model = info.get("data", "?"), info.get("model", run.name)
        for label, values in split_stages(metrics).items():
            groups[(data, model + label)].append({**values, "_seed": info.get("seed")})
            folders[(data, model + label)].append(run)
        if info.get("learning_curve"):
            curves[(data, model)].append(info["learning_curve"])
    table = {}
    for key, items in groups.items():
        metrics = {}
        for name in sorted({m for item in items for m in item if not m.startswith("_")}):
            values = np.array([item[name] for item in items if name in item], dtype=float)
            metrics[name] = (
                float(values.mean()),
                float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                len(values),
            )
        label = next((label for label in STAGE_PREFIX if label and key[1].endswith(label)), "")
        table[key] = {
            "metrics": metrics,
            "seeds": sorted(str(item["_seed"]) for item in items),
            "runs": folders[key],
            "stage": STAGE_PREFIX[label],
            "curves": curves.get(key, []),
        }
    return table


def significance(table: dict, metric: str, resamples: int = 10_000) -> dict[tuple[str, str], object]:
    """(data, model) -> the paired test of the data set's best row against it (training.significance), or a
    reason it could not be run (str); the best row maps to "best"."""
    from intentrec.training.significance import RanksMissing, compare_variants, parse_metric

    try:
        parse_metric(metric)
    except ValueError as error:
        return {key: str(error) for key in table}
    out: dict[tuple[str, str], object] = {}
    for data in sorted({d for d, _ in table}):
        rows = sorted(
            ((m, v) for (d, m), v in table.items() if d == data and metric in v["metrics"]),
            key=lambda mv: -mv[1]["metrics"][metric][0],
        )
        if not rows:
            continue
        best_model, best = rows[0]
        out[(data, best_model)] = "best"
        for model, value in rows[1:]:
            try:
                out[(data, model)] = compare_variants(
                    best["runs"], value["runs"], metric, stages=(best["stage"], value["stage"]), resamples=resamples
                )
            except (RanksMissing, ValueError) as error:
                out[(data, model)] = str(error)
    return out


def _p_cell(result) -> str:
    from intentrec.training.significance import format_p

    if result is None or isinstance(result, str):
        return "best" if result == "best" else "—"
    return format_p(result.p_permutation, result.floor)


def _cell(stat) -> str:
    if stat is None:
        return "—"
    mean, std, n = stat
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def write_leaderboard(table: dict, out: Path, metric: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tests = significance(table, metric)
    columns = [c for c in COLUMNS if any(c in v["metrics"] for v in table.values())]
    # Sampled-negative figures (evaluate.sampled_negatives), last and named as such: never full ranking.
    columns += sorted(
        {m for v in table.values() for m in v["metrics"] if SAMPLED.fullmatch(m)}, key=lambda m: (m.split("/")[0], m)
    )
    lines = []
    for data in sorted({d for d, _ in table}):
        rows = sorted(
            ((m, v) for (d, m), v in table.items() if d == data),
            key=lambda mv: -mv[1]["metrics"].get(metric, (-math.inf,))[0],
        )
        lines += [
            f"## {data} (sorted by {metric}; mean ± std over seeds)",
            "",
            "| variant | seeds | " + " | ".join(columns) + f" | p vs best ({metric}) |",
            "|---" * (len(columns) + 3) + "|",
        ]
        for model, value in rows:
            cells = " | ".join(_cell(value["metrics"].get(c)) for c in columns)
            lines.append(f"| {model} | {len(value['seeds'])} | {cells} | {_p_cell(tests.get((data, model)))} |")
        lines.append("")
        compared = [(model, tests.get((data, model))) for model, _ in rows[1:]]
        if compared and not isinstance(compared[0][1], str) and compared[0][1] is not None:
            lines += [
                "Paired over test examples, each example's metric averaged over a variant's seeds "
                "(training.significance): " + compared[0][1].line(rows[0][0], compared[0][0], metric) + ".",
                "",
            ]
        missing = [f"{model}: {result}" for model, result in compared if isinstance(result, str)]
        if missing:
            lines += ["No p-value for " + "; ".join(missing) + ".", ""]
    (out / "leaderboard.md").write_text("\n".join(lines))
    with open(out / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        names = sorted({m for v in table.values() for m in v["metrics"]})
        writer.writerow(
            ["data", "variant", "seeds", "p_vs_best"] + [f"{n} {s}" for n in names for s in ("mean", "std")]
        )
        for (data, model), value in sorted(table.items()):
            result = tests.get((data, model))
            p_value = "" if result is None or isinstance(result, str) else f"{result.p_permutation:.6g}"
            row = [data, model, len(value["seeds"]), p_value]
            for n in names:
                mean, std, _ = value["metrics"].get(n, (float("nan"), float("nan"), 0))
                row += [f"{mean:.6f}", f"{std:.6f}"]
            writer.writerow(row)
    _plot(table, out / "leaderboard.png")
    _plot_curves(table, out)


def recbole_curves(paths: list[Path]) -> dict[str, list[tuple[str, list[dict]]]]:
    """data set -> [("RecBole <model>", curve)] from `scripts/recbole_runner.py` result files (the
    `recbole_<model>.json` of a `scripts/bench_recbole.py` run)."""
    curves: dict[str, list] = defaultdict(list)
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
            curve = [
                {"epoch": e["epoch"], "train_seconds": e["train_seconds"], "val/ndcg@10": e["val_ndcg10"]}
                for e in result["epochs"]
                if "val_ndcg10" in e
            ]
            curves[result["dataset"]].append((f"RecBole {result['model']}", curve))
        except (OSError, ValueError, KeyError) as error:
            raise SystemExit(
                f"error: {path} is not a RecBole runner result ({error}); give the recbole_<model>.json of a "
                "scripts/bench_recbole.py run."
            ) from None
    return curves


def _plot_curves(table: dict, out: Path, extra: dict | None = None) -> list[Path]:
    """`learning_curves-<data>.png`: validation metric against epoch and training seconds, every run of
    every trained variant of that data set (training.curves), and `extra` curves (RecBole's) beside them."""
    from intentrec.training.curves import plot_curves

    written = []
    for data in sorted({d for d, _ in table}):
        series = [(model, curve) for (d, model), v in sorted(table.items()) if d == data for curve in v["curves"]]
        series += (extra or {}).get(data, [])
        if series:
            written.append(plot_curves(out / f"learning_curves-{data}.png", f"{data}: learning curves", series))
    return written


def _plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({d for d, _ in table})
    variants = sorted({m for _, m in table})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(variants)}  # one colour per variant everywhere
    figure, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.8 * len(datasets)), squeeze=False)
    for row, data in enumerate(datasets):
        for column, (metric, label) in enumerate((("ndcg", "NDCG@K"), ("hr", "Recall@K (= HR@K)"))):
            axis = axes[row, column]
            for (d, model), value in sorted(table.items()):
                if d != data:
                    continue
                ks = sorted(int(k.split("@")[1]) for k in value["metrics"] if k.startswith(f"test/{metric}@"))
                means = np.array([value["metrics"][f"test/{metric}@{k}"][0] for k in ks])
                stds = np.array([value["metrics"][f"test/{metric}@{k}"][1] for k in ks])
                axis.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=model, color=colors[model])
            axis.set_xscale("log")
            axis.set_xlabel("K")
            axis.set_title(f"{data}: test {label}")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders containing runs (multirun folders)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first path>/compare)")
    parser.add_argument("--metric", default="test/ndcg@10", help="metric that orders the leaderboard")
    parser.add_argument(
        "--recbole",
        nargs="*",
        type=Path,
        default=[],
        help="recbole_<model>.json files of scripts/bench_recbole.py runs: their validation curves join the plots",
    )
    args = parser.parse_args(argv)
    runs = find_runs(args.runs)
    table = aggregate(runs)
    out = args.out or (args.runs[0] / "compare")
    write_leaderboard(table, out, args.metric)
    if args.recbole:
        _plot_curves(table, out, recbole_curves(args.recbole))
    print((out / "leaderboard.md").read_text())
    print(f"{len(runs)} runs -> {out}/leaderboard.md, leaderboard.csv, leaderboard.png", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
