from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import intentrec.config  # noqa: F401  (registers the ${repo_root:} resolver)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a visible skip when this checkout has no shared data beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (real-data tests need ../shared/data)")
    return SHARED_DATA


def compose_config(config_name: str, overrides: list[str]):
    """Compose a real root config from conf/ with overrides, as the entry points do (with the `hydra`
    node, so stages see which keys the command line gave, as under `python -m`)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
