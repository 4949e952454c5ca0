"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.metrics import RankingAccumulator, expected_metrics, mask_scores, target_ranks


def test_ranks_count_greater_and_tied_items():
    scores = torch.tensor([[float("-inf"), 0.9, 0.5, 0.5, 0.1, 0.7]])
    greater, ties = target_ranks(scores, torch.tensor([2]))
    assert greater.tolist() == [2] and ties.tolist() == [1]


def test_tied_target_gets_the_expectation_over_its_possible_positions():
    # Position 2 or 3 with probability 1/2 each.
    at3 = expected_metrics(np.array([2]), np.array([1]), 3)
    assert at3["hr@3"][0] == pytest.approx(0.5)
    assert at3["ndcg@3"][0] == pytest.approx(0.5 * 1 / math.log2(4))
    assert at3["mrr@3"][0] == pytest.approx(0.5 * 1 / 3)
    at5 = expected_metrics(np.array([2]), np.array([1]), 5)
    assert at5["hr@5"][0] == pytest.approx(1.0)
    assert at5["ndcg@5"][0] == pytest.approx((1 / math.log2(4) + 1 / math.log2(5)) / 2)
    assert at5["mrr@5"][0] == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_untied_ranks_give_the_textbook_values():
    metrics = expected_metrics(np.array([0, 4, 10]), np.array([0, 0, 0]), 10)
    assert metrics["hr@10"].tolist() == [1.0, 1.0, 0.0]
    assert metrics["ndcg@10"] == pytest.approx([1.0, 1 / math.log2(6), 0.0])
    assert metrics["mrr@10"] == pytest.approx([1.0, 1 / 5, 0.0])


def test_a_constant_scorer_is_no_better_than_random():
    # 100 items all tied: expected HR@10 = 10/100 exactly, not 1 (optimistic) or 0 (pessimistic).
    scores = torch.zeros(1, 101)
    scores = mask_scores(scores, np.array([0]), None, exclude_seen=False)
    accumulator = RankingAccumulator([10], 100, np.ones(101))
    accumulator.add(scores, torch.tensor([7]), {"all": np.array([True])})
    assert accumulator.result("test")["test/hr@10"] == pytest.approx(0.10)


def test_exclude_seen_removes_history_items_and_padding():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    seen = {"offsets": np.array([0, 2, 3]), "items": np.array([1, 2, 4])}
    masked = mask_scores(scores.clone(), np.array([0, 1]), seen, exclude_seen=True)
    assert torch.isinf(masked[0, [0, 1, 2]]).all() and masked[0, 3] == 2.0
    assert torch.isinf(masked[1, [0, 4]]).all() and masked[1, 1] == 4.0
    kept = mask_scores(scores.clone(), np.array([0, 1]), seen, exclude_seen=False)
    assert torch.isinf(kept[:, 0]).all() and kept[0, 1] == 4.0


def test_accumulator_reports_slices_coverage_and_popularity():
    scores = torch.tensor([[float("-inf"), 3.0, 2.0, 1.0], [float("-inf"), 1.0, 2.0, 3.0]])
    accumulator = RankingAccumulator([1, 2], 3, np.array([0, 10, 20, 30]))
    accumulator.add(scores, torch.tensor([1, 1]), {"all": np.array([True, True]), "shift": np.array([False, True])})
    result = accumulator.result("val")
    assert result["val/hr@1"] == pytest.approx(0.5)  # first example ranks its target 1st, the second 3rd
    assert result["val/shift/hr@2"] == pytest.approx(0.0)
    assert result["val/shift/count"] == 1 and result["val/count"] == 2
    assert result["val/coverage@1"] == pytest.approx(2 / 3)  # items 1 and 3 are someone's top-1
    assert result["val/avg_popularity@1"] == pytest.approx((10 + 30) / 2)
