"""Experiment loggers, named in `conf/logger/*.yaml` by `_target_` like any Hydra-instantiated object.

    python -m training.train logger=csv            # <run>/logs/metrics.csv (the default)
    python -m training.train logger=tensorboard    # <run>/tensorboard (tensorboard --logdir <run>)
    python -m training.train logger=mlflow         # <artifacts_dir>/mlruns (pip install "intentrec[mlflow]")
    python -m training.train "~logger"             # no logger

Any Lightning logger (wandb, neptune, comet, ...) works the same way: a file in `conf/logger/` with its
class as `_target_` and its arguments beside it; `${run_dir}` in it is the run folder of this run.
MLflow refuses `@` in metric names, so `MLFlowLogger` writes `val/ndcg@10` as `val/ndcg_at_10`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from pytorch_lightning.loggers import MLFlowLogger as _LightningMLFlowLogger

from intentrec.errors import ConfigError

EXTRAS = {"mlflow": "intentrec[mlflow]"}  # module -> what to install, where the project has an extra for it


def mlflow_name(key: str) -> str:
    """A metric name as MLflow stores it: `val/ndcg@10` -> `val/ndcg_at_10`."""
    return key.replace("@", "_at_")


class MLFlowLogger(_LightningMLFlowLogger):
    """Lightning's MLflow logger with metric names MLflow accepts (`@` -> `_at_`, see `mlflow_name`)."""

    def __init__(self, *args, **kwargs):
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                f"logger=mlflow needs the Python package 'mlflow', which is not installed; "
                f'pip install "{EXTRAS["mlflow"]}", or choose logger=csv.'
            )
        super().__init__(*args, **kwargs)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({mlflow_name(key): value for key, value in metrics.items()}, step)


def build_logger(cfg):
    """The logger of `cfg.logger` (False when it is null), built after `cfg.run_dir` is set."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = cfg.get("logger")
    if node is None or (OmegaConf.is_dict(node) and not node):
        return False
    if "_target_" not in node:
        raise ConfigError(
            f"logger has no _target_ (it is {OmegaConf.to_container(node)}); choose logger=csv|tensorboard|mlflow "
            "or give a Lightning logger class as logger._target_."
        )
    try:
        return instantiate(node)
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, ConfigError):
            raise cause from None
        missing = _missing_module(cause)
        target = node["_target_"]
        if missing is not None:
            module = missing.split(".")[0]
            if importlib.util.find_spec(module) is None:
                install = f'"{EXTRAS[module]}"' if module in EXTRAS else module
                raise ConfigError(
                    f"logger._target_={target} needs the Python package {module!r}, which is not installed; "
                    f"pip install {install}, or choose logger=csv."
                ) from None
            raise ConfigError(
                f"logger._target_={target} cannot be imported ({missing} does not exist); check its spelling, "
                "e.g. pytorch_lightning.loggers.CSVLogger."
            ) from None
        raise ConfigError(f"logger._target_={target} could not be built: {cause}") from None


def _missing_module(error: BaseException | None) -> str | None:
    """The module name of the first ModuleNotFoundError in `error`'s cause chain, if any."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name:
            return error.name
        error = error.__cause__ or error.__context__
    return None
