"""Off-policy estimates: a candidate policy's clicks per list, from the logs of an exploring arm.

    python -m serving.events estimate store=sqlite:///artifacts/events/events.db bundle=<candidate bundle> \\
        experiment=<name> arm=<exploring arm> [policy=model|no_context] [out=artifacts/off_policy]

An arm with `explore` > 0 (serving.explore) logs with every impression the probability that its policy
showed that item at that position (`propensity`). For each of that arm's lists this command rebuilds
the request the list answered from the stored events (the visit's own events before the list, its
latest device type, referrer and region, the list's time as `now`, its length as k), asks the candidate
(a bundle, in process; `policy=no_context` leaves the context out) for its list, and weighs every
logged click by whether the candidate would have put the clicked item at the same position:

- IPS: for each position p, the mean over lists of click(p) x [candidate's item at p = logged item at
  p] / propensity(p), summed over positions: the candidate's expected clicks per list, unbiased when
  a click depends on the item and its position only (the item-position model) and the exploring policy
  could show every item the candidate shows (its `explore_pool`);
- SNIPS: the same with each position's weights normalised to mean 1 (less variance, a small bias).

95% intervals by the delta method over shoppers (a shopper's lists are not independent). `matched`
is the share of positions where the candidate agrees with the logged item (the weights' support),
`effective_lists` the lists the estimate rests on (sum of weights squared over sum of squares). A
request that cannot be rebuilt (a list without the visit's events) is counted and left out.
Writes `off_policy.json`. The shop's requests must carry only what the events hold: the visit's events
and context (no loyalty or past purchases the events do not show), or the rebuilt request differs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from intentrec.errors import ConfigError, DataError
from intentrec.serving.events.export import EVENT_KEYS, read_frame, shopper_of
from intentrec.serving.events.report import Z95, influence

COLUMNS = (
    *EVENT_KEYS,
    "quantity",
    "channel",
    "device_type",
    "referrer",
    "region",
    "recommendation_id",
    "position",
    "experiment",
    "arm",
    "propensity",
)
POLICIES = ("model", "no_context")


@dataclass
class LoggedList:
    recommendation_id: str
    shopper: str
    time: int
    items: list[str]
    propensities: np.ndarray
    clicks: np.ndarray  # 1 where the item at that position was clicked


def logged_lists(events: pd.DataFrame, experiment: str, arm: str) -> tuple[list[LoggedList], dict]:
    impressions = events[
        (events["event_type"] == "impression") & (events["experiment"] == experiment) & (events["arm"] == arm)
    ]
    if impressions.empty:
        raise DataError(f"no impression of experiment {experiment!r}, arm {arm!r} in these events")
    if impressions["propensity"].isna().any():
        missing = int(impressions["propensity"].isna().sum())
        raise DataError(
            f"{missing} impressions of arm {arm!r} carry no propensity: the arm did not explore (set explore > 0 in "
            "its experiment config) or the shop did not log the propensities the server returned"
        )
    clicked = set(
        zip(
            events.loc[events["event_type"] == "click", "recommendation_id"],
            events.loc[events["event_type"] == "click", "item_id"],
        )
    )
    impressions = impressions.assign(shopper=shopper_of(impressions)).sort_values(["recommendation_id", "position"])
    lists = []
    for rid, group in impressions.groupby("recommendation_id", sort=False):
        items = group["item_id"].tolist()
        lists.append(
            LoggedList(
                rid,
                group["shopper"].iloc[0],
                int(group["event_time"].min()),
                items,
                group["propensity"].to_numpy(float),
                np.array([(rid, item) in clicked for item in items], float),
            )
        )
    return lists, {"lists": len(lists), "impressions": int(len(impressions))}


def rebuild(events: pd.DataFrame, lists: list[LoggedList], policy: str):
    """The request each list answered, from the visit's events before it; None where none can be rebuilt."""
    from intentrec.serving.request import Query

    first = events[events["event_type"] == "impression"].groupby("recommendation_id")["session_id"].first()
    actions = events[~events["event_type"].isin(("impression", "click")) & events["session_id"].notna()]
    actions = actions.sort_values(["session_id", "event_time"])
    by_session = {sid: frame for sid, frame in actions.groupby("session_id", sort=False)}
    queries = []
    for logged in lists:
        visit = by_session.get(first.get(logged.recommendation_id))
        if visit is None:
            queries.append(None)
            continue
        before = visit[visit["event_time"] <= logged.time]
        if before.empty:
            queries.append(None)
            continue
        context = {}
        if policy == "model":  # each context field's latest value in the visit
            for name in ("device_type", "referrer", "region"):
                known = before[name].dropna()
                if len(known):
                    context[name] = known.iloc[-1]
        queries.append(
            Query(
                item_ids=before["item_id"].tolist(),
                event_types=before["event_type"].tolist(),
                timestamps=before["event_time"].astype(int).tolist(),
                quantities=[int(q) if pd.notna(q) else 1 for q in before["quantity"]],
                now=logged.time,
                k=len(logged.items),
                **context,
            )
        )
    return queries


