"""The settings a checkpoint carries to the later stages, and how a stage takes them over.

Training records in every checkpoint (`hyper_parameters.settings`) what the model means and what
serving must repeat: the prepared data folder and its data config, `data.max_seq_len` and
`data.past_purchases`, the seed, the model, ranker, hybrid and evaluation settings. `training.evaluate`
and `serving.export` need only `ckpt_path` and take these over:

- *bound* settings (the data config, `data.max_seq_len`, `data.past_purchases`, `seed`, `model.*`,
  `ranker.*`): given again on the command line with the same value is fine; another value is refused,
  naming the key and both values. `force=true` lets the command line win for the sequence, seed and
  ranker settings (the output records what was forced); the data and the model cannot change.
- *defaults* (`evaluate.*`, `hybrid.*`, batch sizes, workers): the checkpoint's unless the command
  line gives them.
- everything else (trainer, index, export, output folders) is the command's own.

A prepared folder given as `data_dir=<folder>` is taken over the same way from its `stats.json`: its
data config replaces the command line's, and a contradicting `data.*` preparation key is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from intentrec.config import config_dict
from intentrec.data.prepare import TRAINING_KEYS, drop_generator_keys
from intentrec.errors import ConfigError

log = logging.getLogger(__name__)

# Training-only data keys that change what the query encoder reads (so what serving must repeat).
SEQUENCE_KEYS = ("max_seq_len", "past_purchases")
FORCEABLE = ("data.max_seq_len", "data.past_purchases", "seed", "ranker")


def record(cfg, data_dir: Path) -> dict:
    """What training writes into the checkpoint for evaluate and export."""
    return {
        "data_dir": str(Path(data_dir).resolve()),
        "data": config_dict(cfg, "data"),
        "seed": int(cfg.seed),
        "model": config_dict(cfg, "model"),
        "ranker": config_dict(cfg, "ranker"),
        "hybrid": config_dict(cfg, "hybrid"),
        "evaluate": config_dict(cfg, "evaluate"),
    }


def explicit_keys(cfg) -> set[str]:
    """Dotted keys (and group names such as `data`) given on this stage's command line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if HydraConfig.initialized():
        task = list(HydraConfig.get().overrides.task)
    elif "hydra" in cfg and OmegaConf.select(cfg, "hydra.overrides.task") is not None:
        task = list(cfg.hydra.overrides.task)
    else:
        task = []
    return {o.key_or_group for o in OverridesParser.create().parse_overrides(task) if not o.is_delete()}


MISSING = object()


def _given(cfg, key: str):
    """`cfg.<key>` resolved, or MISSING when not set (`???`)."""
    try:
        value = OmegaConf.select(cfg, key, default=MISSING, throw_on_missing=True)
    except Exception:  # MissingMandatoryValue and interpolation errors: nothing usable was given
        return MISSING
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def flatten(tree, prefix: str) -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}"))
        return out
    return {prefix: tree}


def _conflicts(cfg, recorded: dict, explicit: set[str], bound) -> dict[str, tuple]:
    """{dotted key: (recorded value, given value)} for explicit keys under `bound` prefixes that differ."""
    found = {}
    for key in sorted(explicit):
        if key == "data":  # a data config chosen by name: every preparation key it sets must agree
            data = OmegaConf.to_container(cfg.data, resolve=False) if "data" in cfg else {}
            for name in flatten({k: v for k, v in data.items() if k not in TRAINING_KEYS}, "data"):
                value = _given(cfg, name)
                if value is not MISSING and not _same(value, _lookup(recorded, name)):
                    found[name] = (_lookup(recorded, name), value)
        elif key == "model" and "model" in bound:
            if not _same(_given(cfg, "model.name"), _lookup(recorded, "model.name")):
                found["model"] = (_lookup(recorded, "model.name"), _given(cfg, "model.name"))
        elif any(key == prefix or key.startswith(prefix + ".") for prefix in bound):
            given = _given(cfg, key)
            if given is not MISSING and not _same(given, _lookup(recorded, key)):
                found[key] = (_lookup(recorded, key), given)
    return found


def _lookup(tree: dict, key: str):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _bound_prefixes(recorded_data: dict) -> list[str]:
    preparation = [f"data.{k}" for k in recorded_data if k not in TRAINING_KEYS]
    return [*preparation, *(f"data.{k}" for k in SEQUENCE_KEYS), "seed", "model", "ranker"]


def _describe(conflicts: dict[str, tuple], where: str) -> str:
    return "\n".join(
        f"  {key}: {old!r} in {where}, {new!r} on the command line" for key, (old, new) in conflicts.items()
    )


