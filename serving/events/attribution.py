"""Attribution: which served list earned each add-to-cart and purchase, per placement, model version and arm.

    python -m serving.events attribute store=sqlite:///artifacts/events/events.db out=artifacts/attribution
    python -m serving.events attribute events=artifacts/events/export window_minutes=60 scope=shopper

Reads the feedback on served lists (impressions, clicks) and the add-to-cart and purchase events from
an event store (SQLite or Redis) or exported Parquet (a file or a folder with `events.parquet`) and joins
impression -> click -> add-to-cart -> purchase:

- A **list** is a `recommendation_id` with at least one stored impression; its labels (experiment,
  arm, model version, placement) are those of its impressions.
- A click counts for its list when that list has an impression of the clicked item; otherwise it is
  `unmatched` (reported, not counted).
- An add-to-cart or purchase of item X at time t **touches** a list when the list showed X in the same
  visit (`scope=session`: the same session id; `scope=shopper`: the same customer id, else device id,
  else session id) at a time in [t - window, t]; an event that names a list in its own
  `recommendation_id` touches that list whatever the item. **Last touch** credits the touching list
  whose impression came last (a list named by the event wins); **any touch** credits every touching
  list once. `clicked` says whether the item was clicked in the credited list (click-through), so
  view-through and click-through credit can be read apart.

Writes `attribution.json` (settings, counts, one row per group and per arm), `attribution.md` (the same
as tables) and `credits.parquet` (one row per credited event and list, with its touch model, labels,
units and revenue: the input of the goal-metric report). Units and revenue are `quantity` (default 1)
and `quantity x price` (0 where the price is missing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from intentrec.data.schema import FEEDBACK_TYPES
from intentrec.errors import ConfigError
from intentrec.serving.events.export import EVENT_KEYS, read_frame, shopper_of, source_name

ACTIONS = ("add_to_cart", "purchase")
READ_TYPES = FEEDBACK_TYPES + ACTIONS
COLUMNS = (
    *EVENT_KEYS,
    "price",
    "quantity",
    "recommendation_id",
    "placement",
    "experiment",
    "arm",
    "model_version",
)
GROUP = ("experiment", "arm", "model_version", "placement")
NONE = "(none)"
SCOPES = ("session", "shopper")
TOUCHES = ("last", "any")


@dataclass(frozen=True)
class AttributionSettings:
    window_minutes: float = 1440.0  # an action up to this long after the impression is credited to the list
    scope: str = "session"  # session: the same visit; shopper: the same customer (else device, else session)

    def check(self) -> None:
        if not (isinstance(self.window_minutes, int | float) and self.window_minutes > 0):
            raise ConfigError(f"window_minutes={self.window_minutes!r}; expected a number of minutes > 0")
        if self.scope not in SCOPES:
            raise ConfigError(f"scope={self.scope!r}; expected one of {list(SCOPES)}")


# ------------------------------------------------------------------------------------------------ joining


@dataclass
class Attribution:
    settings: AttributionSettings
    lists: pd.DataFrame  # one row per list: recommendation_id, labels, impressions, clicks, first_ms
    credits: pd.DataFrame  # one row per (action, list, touch): event_id, event_type, ..., clicked, units, revenue
    counts: dict  # events read, unmatched clicks and named lists, actions without a touch


def _visit(frame: pd.DataFrame, scope: str) -> pd.Series:
    return frame["session_id"] if scope == "session" else shopper_of(frame)


def attribute(events: pd.DataFrame, settings: AttributionSettings | None = None) -> Attribution:
    """Join impressions, clicks, add-to-carts and purchases (see the module's docstring)."""
    settings = settings or AttributionSettings()
    settings.check()
    window = int(settings.window_minutes * 60_000)
    events = events.drop_duplicates("event_id")
    events = events.assign(visit=_visit(events, settings.scope))
    kind = events["event_type"]
    impressions = events[kind == "impression"]
    for name in GROUP:
        impressions = impressions.assign(**{name: impressions[name].fillna(NONE)})
    lists = impressions.groupby("recommendation_id", sort=False).agg(
        **{name: (name, "first") for name in GROUP},
        impressions=("event_id", "size"),
        first_ms=("event_time", "min"),
    )
    shown = impressions[["recommendation_id", "item_id"]].drop_duplicates()

    clicks = events[kind == "click"][["event_id", "recommendation_id", "item_id"]]
    matched = clicks.merge(shown, on=["recommendation_id", "item_id"], how="left", indicator=True)
    matched = matched[matched["_merge"] == "both"]
    lists["clicks"] = matched.groupby("recommendation_id").size().reindex(lists.index, fill_value=0)
    clicked_pairs = matched[["recommendation_id", "item_id"]].drop_duplicates().assign(clicked=True)

    actions = events[kind.isin(ACTIONS)].copy()
    actions["units"] = actions["quantity"].fillna(1).astype("int64")
    actions["revenue"] = actions["units"] * actions["price"].fillna(0.0).astype("float64")
    named = actions["recommendation_id"].notna()
    named_known = named & actions["recommendation_id"].isin(lists.index)

    # Every (action, list) pair where the list showed the item in the same visit within the window.
    touches = actions[actions["visit"].notna()][["event_id", "visit", "item_id", "event_time"]].merge(
        impressions[["visit", "item_id", "event_time", "recommendation_id"]].dropna(subset=["visit"]),
        on=["visit", "item_id"],
        suffixes=("", "_shown"),
    )
    age = touches["event_time"] - touches["event_time_shown"]
    touches = touches[(age >= 0) & (age <= window)]
    touches = touches.sort_values("event_time_shown").drop_duplicates(["event_id", "recommendation_id"], keep="last")
    explicit = actions[named_known][["event_id", "recommendation_id"]].assign(
        event_time_shown=lambda f: f["recommendation_id"].map(lists["first_ms"]), named=True
    )
    pairs = pd.concat([touches[["event_id", "recommendation_id", "event_time_shown"]].assign(named=False), explicit])
    pairs = pairs.sort_values(["named", "event_time_shown"]).drop_duplicates(
        ["event_id", "recommendation_id"], keep="last"
    )
    any_touch = pairs.assign(touch="any")
    # Last touch: a list the event names wins, else the latest impression.
    last_touch = pairs.drop_duplicates("event_id", keep="last").assign(touch="last")

    credits = pd.concat([last_touch, any_touch], ignore_index=True).drop(columns=["event_time_shown"])
    credits = credits.merge(
        actions[["event_id", "event_type", "item_id", "event_time", "visit", "units", "revenue"]], on="event_id"
    )
    credits = credits.merge(lists[list(GROUP)], left_on="recommendation_id", right_index=True)
    credits = credits.merge(clicked_pairs, on=["recommendation_id", "item_id"], how="left")
    credits["clicked"] = credits["clicked"].astype("boolean").fillna(False).astype(bool)
    counts = {
        "events_read": int(len(events)),
        "impressions": int(len(impressions)),
        "lists": int(len(lists)),
        "clicks": int(len(clicks)),
        "clicks_unmatched": int(len(clicks) - len(matched)),
        "add_to_cart": int((actions["event_type"] == "add_to_cart").sum()),
        "purchase": int((actions["event_type"] == "purchase").sum()),
        "actions_naming_an_unknown_list": int((named & ~named_known).sum()),
        "actions_credited": int(last_touch["event_id"].nunique()),
    }
    return Attribution(settings, lists.reset_index(), credits, counts)


# ------------------------------------------------------------------------------------------------ summary


def _rate(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def summarize(result: Attribution, by: Iterable[str] = GROUP) -> list[dict]:
    """One row per group of `by` (labels of the lists): the funnel and the credited actions per touch model."""
    by = list(by)
    lists = result.lists.groupby(by, dropna=False).agg(
        lists=("recommendation_id", "size"),
        impressions=("impressions", "sum"),
        clicks=("clicks", "sum"),
        lists_clicked=("clicks", lambda c: int((c > 0).sum())),
    )
    rows = []
    for key, row in lists.iterrows():
        labels = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        out = {**labels, **{k: int(v) for k, v in row.items()}}
        out["ctr"] = _rate(out["clicks"], out["impressions"])
        out["list_ctr"] = _rate(out["lists_clicked"], out["lists"])
        mask = np.ones(len(result.credits), bool)
        for name, value in labels.items():
            mask &= (result.credits[name] == value).to_numpy()
        group = result.credits[mask]
        for touch in TOUCHES:
            credited = group[group["touch"] == touch]
            for event_type in ACTIONS:
                chosen = credited[credited["event_type"] == event_type]
                out[f"{touch}_{event_type}"] = int(len(chosen))
                out[f"{touch}_{event_type}_clicked"] = int(chosen["clicked"].sum())
            buys = credited[credited["event_type"] == "purchase"]
            out[f"{touch}_units"] = int(buys["units"].sum())
            out[f"{touch}_revenue"] = round(float(buys["revenue"].sum()), 2)
            out[f"{touch}_add_to_cart_per_click"] = _rate(out[f"{touch}_add_to_cart_clicked"], out["clicks"])
            out[f"{touch}_revenue_per_list"] = _rate(out[f"{touch}_revenue"], out["lists"])
        rows.append(out)
    return rows


def _markdown(rows: list[dict], by: list[str]) -> list[str]:
    columns = [*by, "lists", "impressions", "clicks", "ctr", "last_add_to_cart", "last_purchase", "last_revenue",
               "any_add_to_cart", "any_purchase", "any_revenue"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("-" if row[c] is None else str(row[c]) for c in columns) + " |")
    return lines


def write_report(result: Attribution, out: str | Path, source: str) -> dict:
    """attribution.json, attribution.md and credits.parquet under `out`; returns the JSON document."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_group = summarize(result)
    by_arm = summarize(result, ("experiment", "arm"))
    document = {
        "source": source,
        "settings": asdict(result.settings),
        "counts": result.counts,
        "by_arm": by_arm,
        "by_group": by_group,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "attribution.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [
        "# Attribution",
        "",
        f"Source: `{source}`. Window {result.settings.window_minutes:g} minutes, scope {result.settings.scope}. "
        "Last touch credits each add-to-cart and purchase to one list; any touch to every list that showed the "
        "item (serving/events/attribution.py).",
        "",
        "Counts: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in result.counts.items()) + ".",
        "",
        "## Per arm",
        "",
        *_markdown(by_arm, ["experiment", "arm"]),
        "",
        "## Per experiment, arm, model version and placement",
        "",
        *_markdown(by_group, list(GROUP)),
        "",
    ]
    (out / "attribution.md").write_text("\n".join(lines))
    result.credits.to_parquet(out / "credits.parquet", index=False)
    return document


def run(out: str | Path, source, settings: AttributionSettings | None = None) -> dict:
    """Read `source` (an EventStore, or the path of exported Parquet), attribute, write the report under `out`."""
    settings = settings or AttributionSettings()
    settings.check()
    frame = read_frame(source, COLUMNS, READ_TYPES)
    return write_report(attribute(frame, settings), out, source_name(source))
