"""Tracking and tuning the way researchers already work: loggers by `_target_` (MLflow read back by the
real mlflow client), the training task's return value, and Hydra's Optuna sweeper over 3 real trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from intentrec.errors import ConfigError
from tests.conftest import REPO_ROOT, compose_config
from tests.training.conftest import FAST, run


def test_mlflow_logger_writes_a_run_mlflow_reads_back(artifacts, tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = run(
        artifacts,
        tmp_path / "run",
        "logger=mlflow",
        f"logger.tracking_uri={store}",
        "trainer.max_epochs=2",
        "seed=3",
    )
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("intentrec-synthetic")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "dif_sr_filter-seed3"  # the default model
    assert found.info.status == "FINISHED"
    assert found.data.params["model/encoder"] == "dif_sr"
    assert found.data.params["model/embedding_dim"] == "16"
    # one validation per epoch during fit, then the final figures
    history = client.get_metric_history(found.info.run_id, "val/ndcg_at_10")
    assert len(history) >= 3
    assert found.data.metrics["test/ndcg_at_10"] == pytest.approx(metrics["test/ndcg@10"])
    assert found.data.metrics["rerank_test/ndcg_at_10"] == pytest.approx(metrics["rerank_test/ndcg@10"])
    assert any(key.startswith("train/loss") for key in found.data.metrics)


def test_no_logger_and_a_logger_argument_from_the_command_line(artifacts, tmp_path):
    run(artifacts, tmp_path / "none", "~logger", "ranker.enabled=false")
    assert not (tmp_path / "none" / "logs").exists()
    assert (tmp_path / "none" / "metrics.json").is_file()
    run(
        artifacts,
        tmp_path / "csv_elsewhere",
        "ranker.enabled=false",
        f"logger.save_dir={tmp_path / 'elsewhere'}",
    )
    assert (tmp_path / "elsewhere" / "logs" / "metrics.csv").is_file()


def test_training_returns_the_optimized_metric(artifacts, tmp_path):
    from intentrec.training.train import objective

    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}"])
    metrics = {"val/ndcg@10": 0.25, "val/hr@10": 0.5, "test/ndcg@10": 0.3}
    assert objective(cfg, metrics) == 0.25
    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}", "optimized_metric=val/hr@10"])
    assert objective(cfg, metrics) == 0.5
    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}", "optimized_metric=val/ndcg@7"])
    with pytest.raises(ConfigError, match=r"optimized_metric='val/ndcg@7' is not among this run's metrics"):
        objective(cfg, metrics)


@pytest.mark.slow
def test_optuna_sweeper_runs_three_trials_and_reports_the_study(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "training.train",
        "-m",
        "hparams_search=filter_mix",
        *FAST,
        f"artifacts_dir={tmp_path / 'artifacts'}",
        "ranker.enabled=false",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "INTENTREC_PROGRESS": "0"}
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = sorted(sweep.glob("*/metrics.json"))
    assert len(trials) == 3
    values, params = [], []
    for path in trials:
        metrics = json.loads(path.read_text())
        assert metrics["info"]["model"] == "filter_mix"
        values.append(metrics["val/ndcg@10"])
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        params.append({k: v for k, v in (o.split("=", 1) for o in overrides) if k.startswith(("optim.", "model."))})
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 3  # three different points of the space
    assert {"optim.lr", "model.dropout", "model.filter_mix"} <= set(params[0])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(values))
    best = params[values.index(max(values))]
    assert {k: str(v) for k, v in results["best_params"].items()} == best
    # the study is kept in its storage: optuna reads the same trials back
    import optuna

    stored = optuna.load_study(study_name="filter_mix", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert sorted(t.value for t in stored.trials) == pytest.approx(sorted(values))
    assert stored.best_params == results["best_params"]

    report = subprocess.run(
        [sys.executable, "-m", "training.study", str(sweep)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr
    study = (sweep / "study.md").read_text()
    rows = [line for line in study.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3
    assert f"{max(values):.4f}".rstrip("0") in rows[0]
    assert "python -m training.train model=filter_mix" in study


SEARCHES = sorted(path.stem for path in (REPO_ROOT / "conf" / "hparams_search").glob("*.yaml"))


@pytest.mark.parametrize("search", SEARCHES)
def test_every_search_space_names_keys_of_its_variant(search):
    from omegaconf import OmegaConf

    cfg = compose_config("train", [f"hparams_search={search}"])
    assert cfg.model.name == search and cfg.hydra.sweeper.direction == "maximize"
    for key in cfg.hydra.sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, f"{search}: {key} is not a key of the composed config"


def test_there_is_a_search_space_per_trained_variant():
    assert {"transformer", "filter_mix", "gru", "mean_pool", "cl4srec", "duorec", "bert4rec", "dif_sr"} <= set(SEARCHES)
