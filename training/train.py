"""Train a model (or fit a baseline) and evaluate it by full-catalogue ranking.

    python -m training.train                                   # default transformer on the synthetic shop
    python -m training.train data=diginetica model=gru seed=1
    python -m training.train model=popularity                  # baselines run through the same pipeline
    python -m training.train trainer=ddp                       # 2 processes (gloo on CPU, nccl on GPU)
    python -m training.train trainer=gpu                       # bf16 on a GPU
    python -m training.train ckpt_path=<run>/checkpoints/last.ckpt   # resume (mid-epoch too)
    python -m training.train -m model=transformer,transformer_no_context,mean_pool seed=0,1,2

Reads `<artifacts_dir>/data/<data.name>/` (prepared first when missing or made with another data
config) and leaves in the run folder: `metrics.json` (`val/ndcg@10`, `test/hr@10`,
`test/intent_shift/ndcg@10`, ...; with `intent.heads`, `intent_test/purchase/auc`, ... and `intent.md`,
`intent.json`, `intent_reliability.png`), `metrics.md`, `checkpoints/best.ckpt` and `last.ckpt` (written at
each validation and every `checkpoint.every_n_steps` steps), and the logger's files. A resumed run
continues a mid-epoch checkpoint with the epoch's remaining batches and keeps the best-so-far.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from intentrec import progress
from intentrec.config import config_dict
from intentrec.errors import ConfigError
from intentrec.training.datamodule import PreparedData, SequenceDataModule
from intentrec.training.evaluate import write_metrics
from intentrec.training.metrics import evaluate_scorer
from intentrec.training.prepared import build_datamodule, data_fingerprint, intent_mode, prepared_data
from intentrec.training.runtime import keep_freed_memory

log = logging.getLogger(__name__)


def build_task(cfg, data: PreparedData, datamodule: SequenceDataModule):
    from intentrec.training.module import RetrievalTask
    from intentrec.training.run_settings import record

    model_cfg = config_dict(cfg, "model")
    if model_cfg.get("kind") != "two_tower":
        raise ConfigError(f"model.kind={model_cfg.get('kind')!r}; a trainable model needs kind two_tower.")
    fields = {k: v for k, v in model_cfg.items() if k not in ("name", "kind", "contrastive")}
    mode = intent_mode(cfg)
    fields["intent_heads"] = mode != "none"
    intent = None
    if mode != "none":
        active = [head for head, reason in datamodule.intent_heads.items() if not reason]
        if not active:
            raise ConfigError(
                f"intent.heads={mode} but no intent head can learn from this data: "
                + "; ".join(f"{head}: {reason}" for head, reason in datamodule.intent_heads.items())
                + ". Set intent.heads=none."
            )
        intent = {"mode": mode, "weight": float(cfg.intent.weight), "heads": active}
    codes, _, _ = data.feature_codes()
    try:
        return RetrievalTask(
            model=fields,
            vocab=data.vocabulary().__dict__,
            feature_codes=codes,
            train_counts=datamodule.train_counts,
            loss=config_dict(cfg, "loss"),
            optim={
                **config_dict(cfg, "optim"),
                "batch_size": int(datamodule.batch_size),
            },  # as set up (min_steps_per_epoch)
            evaluation=config_dict(cfg, "evaluate"),
            data_fingerprint=data_fingerprint(data),
            variant=model_cfg.get("name", "two_tower"),
            settings=record(cfg, data.directory),
            contrastive=model_cfg.get("contrastive"),
            intent=intent,
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model={model_cfg.get('name')!r}: {error}") from None


def build_trainer(cfg, run_dir: Path, callbacks: list) -> pl.Trainer:
    from intentrec.training.loggers import build_logger

    trainer_cfg = config_dict(cfg, "trainer")
    logger = build_logger(cfg)
    if trainer_cfg.get("accelerator") == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer=gpu but no CUDA GPU is visible; use trainer=default (auto) or trainer=cpu.")
    # The bar only on a terminal (intentrec.progress), and only when the config wants it.
    trainer_cfg["enable_progress_bar"] = bool(trainer_cfg.get("enable_progress_bar", True)) and progress.enabled()
    return pl.Trainer(
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=callbacks,
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        **trainer_cfg,
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: to a temporary file beside the target, then renamed over it.
    A run killed while writing `last.ckpt` keeps the previous one instead of a truncated file."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, draft, storage_options)
            with open(draft, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(draft, path)
        finally:
            draft.unlink(missing_ok=True)


def train(cfg) -> dict:
    """Train and evaluate; returns the metrics written to `<run_dir>/metrics.json`."""
    from omegaconf import open_dict

    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else _hydra_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)  # ${run_dir} in conf/logger/*.yaml
    started = time.perf_counter()
    keep_freed_memory()
    if cfg.hybrid.enabled:  # before hours of training, not after
        from intentrec.training.hybrid import check_config

        check_config(config_dict(cfg, "hybrid"))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    data = prepared_data(cfg)
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    model_cfg = config_dict(cfg, "model")
    info = {
        "model": model_cfg["name"],
        "data": data.stats["name"],
        "seed": int(cfg.seed),
        "num_items": data.num_items,
    }
    ranks: dict = {}
    if model_cfg.get("kind") == "baseline":
        metrics = _run_baseline(cfg, model_cfg, data, datamodule, ranks)
    else:
        metrics, is_global_zero = _run_model(cfg, data, datamodule, run_dir, info, ranks)
        if not is_global_zero:
            return metrics  # other DDP ranks: rank 0 trains the ranker and writes the results
    info["seconds"] = round(time.perf_counter() - started, 2)
    write_metrics(run_dir, metrics, info, ks=cfg.evaluate.ks, ranks=ranks)
    return metrics


def _run_baseline(cfg, model_cfg: dict, data: PreparedData, datamodule: SequenceDataModule, ranks: dict) -> dict:
    from intentrec.training.baselines import make_baseline
    from intentrec.training.datamodule import read_split

    params = {k: v for k, v in model_cfg.items() if k not in ("name", "kind", "baseline")}
    scorer = make_baseline(
        model_cfg["baseline"], datamodule.train_counts, read_split(data.directory / "train.parquet"), params
    )
    metrics = {}
    for split in ("val", "test"):
        metrics.update(evaluate_scorer(scorer, datamodule, split, config_dict(cfg, "evaluate"), data.num_items, ranks))
    return metrics


def _run_model(
    cfg, data: PreparedData, datamodule: SequenceDataModule, run_dir: Path, info: dict, ranks: dict
) -> tuple[dict, bool]:
    task = build_task(cfg, data, datamodule)
    task.set_eval_sets(datamodule.eval_sets)
    monitor = f"val/{cfg.evaluate.monitor}"
    checkpoint = BestCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor=monitor,
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # best.ckpt and last.ckpt are overwritten, never last-v1.ckpt
    )
    stopping = pl.callbacks.EarlyStopping(  # judged after validations only (a run can end mid-epoch at max_steps)
        monitor=monitor, mode="max", patience=int(cfg.evaluate.early_stopping_patience), check_on_train_epoch_end=False
    )
    throughput = TargetsPerSecond(monitor)
    callbacks = [checkpoint, stopping, throughput, TrainedBatches()]
    every = int(cfg.checkpoint.every_n_steps)
    if every < 0:
        raise ConfigError(f"checkpoint.every_n_steps={every}; expected 0 (at validations only) or a step count.")
    if every:
        callbacks.append(StepCheckpoint(dirpath=str(run_dir / "checkpoints"), every_n_train_steps=every))
    trainer = build_trainer(cfg, run_dir, callbacks)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    best = checkpoint.best_model_path or None
    trainer.validate(task, datamodule=datamodule, ckpt_path=best, verbose=False)
    trainer.test(task, datamodule=datamodule, ckpt_path=best, verbose=False)
    metrics = dict(task.last_results)
    ranks.update(task.last_ranks)
    log_final = trainer.logger.log_metrics if trainer.logger is not None and trainer.is_global_zero else None
    info.update(
        best_checkpoint=best,
        epochs=int(trainer.current_epoch),
        global_step=int(trainer.global_step),
        loss=task.loss_name,
        train_targets_per_second=throughput.rate(),
        train_seconds=round(throughput.seconds, 2),
        learning_curve=throughput.curve,
        parameters=int(sum(p.numel() for p in task.parameters())),
    )
    if trainer.is_global_zero and task.intent_mode:
        from intentrec.training.intent import measure_heads, train_heads

        if task.intent_mode == "second_stage":  # the heads learn on the tower as trained, into its checkpoints
            info["intent_stage"] = train_heads(task.model.cpu(), datamodule, config_dict(cfg, "intent"), int(cfg.seed))
            save_heads(task.model, [best, run_dir / "checkpoints" / "last.ckpt"])
        measure_heads(task.model.cpu(), datamodule, cfg, run_dir, metrics, info)
    if trainer.is_global_zero and cfg.ranker.enabled:
        from intentrec.training.ranking import evaluate_reranked, train_ranker

        ranker_cfg = config_dict(cfg, "ranker")
        device = trainer.strategy.root_device  # the ranker stage runs where retrieval trained
        ranker, summary = train_ranker(task.cpu(), datamodule, ranker_cfg, int(cfg.seed), run_dir, device)
        info["ranker"] = summary
        for split in ("val", "test"):
            metrics.update(
                evaluate_reranked(
                    task,
                    ranker,
                    datamodule,
                    split,
                    config_dict(cfg, "evaluate"),
                    int(ranker_cfg["num_candidates"]),
                    ranks,
                    device,
                )
            )
    if trainer.is_global_zero and cfg.hybrid.enabled:
        from intentrec.training.hybrid import evaluate_hybrid

        hybrid, info["hybrid"] = evaluate_hybrid(
            task.cpu(), datamodule, config_dict(cfg, "hybrid"), config_dict(cfg, "evaluate"), ranks
        )
        metrics.update(hybrid)
    if log_final is not None:  # the run's final figures, ranker and hybrid stages included, in the logger too
        log_final({key: float(value) for key, value in metrics.items()}, step=int(trainer.global_step))
        trainer.logger.save()
    return metrics, trainer.is_global_zero


class BestCheckpoint(pl.callbacks.ModelCheckpoint):
    """`best.ckpt` by the monitored metric, and `last.ckpt` at each validation.

    A run resumed into another folder (`ckpt_path=<old run>/checkpoints/last.ckpt`, a new run_dir)
    keeps the best-so-far: the best score is carried over and the old best checkpoint is copied into
    the new folder, so a later, worse epoch does not become `best.ckpt` (Lightning alone forgets the
    score when the folder changes)."""

    def load_state_dict(self, state_dict: dict) -> None:
        saved_in = state_dict.get("dirpath")
        if saved_in is None or self.dirpath is None or Path(saved_in).resolve() == Path(self.dirpath).resolve():
            return super().load_state_dict(state_dict)
        old_best, score = Path(state_dict.get("best_model_path") or ""), state_dict.get("best_model_score")
        if score is None or not old_best.is_file():
            log.warning(
                "resuming into %s: the previous best checkpoint %s is gone; the best is chosen among the epochs "
                "trained from here",
                self.dirpath,
                old_best,
            )
            return
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        new_best = Path(self.dirpath) / old_best.name
        shutil.copy2(old_best, new_best)
        self.best_model_score = score
        self.best_model_path = self.kth_best_model_path = str(new_best)
        self.kth_value = score
        self.best_k_models = {str(new_best): score}
        log.info(
            "resuming into %s: best so far %s = %.4f (copied from %s)", self.dirpath, self.monitor, score, old_best
        )


def save_heads(model, checkpoints) -> None:
    """Write the intent heads' trained weights (`model.intent.*`) into each checkpoint file, whole or not at all."""
    state = {f"model.intent.{k}": v.detach().cpu() for k, v in model.intent.state_dict().items()}
    for path in {Path(p) for p in checkpoints if p and Path(p).is_file()}:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint["state_dict"].update(state)
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)


