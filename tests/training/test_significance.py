"""Paired significance tests over test examples: the statistics on known cases, and per-example ranks
written by real runs that reproduce their metrics and feed the leaderboard's p-values and learning curves."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from intentrec.training.significance import RanksMissing, compare_variants, paired_test, per_example
from tests.training.conftest import run


def test_permutation_p_value_matches_the_exact_enumeration():
    a = np.array([0.5, 0.2, 0.9, 0.4, 0.3, 0.8])
    b = np.array([0.1, 0.1, 0.5, 0.6, 0.1, 0.2])
    d = a - b
    flips = np.array(list(itertools.product((-1, 1), repeat=len(d))))
    exact = float((np.abs(flips @ d) >= abs(d.sum()) - 1e-12).mean())
    result = paired_test(a, b, resamples=40_000, seed=1)
    assert result.p_permutation == pytest.approx(exact, abs=0.01)
    assert result.difference == pytest.approx(d.mean())


def test_no_difference_is_not_significant_and_a_real_one_is():
    rng = np.random.default_rng(0)
    a = rng.random(2_000)
    same = paired_test(a, a.copy())
    assert same.difference == 0 and same.p_permutation == 1.0 and same.p_bootstrap == 1.0
    better = a + 0.01 + rng.normal(0, 0.05, a.shape)
    result = paired_test(better, a, resamples=2_000)
    assert result.p_permutation < 0.01 and result.p_bootstrap < 0.01
    assert result.ci_low < 0.01 < result.ci_high  # the interval covers the true shift
    assert paired_test(a, better, resamples=2_000).difference == pytest.approx(-result.difference)
    noise = a + rng.normal(0, 0.05, a.shape)
    assert paired_test(noise, a, resamples=2_000).p_permutation > 0.01


def test_runs_write_ranks_that_reproduce_their_metrics_and_feed_the_leaderboard(artifacts, tmp_path):
    from intentrec.training.compare import main as compare

    runs = tmp_path / "runs"
    metrics = {
        "transformer": run(
            artifacts, runs / "transformer", "model=transformer", "trainer.max_epochs=2", "hybrid.enabled=true"
        ),
        "popularity": run(artifacts, runs / "popularity", "model=popularity"),
    }
    for name, values in metrics.items():
        for stage in ("test", "rerank_test", "hybrid_test") if name == "transformer" else ("test",):
            for kind in ("ndcg@10", "hr@20", "mrr@10"):
                index, per = per_example(runs / name, f"{stage}/{kind}")
                assert len(index) == values[f"{stage}/count"]
                assert per.mean() == pytest.approx(values[f"{stage}/{kind}"], abs=1e-9)
    with pytest.raises(RanksMissing, match=r"has no rerank_test ranks"):
        per_example(runs / "popularity", "rerank_test/ndcg@10")
    result = compare_variants([runs / "transformer"], [runs / "popularity"], "test/ndcg@10", resamples=2_000)
    assert result.difference == pytest.approx(
        metrics["transformer"]["test/ndcg@10"] - metrics["popularity"]["test/ndcg@10"]
    )

    from intentrec.training.significance import main as significance

    staged = significance(["--a", str(runs / "transformer"), "--stage-a", "hybrid_", "--b", str(runs / "transformer"),
                           "--resamples", "500"])  # fmt: skip
    assert staged.difference == pytest.approx(
        metrics["transformer"]["hybrid_test/ndcg@10"] - metrics["transformer"]["test/ndcg@10"]
    )

    curve = json.loads((runs / "transformer" / "metrics.json").read_text())["info"]["learning_curve"]
    assert [point["epoch"] for point in curve] == [0, 1]
    assert (runs / "transformer" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    out = compare([str(runs), "--out", str(tmp_path / "compare")])
    text = (out / "leaderboard.md").read_text()
    assert "p vs best (test/ndcg@10)" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    best = max(("transformer", "transformer+ranker", "transformer+cooccurrence", "popularity"), key=lambda m: (
        metrics["transformer"][{"transformer": "test/ndcg@10", "transformer+ranker": "rerank_test/ndcg@10",
                                "transformer+cooccurrence": "hybrid_test/ndcg@10"}[m]]
        if m != "popularity" else metrics["popularity"]["test/ndcg@10"]
    ))  # fmt: skip
    assert rows[best].endswith("| best |")
    others = [m for m in rows if m not in (best, "variant", "---")]
    assert len(others) == 3
    for model in others:
        cell = rows[model].rsplit("|", 2)[1].strip()
        p_value = float(cell.removeprefix("<= "))
        assert 0 < p_value <= 1 and (not cell.startswith("<=") or p_value == pytest.approx(1 / 10_001, rel=0.01))
    assert "paired permutation p =" in text
    assert (out / "learning_curves-synthetic.png").stat().st_size > 10_000
