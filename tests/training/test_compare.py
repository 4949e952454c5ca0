"""training.compare over real runs: mean ± std per variant, markdown, CSV and a plot."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from intentrec.training.compare import main as compare
from intentrec.training.train import train
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    artifacts = root / "artifacts"
    for model in ("popularity", "cooccurrence"):
        for seed in (0, 1):
            # Different shops per seed, so the two runs differ and the std is not trivially 0.
            cfg = compose_config(
                "train",
                [
                    "debug=fast",
                    f"model={model}",
                    f"seed={seed}",
                    f"data.seed={seed}",
                    f"artifacts_dir={artifacts}",
                    f"run_dir={root / 'multirun' / f'{model}-{seed}'}",
                    f"model.name={model}",
                ],
            )
            train(cfg)
    return root / "multirun"


def test_leaderboard_averages_seeds_per_variant(runs, tmp_path):
    out = compare([str(runs), "--out", str(tmp_path)])
    text = (out / "leaderboard.md").read_text()
    assert (
        "## synthetic (sorted by test/ndcg@10" in text
        and "| cooccurrence | 2 |" in text
        and "| popularity | 2 |" in text
    )
    values = [json.loads((runs / f"cooccurrence-{s}" / "metrics.json").read_text())["test/ndcg@10"] for s in (0, 1)]
    with open(out / "leaderboard.csv") as handle:
        rows = {r["variant"]: r for r in csv.DictReader(handle)}
    assert float(rows["cooccurrence"]["test/ndcg@10 mean"]) == pytest.approx(np.mean(values), abs=1e-6)
    assert float(rows["cooccurrence"]["test/ndcg@10 std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-6)
    assert np.std(values) > 0
    assert (out / "leaderboard.png").stat().st_size > 10_000


def test_compare_without_runs_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match=r"no metrics\.json under .*; train first"):
        compare([str(tmp_path)])


def test_tensorboard_logger_writes_event_files(tmp_path):
    cfg = compose_config(
        "train",
        [
            "debug=fast",
            "logger=tensorboard",
            "ranker.enabled=false",
            f"artifacts_dir={tmp_path / 'a'}",
            f"run_dir={tmp_path / 'run'}",
        ],
    )
    train(cfg)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_compare_names_a_path_that_is_not_a_run(tmp_path):
    with pytest.raises(
        SystemExit, match=r"missing is neither a run folder \(with metrics\.json\) nor a folder of runs"
    ):
        compare([str(tmp_path / "missing")])


def test_recbole_curves_join_the_learning_curves(tmp_path):
    from intentrec.training.compare import recbole_curves

    result = {
        "dataset": "lastfm",
        "model": "SASRec",
        "epochs": [
            {"epoch": 0, "seconds": 60.0, "train_seconds": 60.0, "val_ndcg10": 0.018},
            {"epoch": 1, "seconds": 61.0, "train_seconds": 121.0, "val_ndcg10": 0.041},
        ],
    }
    (tmp_path / "recbole_SASRec.json").write_text(json.dumps(result))
    curves = recbole_curves([tmp_path / "recbole_SASRec.json"])
    assert curves == {
        "lastfm": [
            (
                "RecBole SASRec",
                [
                    {"epoch": 0, "train_seconds": 60.0, "val/ndcg@10": 0.018},
                    {"epoch": 1, "train_seconds": 121.0, "val/ndcg@10": 0.041},
                ],
            )
        ]
    }
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"bad\.json is not a RecBole runner result"):
        recbole_curves([tmp_path / "bad.json"])
