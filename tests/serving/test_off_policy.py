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


def test_logs_an_estimate_cannot_use_are_named(tmp_path, capsys):
    import pandas as pd

    from intentrec.errors import DataError
    from intentrec.serving.events.__main__ import main as events_main
    from intentrec.serving.events.off_policy import COLUMNS, logged_lists

    rows = [
        {"event_id": f"e{p}", "event_time": 0, "session_id": "s", "device_id": "d", "item_id": f"i{p}",
         "event_type": "impression", "recommendation_id": "r", "position": p, "experiment": "x", "arm": "greedy",
         "propensity": None}
        for p in (1, 2)
    ]  # fmt: skip
    events = pd.DataFrame([{c: row.get(c) for c in COLUMNS} for row in rows])
    with pytest.raises(DataError, match=r"no impression of experiment 'x', arm 'explore' in these events"):
        logged_lists(events, "x", "explore")
    with pytest.raises(DataError, match=r"2 impressions of arm 'greedy' carry no propensity: the arm did not explore"):
        logged_lists(events, "x", "greedy")
    assert events_main(["estimate", f"events={tmp_path}", "experiment=x"]) == 2
    assert "estimate needs bundle=, arm=: the candidate's export bundle, its exploring arm" in capsys.readouterr().err
    args = ["estimate", f"events={tmp_path}", "bundle=b", "experiment=x", "arm=a", "policy=random"]
    assert events_main(args) == 2
    assert "policy='random'; expected one of ['model', 'no_context']" in capsys.readouterr().err