class StepCheckpoint(pl.callbacks.ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` optimizer steps, mid-epoch, so a killed run loses at most
    that many steps; the same file BestCheckpoint writes at validations (the newest wins)."""

    def __init__(self, dirpath: str, every_n_train_steps: int):
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,
            save_on_train_epoch_end=False,
        )

    def state_dict(self) -> dict:
        return {}  # nothing to carry: it only ever writes last.ckpt

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class TrainedBatches(pl.Callback):
    """Keeps `ResumableLoader.consumed` equal to the batches of the epoch trained so far (what a
    checkpoint must record; the loader itself has handed out one more, prefetched)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loader = trainer.train_dataloader
        if hasattr(loader, "consumed"):
            loader.consumed = batch_idx + 1


class TargetsPerSecond(pl.Callback):
    """Training targets per second of training wall time (validation excluded), and the learning curve:
    after each validation, the monitored metric against the training seconds spent so far."""

    def __init__(self, monitor: str = "val/ndcg@10"):
        self.monitor = monitor
        self.targets = 0
        self.seconds = 0.0
        self.curve: list[dict] = []
        self._last = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        self.targets = self.targets + (batch["targets"] > 0).sum()  # stays on the device: no sync per step
        if self._last is not None:
            self.seconds += now - self._last
        self._last = now

    def on_validation_end(self, trainer, pl_module):  # after the module has logged the epoch's metrics
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or trainer.state.fn != "fit":
            return
        self.curve.append(
            {"epoch": int(trainer.current_epoch), "train_seconds": round(self.seconds, 2), self.monitor: float(value)}
        )

    def on_validation_epoch_start(self, trainer, pl_module):
        self._last = None  # validation time is not training time

    def rate(self) -> float:
        return round(int(self.targets) / self.seconds, 1) if self.seconds else 0.0


def _hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ConfigError("run_dir is not set and no Hydra run is active; pass run_dir=<folder>.")
    return Path(HydraConfig.get().runtime.output_dir)


def objective(cfg, metrics: dict) -> float:
    """The value a sweeper optimizes: `metrics[optimized_metric]` (default the monitored validation metric)."""
    name = str(cfg.get("optimized_metric") or f"val/{cfg.evaluate.monitor}")
    if name not in metrics:
        raise ConfigError(
            f"optimized_metric={name!r} is not among this run's metrics; choose one of "
            f"{sorted(k for k in metrics if k.startswith('val/'))[:12]} (val/ metrics: tuning on test/ leaks the test set)."
        )
    return float(metrics[name])


def _cli(cfg) -> float:
    from intentrec.training.evaluate import format_summary

    metrics = train(cfg)
    print(format_summary(metrics, Path(cfg.run_dir) if cfg.get("run_dir") else _hydra_run_dir()))
    return objective(cfg, metrics)


if __name__ == "__main__":
    from intentrec.config import hydra_main

    torch.set_float32_matmul_precision("high")
    hydra_main("train", _cli)
