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
`test/intent_shift/ndcg@10`, ...), `metrics.md`, `checkpoints/best.ckpt` and `last.ckpt` (written at
each validation and every `checkpoint.every_n_steps` steps), and the logger's files. A resumed run
continues a mid-epoch checkpoint with the epoch's remaining batches and keeps the best-so-far.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from intentrec.data import progress
from intentrec.data.cli import config_dict
from intentrec.data.errors import ConfigError
from intentrec.training.datamodule import PreparedData, SequenceDataModule
from intentrec.training.evaluate import evaluate_scorer, write_metrics
from intentrec.training.runtime import keep_freed_memory

log = logging.getLogger(__name__)


def prepared_folder(cfg) -> Path:
    """Where the prepared data of `cfg` lives: `data_dir` when given, else `<artifacts_dir>/data/<data.name>`."""
    if cfg.get("data_dir"):
        return Path(cfg.data_dir)
    return Path(cfg.artifacts_dir) / "data" / str(cfg.data.name)


def prepared_data(cfg, adopt_folder: bool = True) -> PreparedData:
    """The prepared dataset of `cfg`: the folder `data_dir` as prepared (its data config replaces cfg.data's
    when `adopt_folder`), or `<artifacts_dir>/data/<data.name>`, prepared first when missing (or made by an
    older layout). A folder of files prepared with another data config is never replaced silently: that is
    an error naming the differences, unless `reprepare=true`. Generated data (`format: synthetic`) is
    generated again from its config instead."""
    from intentrec.data.prepare import PREPARED_FORMAT_VERSION, config_hash, drop_generator_keys
    from intentrec.data.prepare import run as prepare_run

    if cfg.get("data_dir") and adopt_folder:
        from intentrec.training.run_settings import adopt_prepared_folder

        adopt_prepared_folder(cfg)
    drop_generator_keys(cfg)
    data_cfg = config_dict(cfg, "data")
    directory = prepared_folder(cfg)
    stats_path = directory / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    if not stats:
        log.info("preparing %s into %s", data_cfg["name"], directory)
        prepare_run(cfg, directory)
    elif stats.get("config_hash") != config_hash(data_cfg):
        generated = data_cfg.get("format") == "synthetic" and (stats.get("config") or {}).get("format") == "synthetic"
        if not (generated or cfg.get("reprepare", False)):
            raise ConfigError(_other_config_message(directory, stats.get("config") or {}, data_cfg))
        log.warning("preparing %s again with this data config, replacing %s", data_cfg["name"], directory)
        prepare_run(cfg, directory)
    elif stats.get("prepared_format") != PREPARED_FORMAT_VERSION:
        log.warning("%s was prepared by an older version; preparing it again with the same data config", directory)
        prepare_run(cfg, directory)
    data = PreparedData.load(directory)
    expected = data_cfg.get("num_items")
    if expected is not None and int(expected) != data.num_items:
        raise ConfigError(
            f"data.num_items={expected} but {stats_path} says {data.num_items}; fix data.num_items (or drop it) "
            f"or re-run python -m data.prepare data={data_cfg['name']}."
        )
    _fit_cutoffs(cfg, data.num_items, data_cfg["name"])
    return data


def _other_config_message(directory: Path, prepared: dict, given: dict) -> str:
    from intentrec.data.prepare import preparation_config
    from intentrec.training.run_settings import flatten

    old, new = flatten(prepared, "data"), flatten(preparation_config(given), "data")
    differences = [
        f"  {key}: {old.get(key)!r} there, {new.get(key)!r} here"
        for key in sorted(set(old) | set(new))
        if json.dumps(old.get(key), default=str) != json.dumps(new.get(key), default=str)
    ]
    return (
        f"{directory} was prepared with another data config than this command line gives:\n"
        + "\n".join(differences[:12])
        + ("\n  ..." if len(differences) > 12 else "")
        + f"\nTrain on it as prepared with data_dir={directory}; or give the same data.* settings; or add "
        "reprepare=true to prepare it again with these and replace it (checkpoints trained on it will no longer "
        "match); or choose another data.name."
    )


