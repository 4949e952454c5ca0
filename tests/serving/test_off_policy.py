"""Off-policy estimates on logs with a known truth: IPS and SNIPS recover a candidate's clicks per list."""

from __future__ import annotations

import numpy as np
import pytest

from intentrec.serving.events.off_policy import LoggedList, estimate

K, POOL, EPSILON = 5, 10, 0.5
EXAMINE = 1.0 / np.arange(1, K + 1) ** 0.8  # position-based click model: P(click) = examine(p) x attraction(item)


def logs(seed: int, lists: int, candidate_order: np.ndarray):
    """Lists logged by an epsilon-shuffle of a greedy ranking (serving.explore), the candidate's lists, and
    the candidate's true clicks per list."""
    rng = np.random.default_rng(seed)
    logged, candidate, truth = [], [], []
    for n in range(lists):
        attraction = np.sort(rng.uniform(0.05, 0.6, POOL))  # greedy ranks the least attractive first: a poor model
        items = [f"i{n}-{j}" for j in range(POOL)]
        greedy = np.arange(K)
        shown = rng.permutation(POOL)[:K] if rng.random() < EPSILON else greedy
        propensity = EPSILON / POOL + (1 - EPSILON) * (shown == greedy)
        clicks = (rng.random(K) < EXAMINE * attraction[shown]).astype(float)
        logged.append(LoggedList(f"r{n}", f"s{n // 3}", 0, [items[j] for j in shown], propensity, clicks))
        candidate.append([items[j] for j in candidate_order])
        truth.append(float((EXAMINE * attraction[candidate_order]).sum()))
    return logged, candidate, float(np.mean(truth))


@pytest.mark.parametrize("order", [np.arange(K), np.arange(POOL)[::-1][:K]], ids=["greedy", "best_first"])
def test_ips_and_snips_intervals_hold_the_candidates_true_clicks(order):
    logged, candidate, truth = logs(0, 6000, order)
    result = estimate(logged, candidate)
    own = float(np.mean([x.clicks.sum() for x in logged]))
    for name in ("ips", "snips"):
        low, high = result[f"{name}_ci"]
        assert low <= truth <= high, (name, result[name], truth)
    if order[0] != 0:  # a candidate unlike the logging policy: the estimate moves away from the logged clicks
        assert result["ips_ci"][0] > own and result["snips_ci"][0] > own
    assert 0 < result["matched"] < 1 and result["shoppers"] == 2000
