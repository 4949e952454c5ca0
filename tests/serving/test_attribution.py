"""Attribution of add-to-carts and purchases to served lists, over SQLite, Redis and exported Parquet."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from intentrec.errors import ConfigError
from intentrec.serving.events.__main__ import main as events_main
from intentrec.serving.events.attribution import COLUMNS, READ_TYPES, AttributionSettings, attribute, run, summarize
from intentrec.serving.events.export import export_events, read_frame
from intentrec.serving.events.schema import validate_events

T0 = 1_790_000_000_000
MINUTE = 60_000


def shown(rid, items, at, placement="home", arm="model", session="s1", customer=None):
    return [
        {
            "event_id": f"{rid}:impression:{position}",
            "event_type": "impression",
            "event_time": T0 + at * MINUTE,
            "item_id": item,
            "recommendation_id": rid,
            "position": position,
            "placement": placement,
            "experiment": "exp",
            "arm": arm,
            "model_version": "1" if arm == "model" else "popularity",
            "session_id": session,
            **({"customer_id": customer} if customer else {}),
        }
        for position, item in enumerate(items, start=1)
    ]


def act(event_id, kind, item, at, session="s1", customer=None, **fields):
    return {
        "event_id": event_id,
        "event_type": kind,
        "item_id": item,
        "event_time": T0 + at * MINUTE,
        "session_id": session,
        **({"customer_id": customer} if customer else {}),
        **fields,
    }


# Session s1 (arm "model"): list A shows i1 i2 i3, i2 is clicked; list B on a product page shows i2 i4;
# i2 goes into the cart (touches A and B: last touch B), then i2 is bought naming A (last touch A);
# i4 is bought 3 hours later (outside a 60-minute window). Customer c2 (arm "popularity") sees list C
# with i1 in session s2 and buys i1 in session s3. A click on a list never shown, a cart naming one.
SCENARIO = [
    *shown("A", ["i1", "i2", "i3"], at=0),
    act("A:click:i2", "click", "i2", at=1, recommendation_id="A", position=2),
    *shown("B", ["i2", "i4"], at=2, placement="product"),
    act("cart", "add_to_cart", "i2", at=3, quantity=1, price=10.0),
    act("buy", "purchase", "i2", at=4, quantity=2, price=10.0, recommendation_id="A"),
    act("late", "purchase", "i4", at=180, quantity=1, price=99.0),
    *shown("C", ["i1"], at=0, arm="popularity", session="s2", customer="c2"),
    act("other-visit", "purchase", "i1", at=5, session="s3", customer="c2", quantity=1, price=7.5),
    act("ghost-click", "click", "i1", at=6, recommendation_id="nowhere", position=1),
    act("ghost-cart", "add_to_cart", "i9", at=7, quantity=1, recommendation_id="nowhere"),
    act("v", "view", "i1", at=8),
]


def by_arm(result):
    return {row["arm"]: row for row in summarize(result, ("experiment", "arm"))}


def stored(store):
    events, rejected = validate_events(SCENARIO, T0)
    assert rejected == []
    store.append(events)
    return read_frame(store, COLUMNS, READ_TYPES)


def test_last_and_any_touch_follow_the_visit_the_window_and_the_named_list(store):
    result = attribute(stored(store), AttributionSettings(window_minutes=60))
    arms = by_arm(result)
    model = arms["model"]
    assert (model["lists"], model["impressions"], model["clicks"], model["ctr"]) == (2, 5, 1, 0.2)
    # Last touch: the cart goes to B (the latest list showing i2), the purchase to A (named by the event).
    assert (model["last_add_to_cart"], model["last_purchase"], model["last_revenue"]) == (1, 1, 20.0)
    # Any touch: both carts and purchases count for A and B; the late purchase of i4 for none.
    assert (model["any_add_to_cart"], model["any_purchase"], model["any_revenue"]) == (2, 2, 40.0)
    # Click-through: i2 was clicked in A, not in B.
    assert (model["last_add_to_cart_clicked"], model["any_add_to_cart_clicked"], model["any_purchase_clicked"]) == (
        0,
        1,
        1,
    )
    last = result.credits[result.credits["touch"] == "last"].set_index("event_id")["recommendation_id"].to_dict()
    assert last == {"cart": "B", "buy": "A"}
    popularity = arms["popularity"]
    assert (popularity["lists"], popularity["last_purchase"]) == (1, 0)  # bought in another session
    assert result.counts["clicks_unmatched"] == 1 and result.counts["actions_naming_an_unknown_list"] == 1
    # Per placement, model version and arm.
    groups = {(r["arm"], r["placement"]): r for r in summarize(result)}
    assert groups[("model", "home")]["last_purchase"] == 1 and groups[("model", "product")]["last_add_to_cart"] == 1


def test_a_longer_window_and_the_shopper_scope_credit_more(store):
    events = stored(store)
    wide = by_arm(attribute(events, AttributionSettings(window_minutes=240)))
    assert wide["model"]["any_purchase"] == 3 and wide["model"]["last_revenue"] == 119.0  # i4 from list B
    shopper = by_arm(attribute(events, AttributionSettings(window_minutes=60, scope="shopper")))
    assert (shopper["popularity"]["last_purchase"], shopper["popularity"]["last_revenue"]) == (1, 7.5)


def test_the_store_and_its_parquet_export_give_the_same_report(store, tmp_path):
    stored(store)
    from_store = run(tmp_path / "store", store, AttributionSettings(window_minutes=60))
    export_events(store, tmp_path / "export")
    code = events_main(
        ["attribute", f"events={tmp_path / 'export'}", "window_minutes=60", f"out={tmp_path / 'parquet'}"]
    )
    assert code == 0
    from_parquet = json.loads((tmp_path / "parquet" / "attribution.json").read_text())
    for key in ("counts", "by_arm", "by_group"):
        assert from_parquet[key] == from_store[key], key
    credits = pq.read_table(tmp_path / "parquet" / "credits.parquet").to_pydict()
    assert sorted(zip(credits["event_id"], credits["touch"], credits["recommendation_id"])) == [
        ("buy", "any", "A"),
        ("buy", "any", "B"),
        ("buy", "last", "A"),
        ("cart", "any", "A"),
        ("cart", "any", "B"),
        ("cart", "last", "B"),
    ]
    markdown = (tmp_path / "parquet" / "attribution.md").read_text()
    assert "| exp | model | 2 | 5 | 1 | 0.2 | 1 | 1 | 20.0 | 2 | 2 | 40.0 |" in markdown


def test_bad_attribution_settings_and_sources_say_what_to_fix(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"window_minutes=0; expected a number of minutes > 0"):
        AttributionSettings(window_minutes=0).check()
    assert events_main(["attribute", "events=" + str(tmp_path / "nothing"), f"out={tmp_path}"]) == 2
    assert "no such file; export the store first" in capsys.readouterr().err
    assert events_main(["attribute", "events=" + str(tmp_path), "scope=device", f"out={tmp_path}"]) == 2
    assert "scope='device'; expected one of ['session', 'shopper']" in capsys.readouterr().err
    (tmp_path / "events.parquet").write_text("not parquet")
    assert events_main(["attribute", "events=" + str(tmp_path), f"out={tmp_path / 'o'}"]) == 2
    assert "not a Parquet file" in capsys.readouterr().err
