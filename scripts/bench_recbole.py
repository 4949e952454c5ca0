"""Benchmark: intentrec against RecBole (SASRec, GRU4Rec) on identical splits, quality and training speed in one run.

    python scripts/bench_recbole.py                                    # diginetica and yoochoose, both libraries
    python scripts/bench_recbole.py --datasets amazon_video_games --exclude-seen --recbole-models SASRec \
        --epochs 12 --patience 4 --intentrec-models gru@loss.exclude_seen=true,hybrid.enabled=true
    python scripts/bench_recbole.py --intentrec-models transformer transformer@data.bucket_by_length=true
    python scripts/bench_recbole.py --datasets yoochoose --recbole-models --intentrec-models gru   # intentrec's side only

RecBole 1.2.1 is a benchmark-only dependency: it is installed in its own venv (`--venv`, default
artifacts/recbole/venv) by this script, never in the project's (it needs numpy<2, pandas<2 (pandas 3
breaks its token remapping), setuptools<81 and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 with torch 2.13). For each dataset:

1. intentrec's prepared split (`<artifacts>/data/<name>/`) is exported as RecBole atomic files, one
   row per target: `session_id item_id_list item_id` (history truncated to `--max-len`). RecBole
   reads them with `benchmark_filename` (no re-splitting, augmentation or filtering), so both
   libraries train on the same targets and are evaluated on the same validation and test targets.
2. RecBole trains each model (`scripts/recbole_runner.py`, in the RecBole venv) and intentrec trains
   each variant (`python -m training.train`, ranker off), one after the other on this machine, with the
   same budget: hidden 64, 2 layers, max length 50, full softmax CE, batch 128, `--epochs` at most,
   early stopping after `--patience` validations without gain on NDCG@10. RecBole runs at its
   default lr 1e-3, intentrec at its defaults (lr 3e-3, length-bucketed batches) unless a variant
   overrides them (`transformer@optim.lr=0.001`).
3. Both rank the full catalogue, without masking the history unless `--exclude-seen` (then both
   mask it: intentrec's `evaluate.exclude_seen=true`, RecBole's scores of the history set to -inf). Reported: HR@10, NDCG@10, MRR@10,
   HR@20, NDCG@20 on test (best validation checkpoint), training targets per second, seconds per
   epoch and training seconds to reach RecBole SASRec's best validation NDCG@10 (the first RecBole
   model's when SASRec did not run, e.g. `--recbole-models GRU4Rec`), with ratios.

Results: JSON lines in benchmarks/results/recbole.jsonl (`--out`), a markdown table per run beside
it, recbole_<time>.md (and printed). `--intentrec-overrides` apply to the split's preparation as well
as to training, so RecBole always gets the split intentrec trains and tests on; a variant's own
overrides (after `@`) reach training only and must not change the split.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment  # noqa: E402

RECBOLE_REQUIREMENTS = ["recbole==1.2.1", "torch==2.13.0", "numpy<2", "pandas<2", "setuptools<81", "scipy<1.16"]
METRICS = ["hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20"]
RECBOLE_NAMES = {"hr@10": "hit@10", "ndcg@10": "ndcg@10", "mrr@10": "mrr@10", "hr@20": "hit@20", "ndcg@20": "ndcg@20"}


def ensure_venv(venv: Path) -> Path:
    """The RecBole venv's python, created and installed on first use (and repaired when a pin is off)."""
    python = venv / "bin" / "python"
    check = "import recbole, pandas, numpy; assert recbole.__version__ == '1.2.1'; assert pandas.__version__ < '2'"
    if python.is_file() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    print(f"[recbole] installing {' '.join(RECBOLE_REQUIREMENTS)} into {venv} (benchmark only)", flush=True)
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *RECBOLE_REQUIREMENTS], check=True)
    return python


def export_split(data_dir: Path, out_dir: Path, name: str, max_len: int, seen: bool = False) -> dict:
    """intentrec's prepared split -> RecBole atomic files (one row per target). Returns target counts.

    With `seen`, each row also carries `seen_list`: every item of the row before the target, not only the
    last `max_len`, which is what intentrec's `evaluate.exclude_seen` masks; the runner masks the same."""
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, recbole_split in (("train", "train"), ("val", "valid"), ("test", "test")):
        table = pq.read_table(data_dir / f"{split}.parquet", columns=["seq_idx", "item_ids", "target_mask"])
        lines = ["session_id:token\titem_id_list:token_seq\titem_id:token" + ("\tseen_list:token_seq" if seen else "")]
        for seq, items, mask in zip(
            table.column("seq_idx").to_pylist(),
            table.column("item_ids").to_pylist(),
            table.column("target_mask").to_pylist(),
        ):
            for position in np.flatnonzero(mask):
                history = items[max(0, position - max_len) : position]
                if not history:
                    continue  # a target without history has no query; intentrec never marks one
                line = f"{seq}\t{' '.join(map(str, history))}\t{items[position]}"
                if seen:
                    line += "\t" + " ".join(map(str, items[:position]))
                lines.append(line)
        (out_dir / f"{name}.{recbole_split}.inter").write_text("\n".join(lines) + "\n")
        counts[split] = len(lines) - 1
    return counts


