"""One way to turn a plain `fn(cfg)` into a Hydra command line, shared by every stage's entry point.

User errors (`IntentrecError`: bad data or config) print one clear message and exit with status 2,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from intentrec.data import CONF_DIR
from intentrec.data.errors import IntentrecError

log = logging.getLogger(__name__)


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
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    from intentrec.data.errors import ConfigError

    try:
        return OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        full_key = getattr(error, "full_key", None) or key
        raise ConfigError(
            f"{full_key} must be given (it is ??? in the config); add {full_key}=<value> to the command line."
        ) from None