def _fit_cutoffs(cfg, num_items: int, name: str) -> None:
    """Cut-offs larger than the catalogue measure nothing: dropped with a warning (the monitor's must stay);
    a ranker asked for more candidates than there are items re-orders the whole catalogue."""
    from omegaconf import open_dict

    monitor_k = int(str(cfg.evaluate.monitor).rsplit("@", 1)[-1]) if "@" in str(cfg.evaluate.monitor) else 0
    if monitor_k > num_items:
        raise ConfigError(
            f"evaluate.monitor={cfg.evaluate.monitor} needs at least {monitor_k} items, but {name} has {num_items}; "
            f"use evaluate.monitor=ndcg@<k> with k <= {num_items}."
        )
    with open_dict(cfg):
        for key in ("ks", "business_ks"):
            ks = [int(k) for k in cfg.evaluate.get(key) or []]
            kept = [k for k in ks if k <= num_items]
            if kept != ks:
                log.warning(
                    "evaluate.%s: %s left out (more than the %d items of %s)",
                    key,
                    [k for k in ks if k > num_items],
                    num_items,
                    name,
                )
                cfg.evaluate[key] = kept
        candidates = cfg.get("ranker", {}).get("num_candidates")
        if candidates is not None and int(candidates) > num_items:
            log.warning(
                "ranker.num_candidates=%s: %s has %d items; the ranker re-orders all of them",
                candidates,
                name,
                num_items,
            )
            cfg.ranker.num_candidates = num_items


def data_fingerprint(data: PreparedData) -> dict:
    return {"name": data.stats["name"], "num_items": data.num_items, "data_hash": data.stats.get("data_hash")}


def build_datamodule(cfg, data: PreparedData) -> SequenceDataModule:
    d = cfg.data
    return SequenceDataModule(
        data,
        max_seq_len=int(d.max_seq_len),
        batch_size=int(d.batch_size),
        eval_batch_size=int(d.eval_batch_size),
        past_purchases=int(d.past_purchases),
        rare_max_count=int(cfg.evaluate.rare_max_count),
        seed=int(cfg.seed),
        num_workers=int(d.num_workers),
        bucket_by_length=bool(d.get("bucket_by_length", False)),
        batch_targets=d.get("batch_targets"),
    )


def build_task(cfg, data: PreparedData, datamodule: SequenceDataModule):
    from intentrec.training.module import RetrievalTask
    from intentrec.training.run_settings import record

    model_cfg = config_dict(cfg, "model")
    if model_cfg.get("kind") != "two_tower":
        raise ConfigError(f"model.kind={model_cfg.get('kind')!r}; a trainable model needs kind two_tower.")
    fields = {k: v for k, v in model_cfg.items() if k not in ("name", "kind", "contrastive")}
    codes, _, _ = data.feature_codes()
    try:
        return RetrievalTask(
            model=fields,
            vocab=data.vocabulary().__dict__,
            feature_codes=codes,
            train_counts=datamodule.train_counts,
            loss=config_dict(cfg, "loss"),
            optim=config_dict(cfg, "optim"),
            evaluation=config_dict(cfg, "evaluate"),
            data_fingerprint=data_fingerprint(data),
            variant=model_cfg.get("name", "two_tower"),
            settings=record(cfg, data.directory),
            contrastive=model_cfg.get("contrastive"),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model={model_cfg.get('name')!r}: {error}") from None


def build_trainer(cfg, run_dir: Path, callbacks: list) -> pl.Trainer:
    from intentrec.training.loggers import build_logger

    trainer_cfg = config_dict(cfg, "trainer")
    logger = build_logger(cfg)
    if trainer_cfg.get("accelerator") == "gpu" and not torch.cuda.is_available():
        raise ConfigError("trainer=gpu but no CUDA GPU is visible; use trainer=default (auto) or trainer=cpu.")
    # The bar only on a terminal (intentrec.data.progress), and only when the config wants it.
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
    if trainer.is_global_zero and cfg.ranker.enabled:
        from intentrec.training.ranking import evaluate_reranked, train_ranker

        ranker_cfg = config_dict(cfg, "ranker")
        ranker, summary = train_ranker(task.cpu(), datamodule, ranker_cfg, int(cfg.seed), run_dir)
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
        self.targets += int((batch["targets"] > 0).sum())
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
        return round(self.targets / self.seconds, 1) if self.seconds else 0.0


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
    from intentrec.data.cli import hydra_main

    torch.set_float32_matmul_precision("high")
    hydra_main("train", _cli)
