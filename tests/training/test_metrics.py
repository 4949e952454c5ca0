"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from intentrec.errors import ConfigError
from intentrec.training.metrics import (
    RankingAccumulator,
    expected_metrics,
    mask_scores,
    sample_negatives,
    split_negatives,
    target_ranks,
)


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


def test_business_metrics_replay_matches_hand_computed_attribution():
    from intentrec.training.metrics import business_metrics

    view, cart, buy = 1, 2, 4
    replay = {
        "num_sessions": 3,
        # session 0 shows lists at steps 10 and 11, session 1 at 20, session 2 at 30 and 31
        "example_session": np.array([0, 0, 1, 2, 2]),
        "example_step": np.array([10, 11, 20, 30, 31]),
        "event_session": np.array([0, 0, 0, 0, 1, 1, 2, 2]),
        "event_step": np.array([10, 11, 12, 13, 20, 21, 30, 31]),
        "event_item": np.array([5, 7, 7, 9, 8, 2, 1, 3]),
        "event_type": np.array([view, cart, buy, buy, buy, cart, cart, view]),
        "event_value": np.array([0.0, 0.0, 40.0, 15.0, 10.0, 0.0, 0.0, 0.0]),
    }
    lists = np.array([[7, 3], [9, 4], [2, 8], [4, 6], [1, 1]])
    out = business_metrics(replay, lists, [1, 2], add_to_cart=cart, purchase=buy)
    # K=1: session 0 carts and buys 7 (shown at 10) and buys 9 (shown at 11); session 1 carts 2 (shown
    # at 20) but buys 8 (not in its top 1); session 2 carts 1 at step 30, before 1 is shown at 31.
    assert out["biz/atc_rate@1"] == pytest.approx(2 / 3)
    assert out["biz/conversion@1"] == pytest.approx(1 / 3)
    assert out["biz/revenue_per_session@1"] == pytest.approx(55 / 3)
    assert out["biz/aov@1"] == pytest.approx(55)
    # K=2: session 1's purchase of 8 (second in its list at step 20) counts too.
    assert out["biz/conversion@2"] == pytest.approx(2 / 3)
    assert out["biz/revenue_per_session@2"] == pytest.approx(65 / 3)
    assert out["biz/aov@2"] == pytest.approx(32.5)
    # The ceiling counts every cart add and purchase of the sessions.
    assert out["biz/session_atc_rate"] == pytest.approx(1.0)
    assert out["biz/session_conversion"] == pytest.approx(2 / 3)
    assert out["biz/revenue_per_session"] == pytest.approx(65 / 3)
    assert out["biz/sessions"] == 3


def test_session_replay_cuts_sessions_at_new_session_flags_and_row_starts():
    from intentrec.training.datamodule import Split, session_replay

    # two rows: [a b | c] and [d e]; '|' = new_session; targets at steps 1, 2 and 4
    steps = {
        "item_ids": np.array([1, 2, 3, 4, 5]),
        "event_types": np.array([1, 2, 4, 1, 4]),
        "new_session": np.array([1, 0, 1, 0, 0], bool),
        "prices": np.array([1.0, 2.0, 3.0, np.nan, 5.0], np.float32),
        "quantities": np.array([0, 1, 2, 0, 3]),
    }
    split = Split(offsets=np.array([0, 3, 5]), steps=steps, customer_known=np.ones(2, bool), loyalty=np.zeros(2))
    replay = session_replay(split, np.array([1, 2, 4]))
    assert replay["num_sessions"] == 3
    assert replay["example_session"].tolist() == [0, 1, 2]
    assert replay["event_step"].tolist() == [1, 2, 4]  # from each session's first evaluated step to its end
    assert replay["event_value"].tolist() == [2.0, 6.0, 15.0]


def test_sampled_negatives_avoid_history_and_target_and_are_the_same_for_every_model():
    # 3 examples over 50 items; example 1's history and target leave only items 40..50 to draw.
    seen = {
        "offsets": np.array([0, 2, 41, 41]),
        "items": np.concatenate([[3, 4], np.arange(1, 40)]),
        "targets": np.array([5, 40, 7]),
    }
    negatives = sample_negatives(seen, 50, 100, seed=0)
    assert negatives.shape == (3, 100)
    assert negatives.min() >= 1 and negatives.max() <= 50
    assert not np.isin(negatives[0], [3, 4, 5]).any()
    assert set(negatives[1]) <= set(range(41, 51))
    assert not (negatives[2] == 7).any()
    assert np.array_equal(negatives, sample_negatives(seen, 50, 100, seed=0))
    assert not np.array_equal(negatives, sample_negatives(seen, 50, 100, seed=1))


def test_sampled_metrics_rank_the_target_among_its_negatives_only():
    # 10 items; the target (item 9) scores below items 1..8 in the full ranking (position 8), but its
    # negatives are items 1 and 2 (position 2 of 3) for example 0 and item 10 (position 0) for example 1.
    scores = torch.tensor([[float("-inf")] + [9.0 - i for i in range(8)] + [0.5, 0.1]] * 2)
    accumulator = RankingAccumulator([1, 10], 10, np.ones(11), negatives=np.array([[1, 2], [10, 10]]))
    accumulator.add(scores, torch.tensor([9, 9]), {"all": np.array([True, True])}, np.array([0, 1]))
    result = accumulator.result("test")
    assert result["test/hr@10"] == pytest.approx(1.0) and result["test/hr@1"] == pytest.approx(0.0)
    assert result["test_sampled2/hr@1"] == pytest.approx(0.5)
    assert result["test_sampled2/ndcg@1"] == pytest.approx(0.5)
    assert result["test_sampled2/count"] == 2
    assert "test_sampled2/hr@10" not in result  # a cut-off above the negatives' count means nothing
    # Tied negatives get the expected position, as the full ranking does.
    tied = RankingAccumulator([1], 10, np.ones(11), negatives=np.array([[9, 9], [9, 9]]))
    ties = torch.zeros(2, 11)
    ties[:, 0] = float("-inf")
    tied.add(ties, torch.tensor([3, 4]), {"all": np.array([True, True])}, np.array([0, 1]))
    assert tied.result("val")["val_sampled2/hr@1"] == pytest.approx(1 / 3)


def test_sampled_negatives_config_is_checked():
    seen = {"offsets": np.array([0, 1]), "items": np.array([1]), "targets": np.array([2])}
    for bad in (-1, 1.5, True, "100", 10):
        with pytest.raises(ConfigError, match="evaluate.sampled_negatives"):
            split_negatives({"sampled_negatives": bad}, 10, seen)
    assert split_negatives({"sampled_negatives": 0}, 10, seen) is None
    with pytest.raises(ConfigError, match="needs the split's histories"):
        split_negatives({"sampled_negatives": 3}, 10, None)
    first = split_negatives({"sampled_negatives": 3, "sampled_seed": 4}, 10, seen)
    assert split_negatives({"sampled_negatives": 3, "sampled_seed": 4}, 10, seen) is first  # drawn once per split
    full = {"offsets": np.array([0, 9]), "items": np.arange(1, 10), "targets": np.array([10])}
    with pytest.raises(ConfigError, match="example 0 has no item left"):
        sample_negatives(full, 10, 5, seed=0)
