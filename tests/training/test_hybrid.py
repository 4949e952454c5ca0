"""The hybrid (two-tower logits + weight * log(eps + co-occurrence)): scores, tuning on val, configs, leaderboard rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from intentrec.errors import ConfigError
from intentrec.training.compare import main as compare
from tests.conftest import compose_config
from tests.training.conftest import FAST as TRAINING_FAST
from tests.training.conftest import run as run_entry_point

FAST = [*TRAINING_FAST, "ranker.enabled=false"]


def run(artifacts, run_dir, *overrides, config="train"):
    return run_entry_point(artifacts, run_dir, "ranker.enabled=false", *overrides, config=config)


def test_hybrid_scores_are_logits_plus_weighted_log_cooccurrence(artifacts, tmp_path):
    from intentrec.training.baselines import CoOccurrence
    from intentrec.training.datamodule import read_split
    from intentrec.training.hybrid import hybrid_scorer
    from intentrec.training.prepared import build_datamodule, prepared_data
    from intentrec.training.train import build_task

    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}", f"run_dir={tmp_path}"])
    data = prepared_data(cfg)
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    task = build_task(cfg, data, datamodule).eval()
    cooc = CoOccurrence(datamodule.train_counts, read_split(data.directory / "train.parquet"))
    batch = next(iter(datamodule.eval_loader("val")))
    with torch.no_grad():
        logits = (task.model.query(batch) @ task.model.item_embeddings().T * task.model.logit_scale()).double()
        hybrid = hybrid_scorer(task.model, cooc, 2.0, 0.1)(batch)
    counts = cooc(batch).numpy() - cooc.popularity[None, :]  # the baseline's scores without its tie-breaker
    expected = logits.numpy() + 2.0 * np.log(0.1 + counts)
    assert np.allclose(hybrid.numpy(), expected, atol=1e-9)
    assert (counts > 0).any(), "the tiny shop must have co-occurrence for this test to mean something"


def test_popularity_discount_divides_each_followers_counts_by_its_popularity(artifacts):
    from intentrec.training.baselines import CoOccurrence
    from intentrec.training.datamodule import read_split
    from intentrec.training.prepared import prepared_data

    data = prepared_data(compose_config("train", [*FAST, f"artifacts_dir={artifacts}"]))
    counts, train = data.padded("train_count"), read_split(data.directory / "train.parquet")
    raw = CoOccurrence(counts, train, window=5).matrix.toarray()
    discounted = CoOccurrence(counts, train, window=5, popularity_discount=0.5).matrix.toarray()
    assert np.allclose(discounted, raw / np.sqrt(np.maximum(counts, 1))[None, :])
    # The discount reorders a query's followers: popular items lose ground to rarer ones.
    row = int(np.argmax((raw > 0).sum(axis=1)))
    assert not np.array_equal(
        np.argsort(-raw[row], kind="stable")[:10], np.argsort(-discounted[row], kind="stable")[:10]
    )
    with pytest.raises(ConfigError, match=r"model\.popularity_discount=-1; expected a number >= 0"):
        CoOccurrence(counts, train, popularity_discount=-1)


def test_weight_zero_reproduces_the_model_and_the_best_weight_is_chosen_on_val(artifacts, tmp_path):
    metrics = run(
        artifacts, tmp_path / "zero", "hybrid.enabled=true", "hybrid.weights=[0]", "evaluate.sampled_negatives=20"
    )
    for split in ("val", "test"):
        for k in (5, 10, 20):
            assert metrics[f"hybrid_{split}/ndcg@{k}"] == pytest.approx(metrics[f"{split}/ndcg@{k}"], abs=1e-6)
            # The same sampled negatives for the model and its hybrid, so weight 0 gives the same figures.
            sampled = f"{split}_sampled20/ndcg@{k}"
            assert metrics[f"hybrid_{sampled}"] == pytest.approx(metrics[sampled], abs=1e-6)
    # Sampled figures come beside the full ranking, never in its place, and are far easier.
    assert metrics["test_sampled20/count"] == metrics["test/count"]
    assert metrics["test_sampled20/hr@10"] > metrics["test/hr@10"]
    assert "test_sampled20/hr@50" not in metrics
    assert "Sampled, not full ranking (test_sampled20" in (tmp_path / "zero" / "metrics.md").read_text()
    tuned = run(artifacts, tmp_path / "tuned", "hybrid.enabled=true", "hybrid.weights=[0,1,4]")
    info = json.loads((tmp_path / "tuned" / "metrics.json").read_text())["info"]["hybrid"]
    tried = {float(w): v for w, v in info["val_ndcg@10_by_weight"].items()}
    assert set(tried) == {0.0, 1.0, 4.0}
    assert info["weight"] == max(tried, key=tried.get)
    assert tuned["hybrid_val/ndcg@10"] == pytest.approx(max(tried.values()), abs=1e-6)
    assert "hybrid_test/intent_shift/ndcg@10" in tuned


def test_evaluate_applies_the_hybrid_to_a_saved_checkpoint(artifacts, tmp_path):
    trained = run(artifacts, tmp_path / "run", "hybrid.enabled=true", "hybrid.weights=[1]")
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    again = run(
        artifacts,
        tmp_path / "eval",
        f"ckpt_path={ckpt}",
        "hybrid.enabled=true",
        "hybrid.weights=[1]",
        config="evaluate",
    )
    assert again["hybrid_test/ndcg@10"] == pytest.approx(trained["hybrid_test/ndcg@10"], abs=1e-6)

    # A checkpoint trained before `hybrid.popularity_discount` existed: a setting it never recorded is
    # taken from the command line, not dropped.
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    del state["hyper_parameters"]["settings"]["hybrid"]["popularity_discount"]
    torch.save(state, ckpt)
    hybrid = {}
    for discount in (0, 1):
        metrics = run(
            artifacts,
            tmp_path / f"eval{discount}",
            f"ckpt_path={ckpt}",
            "hybrid.enabled=true",
            "hybrid.weights=[4]",
            f"hybrid.popularity_discount={discount}",
            config="evaluate",
        )
        info = json.loads((tmp_path / f"eval{discount}" / "metrics.json").read_text())["info"]["hybrid"]
        assert info["popularity_discount"] == discount
        hybrid[discount] = metrics["hybrid_val/ndcg@10"]
    assert hybrid[0] != hybrid[1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("hybrid.weights=[]", r"hybrid\.weights=\[\]; expected a non-empty list of numbers >= 0"),
        ("hybrid.weights=[1,-2]", r"hybrid\.weights=\[1, -2\]; expected a non-empty list of numbers >= 0"),
        ("hybrid.eps=0", r"hybrid\.eps=0; expected a number > 0"),
        ("hybrid.popularity_discount=-0.5", r"hybrid\.popularity_discount=-0\.5; expected a number >= 0"),
        ("hybrid.window=0", r"hybrid\.window=0; expected an integer >= 1"),
        ("hybrid.decay=-0.5", r"hybrid\.decay=-0\.5; expected a number >= 0"),
        ("hybrid.history=2.5", r"hybrid\.history=2\.5; expected an integer >= 1"),
    ],
)
def test_bad_hybrid_config_fails_before_training(artifacts, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run(artifacts, tmp_path, "hybrid.enabled=true", override)
    assert not (tmp_path / "checkpoints").exists()


def test_leaderboard_gives_each_stage_its_own_row(tmp_path):
    runs = tmp_path / "runs"
    for seed, (own, hybrid) in enumerate([(0.10, 0.14), (0.12, 0.16)]):
        folder = runs / f"gru-{seed}"
        folder.mkdir(parents=True)
        metrics = {
            "test/ndcg@10": own,
            "val/ndcg@10": own,
            "hybrid_test/ndcg@10": hybrid,
            "hybrid_val/ndcg@10": hybrid,
            "info": {"data": "shop", "model": "gru", "seed": seed},
        }
        (folder / "metrics.json").write_text(json.dumps(metrics))
    out = compare([str(runs), "--out", str(tmp_path / "board")])
    text = (out / "leaderboard.md").read_text()
    assert "| gru+cooccurrence | 2 | 0.1500 ± 0.0141 |" in text
    assert "| gru | 2 | 0.1100 ± 0.0141 |" in text
    assert text.index("gru+cooccurrence") < text.index("| gru | 2")  # sorted by test/ndcg@10