def adopt_checkpoint(cfg, settings: dict | None, ckpt: Path, command: str) -> dict:
    """Apply a checkpoint's recorded settings to `cfg` (in place); returns {key: {checkpoint, used}} of
    forced settings. Checkpoints written before settings were recorded keep the command line's."""
    if not settings:
        log.warning("%s records no settings; using the command line's data and sequence settings", ckpt)
        return {}
    drop_generator_keys(cfg)  # e.g. data.num_events of debug=fast on a data config of a file
    explicit = explicit_keys(cfg)
    conflicts = _conflicts(cfg, settings, explicit, _bound_prefixes(settings["data"]))
    forceable = {k: v for k, v in conflicts.items() if any(k == p or k.startswith(p + ".") for p in FORCEABLE)}
    fixed = {k: v for k, v in conflicts.items() if k not in forceable}
    if fixed:
        raise ConfigError(
            f"{ckpt} was trained on other data or another model than this command line gives:\n"
            f"{_describe(fixed, 'the checkpoint')}\n"
            f"{command} needs only ckpt_path=...: drop these settings (the checkpoint's are used), or train a new "
            "model on the data you mean."
        )
    if forceable and not cfg.get("force", False):
        raise ConfigError(
            f"{ckpt} was trained with other settings than this command line gives:\n"
            f"{_describe(forceable, 'the checkpoint')}\n"
            "Drop them (the checkpoint's are used), or add force=true to use the command line's (the output "
            "records what was forced)."
        )
    positions = settings["model"].get("max_seq_len")
    if (
        "data.max_seq_len" in forceable
        and positions is not None
        and int(forceable["data.max_seq_len"][1]) > int(positions)
    ):
        raise ConfigError(
            f"data.max_seq_len={forceable['data.max_seq_len'][1]}: the model of {ckpt} reads at most {positions} "
            f"steps; force a value <= {positions}, or train a new model with the longer sequences."
        )
    forced = {key: {"checkpoint": old, "used": new} for key, (old, new) in forceable.items()}
    for key, (old, new) in forceable.items():
        log.warning("force=true: %s=%r instead of the checkpoint's %r", key, new, old)
    with open_dict(cfg):
        data = dict(settings["data"])
        for key in TRAINING_KEYS - set(SEQUENCE_KEYS):
            if f"data.{key}" in explicit:
                data[key] = _given(cfg, f"data.{key}")
        for key in SEQUENCE_KEYS:
            if f"data.{key}" in forceable:
                data[key] = forceable[f"data.{key}"][1]
        cfg.data = data
        if "seed" not in forceable:
            cfg.seed = settings["seed"]
        cfg.model = settings["model"]
        for group in ("ranker", "evaluate", "hybrid"):
            # A key this code knows and the checkpoint did not record (a setting added since it was trained)
            # takes this command's value, as given or by default.
            merged = {**config_dict(cfg, group), **settings[group]}
            for key in merged:
                dotted = f"{group}.{key}"
                if dotted in forceable or (group != "ranker" and (dotted in explicit or group in explicit)):
                    merged[key] = _given(cfg, dotted)
            cfg[group] = merged
        directory = Path(settings["data_dir"])
        cfg.data_dir = str(directory) if (directory / "stats.json").is_file() else None
        if cfg.data_dir is None:
            log.warning(
                "the prepared data %s of %s is gone; using %s/data/%s", directory, ckpt, cfg.artifacts_dir, data["name"]
            )
    return forced


def adopt_prepared_folder(cfg) -> None:
    """With `data_dir=<prepared folder>`: its data config (stats.json) replaces cfg.data's preparation keys
    (in place); a contradicting `data.*` preparation key on the command line is refused."""
    directory = Path(cfg.data_dir)
    stats_path = directory / "stats.json"
    if not stats_path.is_file():
        raise ConfigError(
            f"data_dir={str(directory)!r} holds no prepared data (no stats.json); prepare it first: "
            "python -m data.prepare data=<name> [data.path=<file> ...], then data_dir=<artifacts>/data/<name>."
        )
    prepared = json.loads(stats_path.read_text())["config"]
    explicit = explicit_keys(cfg) - {"data"}  # the default data group is not a choice when data_dir is given
    conflicts = _conflicts(cfg, {"data": prepared}, explicit, [f"data.{k}" for k in prepared])
    if conflicts:
        raise ConfigError(
            f"data_dir={str(directory)!r} was prepared with other data settings than this command line gives:\n"
            f"{_describe(conflicts, 'its stats.json')}\n"
            "Drop them to train on the folder as prepared, or prepare again with them: python -m data.prepare ..."
        )
    with open_dict(cfg):
        training = {k: _given(cfg, f"data.{k}") for k in TRAINING_KEYS if k in cfg.data}
        cfg.data = {**prepared, **training}
