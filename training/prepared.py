"""The prepared data and the data module a stage runs on (train, evaluate, export and the benchmarks).

`prepared_data(cfg)` finds (or prepares) the data of a config and checks it against the config;
`build_datamodule(cfg, data)` makes the batches of `data.*`. Neither depends on training, so evaluation
and training both import them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from intentrec.config import config_dict
from intentrec.errors import ConfigError
from intentrec.training.datamodule import PreparedData, SequenceDataModule

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
        min_steps_per_epoch=int(d.get("min_steps_per_epoch", 0) or 0),
        min_batch_size=int(cfg.optim.get("reference_batch_size", 128)),
        batches_on_device=d.get("batches_on_device", "auto"),
        intent=intent_mode(cfg),
    )


def intent_mode(cfg) -> str:
    """`intent.heads` (none | joint | second_stage), checked, and `intent.calibration` checked."""
    from intentrec.models.intent import MODES
    from intentrec.training.intent import CALIBRATIONS

    intent = cfg.get("intent") or {}
    mode, calibration = str(intent.get("heads", "none")), str(intent.get("calibration", "temperature"))
    if mode not in MODES:
        raise ConfigError(f"intent.heads={mode!r}; expected one of {list(MODES)}.")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"intent.calibration={calibration!r}; expected one of {list(CALIBRATIONS)}.")
    return mode
