"""Evaluate a checkpoint (or any scorer) by full-catalogue ranking on the val and test splits.

    python -m training.evaluate ckpt_path=<run>/checkpoints/best.ckpt
    python -m training.evaluate ckpt_path=... evaluate.exclude_seen=true run_dir=<folder>

The data, sequence settings and evaluation protocol are the checkpoint's (training.run_settings);
`evaluate.*` and `hybrid.*` given here change the protocol. Writes `metrics.json` (slash keys:
`test/ndcg@10`, `test/intent_shift/hr@10`, `val/mrr@10`, ...) and `metrics.md` into `run_dir`
(default `<run>/evaluations/<time>/`). Every item of the catalogue is ranked. Only with
`evaluate.sampled_negatives=N` (to compare with papers that sample) the target is also ranked among N
sampled items, reported apart as `<split>_sampled<N>/*`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import open_dict

from intentrec import progress
from intentrec.config import config_dict
from intentrec.errors import ConfigError

log = logging.getLogger(__name__)

HEADLINE = ("hr", "ndcg", "mrr")


def markdown_table(metrics: dict, ks) -> str:
    """Rows = overall and each slice; columns = HR/NDCG/MRR at each K, plus the example count."""
    lines = []
    for split in ("val", "test"):
        heads = sorted(
            {
                key[len(split) + 1 :].rsplit("/", 1)[0]
                for key in metrics
                if key.startswith(f"{split}/") and key.count("/") == 2
            }
        )
        columns = [f"{m}@{k}" for k in ks for m in HEADLINE]
        lines += [
            f"### {split}",
            "",
            "| slice | count | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 2) + "|",
        ]
        for name, head in [("all", split)] + [(h, f"{split}/{h}") for h in heads]:
            if f"{head}/count" not in metrics:
                continue
            values = " | ".join(f"{metrics.get(f'{head}/{c}', float('nan')):.4f}" for c in columns)
            lines.append(f"| {name} | {int(metrics[f'{head}/count'])} | {values} |")
        coverage = ", ".join(f"coverage@{k} {metrics.get(f'{split}/coverage@{k}', 0):.3f}" for k in ks)
        lines += ["", coverage, ""]
        for head in sampled_heads(metrics, split):
            values = ", ".join(
                f"{c} {metrics[f'{head}/{c}']:.4f}"
                for k in ks
                for c in (f"hr@{k}", f"ndcg@{k}")
                if f"{head}/{c}" in metrics
            )
            negatives = head.rsplit("sampled", 1)[1]
            lines += [
                f"Sampled, not full ranking ({head}: target among {negatives} sampled unseen items): {values}",
                "",
            ]
    return "\n".join(lines)


def sampled_heads(metrics: dict, split: str) -> list[str]:
    """`<split>_sampled<N>` prefixes present in `metrics` (evaluate.sampled_negatives)."""
    return sorted(
        {key.split("/")[0] for key in metrics if key.startswith(f"{split}_sampled") and key.endswith("/count")}
    )


def format_summary(metrics: dict, run_dir: Path) -> str:
    """A few lines for the terminal: overall and slice metrics at 10 on val and test."""
    lines = [f"run folder: {run_dir}"]
    for split in ("val", "test"):
        for head in (split, f"{split}/intent_shift", f"{split}/session_start", f"{split}/cold", f"{split}/anonymous"):
            if f"{head}/count" in metrics:
                lines.append(
                    f"  {head:22} n={int(metrics[f'{head}/count']):>7,}  HR@10 {metrics[f'{head}/hr@10']:.4f}  "
                    f"NDCG@10 {metrics[f'{head}/ndcg@10']:.4f}  MRR@10 {metrics[f'{head}/mrr@10']:.4f}"
                )
        for head in sampled_heads(metrics, split):
            lines.append(
                f"  {head:22} n={int(metrics[f'{head}/count']):>7,}  HR@10 {metrics[f'{head}/hr@10']:.4f}  "
                f"NDCG@10 {metrics[f'{head}/ndcg@10']:.4f}  (sampled negatives, not full ranking)"
            )
    return "\n".join(lines)


def write_ranks(run_dir: Path, ranks: dict) -> None:
    """`ranks.npz`: for each test stage (`test`, `rerank_test`, `hybrid_test`), every example's index and the
    counts of items scored above (`greater`) and equal to (`ties`) its target: per-example metrics for paired
    significance tests between runs (training.significance)."""
    arrays = {
        f"{stage}.{field}": values
        for stage, fields in ranks.items()
        if fields is not None and stage.endswith("test")
        for field, values in fields.items()
    }
    if arrays:
        from intentrec.training.significance import RANKS_FILE

        np.savez_compressed(Path(run_dir) / RANKS_FILE, **arrays)


def write_metrics(run_dir: Path, metrics: dict, info: dict, ks, ranks: dict | None = None) -> None:
    run_dir = Path(run_dir)
    if ranks:
        write_ranks(run_dir, ranks)
    if info.get("learning_curve"):
        from intentrec.training.curves import plot_run

        plot_run(run_dir / "learning_curve.png", info)
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "info": info}, indent=2, sort_keys=True))
    (run_dir / "metrics.md").write_text(
        f"# {info.get('model')} on {info.get('data')} (seed {info.get('seed')})\n\n" + markdown_table(metrics, ks)
    )
    log.info(
        "test/ndcg@10 %.4f test/hr@10 %.4f -> %s",
        metrics.get("test/ndcg@10", float("nan")),
        metrics.get("test/hr@10", float("nan")),
        run_dir,
    )


def checkpoint_path(ckpt_path, command: str) -> Path:
    """`ckpt_path` as a Path, or a clear error when it is not given or not a file."""
    if not ckpt_path:
        raise ConfigError(f"ckpt_path must be given: {command} ckpt_path=<run>/checkpoints/best.ckpt.")
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise ConfigError(
            f"ckpt_path={str(ckpt)!r} does not exist; point it at a .ckpt under a run's checkpoints/ folder."
        )
    return ckpt


def _load_task(ckpt: Path):
    from intentrec.training.module import RetrievalTask

    try:
        return RetrievalTask.load_from_checkpoint(str(ckpt), map_location="cpu", feature_codes=None, train_counts=None)
    except Exception as error:  # a file that is not a retrieval checkpoint: the user's input, not a bug
        raise ConfigError(
            f"ckpt_path={str(ckpt)!r} is not a retrieval checkpoint of this project ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); give <run>/checkpoints/best.ckpt or last.ckpt."
        ) from None


def check_trained_on(task, data, ckpt: Path) -> None:
    """A clear error when `task` was trained on other prepared data than `data`."""
    trained_on = task.hparams.data_fingerprint
    if trained_on["num_items"] != data.num_items or trained_on.get("data_hash") != data.stats.get("data_hash"):
        raise ConfigError(
            f"{ckpt} was trained on {trained_on['name']} with num_items={trained_on['num_items']} (data hash "
            f"{trained_on.get('data_hash')}), but {data.directory}/stats.json says num_items={data.num_items} (data hash "
            f"{data.stats.get('data_hash')}); the prepared data changed since training: prepare it as it was, or "
            "train a new model."
        )


def load_checkpoint(ckpt: Path, data):
    """The RetrievalTask of checkpoint `ckpt`, refused with a clear error when trained on other data."""
    task = _load_task(ckpt)
    check_trained_on(task, data, ckpt)
    return task


def open_run(cfg, command: str):
    """Checkpoint `cfg.ckpt_path` for a later stage: its recorded settings applied to `cfg` (in place; see
    training.run_settings), its prepared data, and the settings forced by `force=true`.
    Returns (ckpt, task, data, forced)."""
    from intentrec.training.prepared import prepared_data
    from intentrec.training.run_settings import adopt_checkpoint

    ckpt = checkpoint_path(cfg.get("ckpt_path"), command)
    task = _load_task(ckpt)
    forced = adopt_checkpoint(cfg, task.hparams.get("settings"), ckpt, command)
    data = prepared_data(cfg, adopt_folder=False)  # the checkpoint's data config, not the folder's, decides
    check_trained_on(task, data, ckpt)
    return ckpt, task, data, forced


def output_folder(cfg, ckpt: Path) -> Path:
    """`run_dir` when given, else `<the checkpoint's run>/evaluations/<time>`."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    from datetime import datetime

    return ckpt.resolve().parent.parent / "evaluations" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def evaluate(cfg) -> dict:
    """Load `ckpt_path` with the settings it was trained with, evaluate val and test; metrics go to
    `run_dir` (default `<run>/evaluations/<time>/`)."""
    import pytorch_lightning as pl

    from intentrec.training.prepared import build_datamodule

    ckpt, task, data, forced = open_run(cfg, "python -m training.evaluate")
    if cfg.hybrid.enabled:
        from intentrec.training.hybrid import check_config

        check_config(config_dict(cfg, "hybrid"))
    run_dir = output_folder(cfg, ckpt)
    run_dir.mkdir(parents=True, exist_ok=True)
    task.eval_cfg = config_dict(cfg, "evaluate")
    with open_dict(cfg):  # intent heads are measured when the checkpoint has them (intent.calibration applies)
        cfg.intent.heads = task.intent_mode or "none"
        cfg.intent.weight = task.intent_weight or cfg.intent.weight
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    task.set_eval_sets(datamodule.eval_sets)
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=progress.enabled(),
        use_distributed_sampler=False,
        default_root_dir=str(run_dir),
    )
    trainer.validate(task, datamodule=datamodule, verbose=False)
    trainer.test(task, datamodule=datamodule, verbose=False)
    metrics = dict(task.last_results)
    ranks = dict(task.last_ranks)
    info = {
        "model": task.hparams.get("variant", "two_tower"),
        "data": data.stats["name"],
        "data_dir": str(data.directory),
        "ckpt_path": str(ckpt),
        "exclude_seen": bool(task.eval_cfg.get("exclude_seen", False)),
        "forced": forced,
    }
    if cfg.hybrid.enabled:
        from intentrec.training.hybrid import evaluate_hybrid

        hybrid, info["hybrid"] = evaluate_hybrid(task, datamodule, config_dict(cfg, "hybrid"), task.eval_cfg, ranks)
        metrics.update(hybrid)
    if task.intent_mode:
        from intentrec.training.intent import measure_heads

        measure_heads(task.model.cpu(), datamodule, cfg, run_dir, metrics, info)
    write_metrics(run_dir, metrics, info, ks=cfg.evaluate.ks, ranks=ranks)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return metrics


def _cli(cfg) -> None:
    metrics = evaluate(cfg)
    print(format_summary(metrics, Path(cfg.run_dir)))


if __name__ == "__main__":
    from intentrec.config import hydra_main

    hydra_main("evaluate", _cli)