def estimate(lists: list[LoggedList], candidate: list[list[str]]) -> dict:
    """IPS and SNIPS clicks per list of `candidate` (its list per logged list), with 95% intervals over shoppers."""
    depth = max(len(x.items) for x in lists)
    shoppers = sorted({x.shopper for x in lists})
    index = {s: i for i, s in enumerate(shoppers)}
    clicks_weighted = np.zeros((len(shoppers), depth))  # sum over the shopper's lists of click x weight at p
    weights = np.zeros((len(shoppers), depth))
    counts = np.zeros(len(shoppers))
    all_weights, matched, positions = [], 0, 0
    for logged, mine in zip(lists, candidate):
        s = index[logged.shopper]
        counts[s] += 1
        for p, item in enumerate(logged.items):
            positions += 1
            same = p < len(mine) and mine[p] == item
            w = 1.0 / logged.propensities[p] if same else 0.0
            matched += same
            weights[s, p] += w
            clicks_weighted[s, p] += logged.clicks[p] * w
            all_weights.append(w)
    lists_total = counts.sum()
    ips = float(clicks_weighted.sum() / lists_total)
    ips_phi = influence(clicks_weighted.sum(axis=1), counts)
    snips, snips_phi = 0.0, np.zeros(len(shoppers))
    for p in range(depth):
        if weights[:, p].sum() > 0:
            snips += clicks_weighted[:, p].sum() / weights[:, p].sum()
            snips_phi += influence(clicks_weighted[:, p], weights[:, p])
    w = np.asarray(all_weights)

    def interval(value, phi):
        se = math.sqrt(phi.var(ddof=1) / len(phi)) if len(phi) > 1 else math.nan
        return [value - Z95 * se, value + Z95 * se]

    return {
        "ips": ips,
        "ips_ci": interval(ips, ips_phi),
        "snips": snips,
        "snips_ci": interval(snips, snips_phi),
        "matched": matched / positions if positions else 0.0,
        "effective_lists": float(w.sum() ** 2 / (w**2).sum() / depth) if (w**2).sum() > 0 else 0.0,
        "lists": int(lists_total),
        "shoppers": len(shoppers),
    }


def logged_clicks(lists: list[LoggedList]) -> dict:
    """The logging arm's own clicks per list (what it earned as it explored), with its interval."""
    shoppers = sorted({x.shopper for x in lists})
    index = {s: i for i, s in enumerate(shoppers)}
    clicks, counts = np.zeros(len(shoppers)), np.zeros(len(shoppers))
    for logged in lists:
        clicks[index[logged.shopper]] += logged.clicks.sum()
        counts[index[logged.shopper]] += 1
    value = float(clicks.sum() / counts.sum())
    se = math.sqrt(influence(clicks, counts).var(ddof=1) / len(shoppers)) if len(shoppers) > 1 else math.nan
    return {"value": value, "ci": [value - Z95 * se, value + Z95 * se]}


def run(out, source, bundle, experiment: str, arm: str, policy: str = "model") -> dict:
    """Estimate the candidate bundle's clicks per list from the exploring arm's logs; writes off_policy.json."""
    from intentrec.serving.recommender import Recommender

    if policy not in POLICIES:
        raise ConfigError(f"policy={policy!r}; expected one of {list(POLICIES)}")
    frame = read_frame(source, COLUMNS)
    lists, counts = logged_lists(frame, experiment, arm)
    queries = rebuild(frame, lists, policy)
    kept = [i for i, q in enumerate(queries) if q is not None]
    recommender = Recommender(Path(bundle))
    answers = []
    for start in range(0, len(kept), 256):
        answers += recommender.recommend([queries[i] for i in kept[start : start + 256]])
    candidate = [a.item_ids if hasattr(a, "item_ids") else [] for a in answers]
    document = {
        "experiment": experiment,
        "logging_arm": arm,
        "candidate": {"bundle": str(bundle), "policy": policy, "model_version": recommender.model_version},
        **counts,
        "lists_not_rebuilt": len(lists) - len(kept),
        "candidate_clicks_per_list": estimate([lists[i] for i in kept], candidate),
        "logging_clicks_per_list": logged_clicks(lists),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "off_policy.json").write_text(json.dumps(document, indent=2) + "\n")
    return document
