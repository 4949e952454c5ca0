"""Config resolution and the command line every stage shares (Hydra).

Importing this module registers the resolvers the configs use: `${repo_root:}` (the checkout, or
the current directory for an installed intentrec; intentrec.paths) and
`${dataset_name:${data_dir},${data.name}}` (a run's folder is named after the prepared folder it
trains on). `hydra_main` turns a plain `fn(cfg)` into a command line: user errors (`IntentrecError`:
bad data or config) print one clear message and exit with status 2, without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from intentrec.errors import ConfigError, IntentrecError
from intentrec.paths import CONF_DIR, REPO_ROOT

log = logging.getLogger(__name__)

OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
OmegaConf.register_new_resolver(
    "dataset_name", lambda data_dir, name: Path(str(data_dir)).name if data_dir else name, replace=True
)


def hydra_main(config_name: str, task: Callable) -> None:
    """Run `task(cfg)` under Hydra with the root config `conf/<config_name>.yaml`."""
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def main(cfg):
        try:
            return task(cfg)  # a sweeper (hydra/sweeper=optuna) optimizes what the task returns
        except IntentrecError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    main()


def config_dict(cfg, key: str) -> dict:
    """`cfg.<key>` resolved to a plain dict; a missing mandatory value (`???`) is a ConfigError naming it."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        full_key = getattr(error, "full_key", None) or key
        raise ConfigError(
            f"{full_key} must be given (it is ??? in the config); add {full_key}=<value> to the command line."
        ) from None
