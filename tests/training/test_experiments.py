"""Every experiment config composes, and a tiny run of each trains on its dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intentrec.training.train import train
from tests.conftest import CONF_DIR, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_there_is_an_experiment_per_dataset():
    assert {"synthetic", "diginetica", "yoochoose", "amazon_video_games", "lastfm", "yelp"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_carries_its_run_command(experiment):
    cfg = compose_config("train", [f"experiment={experiment}"])
    assert cfg.data.name == experiment
    text = (CONF_DIR / "experiment" / f"{experiment}.yaml").read_text()
    assert "python -m training.train -m experiment=" + experiment in text


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e != "synthetic"])
def test_experiment_smoke_run_trains_on_the_real_dataset(shared_data, tmp_path, experiment):
    cfg = compose_config(
        "train",
        [
            f"experiment={experiment}",
            "debug=fast",
            "trainer.max_epochs=1",
            "hybrid.enabled=false",  # Amazon's hybrid evaluation alone takes 50 s here; tests/training/test_hybrid.py covers it
            f"artifacts_dir={tmp_path}",
            f"run_dir={tmp_path / 'run'}",
        ],
    )
    metrics = train(cfg)
    assert metrics["test/count"] > 1000
    assert json.loads(Path(tmp_path / "run" / "metrics.json").read_text())["info"]["data"] == experiment
