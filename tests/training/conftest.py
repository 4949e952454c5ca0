"""Shared by the training tests: one tiny shop per module, and a call of the real entry points on it."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config

FAST = ["debug=fast", "data.num_events=20000"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One prepared tiny shop shared by the tests of a module."""
    return tmp_path_factory.mktemp("artifacts")


def run(artifacts, run_dir, *overrides, config="train"):
    """`training.train` (or `training.evaluate` with config="evaluate") on the tiny shop."""
    from intentrec.training.evaluate import evaluate
    from intentrec.training.train import train

    cfg = compose_config(config, [*FAST, f"artifacts_dir={artifacts}", f"run_dir={run_dir}", *overrides])
    return (train if config == "train" else evaluate)(cfg)
