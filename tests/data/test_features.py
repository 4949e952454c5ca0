"""The feature rules of data/features.py on hand-made events (the replay test checks them end to end)."""

from __future__ import annotations

import numpy as np

from intentrec.data import features
from intentrec.data.schema import EVENT_TYPES

MINUTE = 60_000


def test_session_ids_decide_where_both_steps_have_one_and_the_pause_elsewhere():
    times = np.array([0, 10, 10 + 40 * MINUTE, 10 + 41 * MINUTE, 10 + 90 * MINUTE, 10 + 91 * MINUTE])
    sessions = np.array(["a", "a", "a", "b", "", ""], dtype=object)
    first = np.array([True, False, False, False, False, False])
    starts = features.session_starts(first, sessions, sessions != "", times)
    # a 40-minute pause under the same id: same session; a new id: new; no id after a 49-minute pause: new;
    # no id after one minute: same.
    assert starts.tolist() == [True, False, False, True, True, False]
    # Exactly the gap is not a new session; one millisecond more is (milliseconds, not whole seconds).
    pair = np.array([0, features.SESSION_GAP_MS]), np.array([0, features.SESSION_GAP_MS + 1])
    none = np.array(["", ""], dtype=object)
    assert [features.session_starts(np.array([True, False]), none, none != "", t)[1] for t in pair] == [False, True]
    assert features.session_starts(np.array([True, False]), none, none != "", None).tolist() == [True, False]


def test_gaps_hours_days_and_event_sets():
    times = np.array([5_000, 9_999, 3_000])
    assert features.step_gaps_seconds(times, np.array([True, False, False])).tolist() == [0, 4, 0]  # out of order: 0
    monday_noon = 1_767_614_400_000  # 2026-01-05 12:00 UTC, a Monday
    assert features.hour_codes(monday_noon) == 13 and features.day_codes(monday_noon) == 1
    assert features.day_codes(monday_noon + 6 * 86_400_000) == 7
    assert features.event_codes(features.PURCHASE_EVENTS, ("", *EVENT_TYPES)).tolist() == [4, 7]
    assert features.event_codes(features.PURCHASE_EVENTS, ["", "view", "purchase"]).tolist() == [2]


def test_the_cart_counts_units_and_a_store_purchase_leaves_it():
    events = [
        ("a", "add_to_cart", 2, 1),
        ("b", "add_to_cart", None, 2),
        ("a", "remove_from_cart", 1, 3),
        ("b", "store_purchase", 1, 4),
        ("c", "add_to_cart", 1, 5),
        ("c", "purchase", 1, 6),
        ("d", "view", None, 7),
    ]
    cart, changed, purchased = features.replay_cart(events)
    assert cart == {"a": 1, "b": 1} and changed == 5 and purchased == 6
    assert features.replay_cart([("a", "add_to_cart", 1, 1), ("a", "remove_from_cart", 3, 2)])[0] == {}


def test_value_buckets_use_the_fitted_edges_and_give_unknown_values_0():
    prices = np.array([1.0, 2.0, 2.0, 3.0, np.nan, 10.0, 20.0, 40.0])
    edges = features.bucket_edges(prices, 4)
    assert edges == sorted(set(edges)) and len(edges) == 3
    codes = features.value_buckets(prices, edges)
    assert codes[4] == 0 and codes[[0, 1, 3, 5, 7]].tolist() == sorted(codes[[0, 1, 3, 5, 7]].tolist())
    assert set(codes[~np.isnan(prices)].tolist()) <= {1, 2, 3, 4}
    # Constant values merge the edges into one; no known value at all gives no edges.
    assert features.bucket_edges(np.full(5, 7.0), 10) == [7.0]
    assert features.bucket_edges(np.full(3, np.nan), 10) == []
    assert features.value_buckets([5.0, 8.0, np.nan], []).tolist() == [1, 1, 0]


def test_purchases_before_a_window_are_the_last_ones_of_the_row_only():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 30, 200)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, 500, offsets[-1])
    types = rng.integers(1, 8, offsets[-1])
    purchase = features.event_codes(features.PURCHASE_EVENTS, ["", *EVENT_TYPES])
    rows = np.arange(len(lengths))
    starts = offsets[:-1] + features.window_starts(lengths, 10)
    got = features.purchases_before(items, types, offsets, rows, starts, 4, purchase)
    for row in rows:
        span = slice(offsets[row], starts[row])
        bought = items[span][np.isin(types[span], purchase)][-4:].tolist()
        assert got[row].tolist() == [0] * (4 - len(bought)) + bought, row
    assert features.window_starts([3, 10, 25], 10).tolist() == [0, 0, 15]


def test_the_hybrid_bonus_is_zero_without_co_occurrence_and_the_log_above_it():
    counts = np.array([0.0, 1.0, 9.5])
    bonus = features.hybrid_bonus(counts, 2.0, 0.1)
    assert bonus[0] == 0.0
    np.testing.assert_allclose(2.0 * np.log(0.1) + bonus, 2.0 * np.log(0.1 + counts), rtol=1e-12)