def run_recbole(python: Path, export_dir: Path, name: str, model: str, args, out: Path) -> dict:
    command = [
        str(python),
        str(REPO / "scripts" / "recbole_runner.py"),
        "--data-dir",
        str(export_dir.parent),
        "--dataset",
        name,
        "--model",
        model,
        "--epochs",
        str(args.epochs),
        "--stopping-step",
        str(args.patience),
        "--seed",
        str(args.seed),
        "--max-len",
        str(args.max_len),
        "--out",
        str(out),
        *(["--exclude-seen"] if args.exclude_seen else []),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    print(f"[recbole] {name} {model}", flush=True)
    subprocess.run(command, check=True, env={**env, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, cwd=out.parent)
    result = json.loads(out.read_text())
    best = max(result["epochs"], key=lambda e: e.get("val_ndcg10", -1))
    return {
        "library": "recbole",
        "variant": model,
        "test": {m: result["test"][RECBOLE_NAMES[m]] for m in METRICS},
        "val_ndcg@10": result["best_valid"]["ndcg@10"],
        "train_targets_per_second": result["train_targets_per_second"],
        "seconds_per_epoch": float(np.median([e["seconds"] for e in result["epochs"]])),
        "epochs": len(result["epochs"]),
        "train_seconds": result["train_seconds"],
        "curve": [(e["train_seconds"], e["val_ndcg10"]) for e in result["epochs"] if "val_ndcg10" in e],
        "best_epoch_train_seconds": best.get("train_seconds"),
        "train_targets_per_epoch": result["train_targets_per_epoch"],
        "num_items": result["num_items"],
        "test_targets": result["test_targets"],
        "versions": {"recbole": result["recbole_version"], "torch": result["torch_version"]},
    }


def run_intentrec(name: str, variant: str, args, run_dir: Path) -> list[dict]:
    """`variant` is a model config, optionally with its own overrides: `transformer@data.bucket_by_length=true,...`.
    One row, and a second for the hybrid with co-occurrence when the variant enables it (`hybrid.enabled=true`)."""
    model, _, extra = variant.partition("@")
    command = [
        sys.executable,
        "-m",
        "training.train",
        f"data={name}",
        f"model={model}",
        f"seed={args.seed}",
        f"trainer.max_epochs={args.epochs}",
        f"evaluate.early_stopping_patience={args.patience}",
        f"data.max_seq_len={args.max_len}",
        "ranker.enabled=false",
        "trainer.enable_progress_bar=false",
        f"run_dir={run_dir}",
        f"evaluate.exclude_seen={str(args.exclude_seen).lower()}",
        *args.intentrec_overrides,
        *[o for o in extra.split(",") if o],
    ]
    print(f"[intentrec] {name} {variant}", flush=True)
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    info = metrics["info"]
    curve = [(p["train_seconds"], p["val/ndcg@10"]) for p in info["learning_curve"]]
    epochs = len(curve)
    row = {
        "library": "intentrec",
        "variant": variant,
        "test": {m: metrics[f"test/{m}"] for m in METRICS},
        "val_ndcg@10": metrics["val/ndcg@10"],
        "train_targets_per_second": info["train_targets_per_second"],
        "seconds_per_epoch": float(np.median(np.diff([0.0, *[c[0] for c in curve]]))) if curve else None,
        "epochs": epochs,
        "train_seconds": info["train_seconds"],
        "curve": curve,
        "num_items": info["num_items"],
        "test_targets": metrics["test/count"],
    }
    rows = [row]
    if "hybrid_test/ndcg@10" in metrics:  # the same training, scored with co-occurrence (training.hybrid)
        weight = info["hybrid"]["weight"]
        rows.append(
            {
                **row,
                "variant": f"{variant} + co-occurrence (hybrid, weight {weight:g})",
                "test": {m: metrics[f"hybrid_test/{m}"] for m in METRICS},
                "val_ndcg@10": metrics["hybrid_val/ndcg@10"],
            }
        )
    return rows


def plot_learning_curves(path: Path, name: str, rows: list[dict]) -> Path | None:
    """Every row's validation curve in one figure (training.curves), both libraries side by side."""
    from intentrec.training.curves import plot_curves

    series = [
        (
            f"{r['library']} {r['variant']}",
            [{"epoch": i, "train_seconds": t, "val/ndcg@10": v} for i, (t, v) in enumerate(r["curve"])],
        )
        for r in rows
        if r.get("curve") and " + co-occurrence" not in r["variant"]  # the hybrid row repeats its model's curve
    ]
    return plot_curves(path, f"{name}: intentrec and RecBole", series) if series else None


def seconds_to_reach(curve: list, target: float) -> float | None:
    for seconds, value in curve:
        if value >= target:
            return seconds
    return None


def pick_reference(rows: list[dict]) -> dict | None:
    """The row the others are compared with: RecBole's SASRec if it ran, else the first RecBole model."""
    recbole = [r for r in rows if r["library"] == "recbole"]
    return next((r for r in recbole if r["variant"] == "SASRec"), recbole[0] if recbole else None)


def table(name: str, rows: list[dict], reference: dict | None) -> str:
    # With no RecBole model in the run the column is all "n/a"; its header then names no model.
    ref_name = f"RecBole {reference['variant']}" if reference is not None else "RecBole"
    lines = [
        f"### {name}",
        "",
        "| library | variant | HR@10 | NDCG@10 | MRR@10 | HR@20 | NDCG@20 | val NDCG@10 | targets/s | s/epoch | epochs "
        f"| s to {ref_name}'s best val |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reach = r.get("seconds_to_reference")
        # "-": the reference's best was not reached; "n/a": no RecBole model in this run to reach.
        reached = "n/a" if reference is None else "-" if reach is None else f"{reach:.1f}"
        lines.append(
            f"| {r['library']} | {r['variant']} | "
            + " | ".join(f"{r['test'][m]:.4f}" for m in METRICS)
            + f" | {r['val_ndcg@10']:.4f} | {r['train_targets_per_second']:,.0f} | {r['seconds_per_epoch']:.1f} | "
            f"{r['epochs']} | {reached} |"
        )
    if reference is not None:
        lines += ["", f"Ratios against {ref_name} (same data, split, machine and run):", ""]
        for r in rows:
            if r is reference:
                continue
            speed = r["train_targets_per_second"] / reference["train_targets_per_second"]
            quality = r["test"]["ndcg@10"] / reference["test"]["ndcg@10"] if reference["test"]["ndcg@10"] else None
            reach = r.get("seconds_to_reference")
            time_ratio = reference["best_epoch_train_seconds"] / reach if reach else None
            lines.append(
                f"- {r['library']} {r['variant']}: {speed:.1f}x the training targets/s, "
                f"{'-' if quality is None else f'{quality:.3f}x'} the test NDCG@10, "
                + (
                    f"{time_ratio:.1f}x faster to {ref_name}'s best validation NDCG@10"
                    if time_ratio
                    else f"did not reach {ref_name}'s best validation NDCG@10"
                )
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["diginetica", "yoochoose"])
    parser.add_argument(
        "--recbole-models",
        nargs="*",
        default=["SASRec", "GRU4Rec"],
        help="RecBole models to run; give none (`--recbole-models` alone) to re-measure intentrec's side only",
    )
    parser.add_argument(
        "--intentrec-models",
        nargs="*",
        default=["transformer", "gru"],
        help="intentrec variants to run; give none (`--intentrec-models` alone) to run RecBole only",
    )
    parser.add_argument(
        "--intentrec-overrides",
        nargs="*",
        default=[],
        help="extra key=value for training.train, also applied when preparing the split RecBole is given "
        "(so data.* and artifacts_dir overrides reach both libraries)",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--exclude-seen",
        action="store_true",
        help="both libraries rank without the query's history items (Amazon, where no shopper repeats an item)",
    )
    parser.add_argument("--venv", type=Path, default=REPO / "artifacts" / "recbole" / "venv")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "recbole" / "runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "recbole.jsonl",
        help="JSON lines appended here; the run's markdown table goes beside it (recbole_<time>.md)",
    )
    args = parser.parse_args()

    from hydra import compose, initialize_config_dir

    from intentrec.training.prepared import prepared_data

    python = ensure_venv(args.venv) if args.recbole_models else None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = [f"## intentrec vs RecBole ({stamp}, seed {args.seed}, at most {args.epochs} epochs)", ""]
    all_rows = []
    for name in args.datasets:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            data = prepared_data(compose("train", [f"data={name}", *args.intentrec_overrides]))
        work = args.work / stamp / name
        export_dir = work / "recbole_data" / name
        counts = export_split(data.directory, export_dir, name, args.max_len, seen=args.exclude_seen)
        print(f"[bench] {name}: {counts} targets exported for RecBole", flush=True)
        rows = []
        for model in args.recbole_models:
            rows.append(run_recbole(python, export_dir, name, model, args, work / f"recbole_{model}.json"))
        for variant in args.intentrec_models:
            label = variant.replace("@", "_").replace("=", "-").replace(",", "_")
            rows.extend(run_intentrec(name, variant, args, work / f"intentrec_{label}"))
        reference = pick_reference(rows)
        for r in rows:
            if reference is not None:
                r["reference"] = f"recbole {reference['variant']}"
                r["seconds_to_reference"] = seconds_to_reach(r["curve"], reference["val_ndcg@10"])
            r.update(dataset=name, targets=counts, seed=args.seed, max_epochs=args.epochs, patience=args.patience)
        report.append(table(name, rows, reference))
        curves = plot_learning_curves(args.out.parent / f"recbole_{stamp}_{name}_curves.png", name, rows)
        if curves is not None:
            report.append(f"Learning curves (validation NDCG@10 against epoch and training seconds): `{curves.name}`\n")
        all_rows += rows
    text = "\n".join(report)
    print(text)
    md = args.out.parent / f"recbole_{stamp}.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    common = {"benchmark": "recbole", "command": " ".join(sys.argv), **environment("torch", "numpy")}
    append_results(args.out, [{**row, **common} for row in all_rows])
    print(f"table written to {md}")


if __name__ == "__main__":
    main()
