"""The synthetic shop: exact, seeded, canonical, and its ground truth really is in the data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from intentrec.data.schema import (
    CHANNELS,
    CUSTOMER_SCHEMA,
    DEVICE_TYPES,
    EVENT_SCHEMA,
    EVENT_TYPES,
    ITEM_SCHEMA,
    REFERRERS,
)
from intentrec.data.synthetic import ShopConfig, generate
from intentrec.errors import ConfigError


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("shop")
    manifest = generate(ShopConfig(num_events=60_000, seed=3, chunk_events=20_000), out)
    events = pq.read_table(out / "events.parquet").to_pandas()
    items = pq.read_table(out / "items.parquet").to_pandas()
    sessions = pq.read_table(out / "truth" / "sessions.parquet").to_pandas()
    truth = pq.read_table(out / "truth" / "events.parquet").to_pandas()
    effects = json.loads((out / "truth" / "effects.json").read_text())
    return {
        "dir": out,
        "manifest": manifest,
        "events": events,
        "items": items,
        "sessions": sessions,
        "truth": truth,
        "effects": effects,
    }


def test_event_count_is_exact_and_written_in_bounded_chunks(shop):
    assert len(shop["events"]) == 60_000
    assert shop["manifest"]["counts"]["events"] == 60_000
    # chunk_events=20,000: one row group per chunk of whole sessions; memory is bounded by the chunk.
    metadata = pq.ParquetFile(shop["dir"] / "events.parquet").metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert 3 <= len(sizes) <= 4 and max(sizes) <= 20_000 and sum(sizes) == 60_000


def test_tables_follow_the_canonical_schema_and_enumerations(shop):
    schema = pq.read_schema(shop["dir"] / "events.parquet")
    assert schema.remove_metadata().equals(EVENT_SCHEMA.remove_metadata())
    events = shop["events"]
    assert set(events["event_type"]) == set(EVENT_TYPES)
    assert set(events["channel"]) == set(CHANNELS)
    assert set(events["device_type"].dropna()) == set(DEVICE_TYPES)
    assert set(events["referrer"].dropna()) <= set(REFERRERS)
    assert events["event_id"].is_unique
    assert (events["price"] > 0).all()
    assert pq.read_schema(shop["dir"] / "items.parquet").names[:4] == ITEM_SCHEMA.names
    assert pq.read_schema(shop["dir"] / "customers.parquet").names[:2] == CUSTOMER_SCHEMA.names


def test_same_seed_gives_identical_events_and_another_seed_does_not(tmp_path):
    a = generate(ShopConfig(num_events=3000, seed=5), tmp_path / "a")
    b = generate(ShopConfig(num_events=3000, seed=5), tmp_path / "b")
    c = generate(ShopConfig(num_events=3000, seed=6), tmp_path / "c")
    table = lambda m, d: pq.read_table(tmp_path / d / "events.parquet")  # noqa: E731
    assert table(a, "a").equals(table(b, "b"))
    assert not table(a, "a").equals(table(c, "c"))


def test_generation_is_reused_when_the_config_is_unchanged(tmp_path):
    first = generate(ShopConfig(num_events=2000, seed=1), tmp_path)
    stamp = (tmp_path / "events.parquet").stat().st_mtime_ns
    second = generate(ShopConfig(num_events=2000, seed=1), tmp_path)
    assert first["fingerprint"] == second["fingerprint"]
    assert (tmp_path / "events.parquet").stat().st_mtime_ns == stamp


def test_every_view_is_of_the_labelled_intent_category(shop):
    events = shop["events"].merge(shop["truth"], on="event_id")
    category = events["item_id"].map(shop["items"].set_index("item_id")["category_id"])
    views = events["event_type"] == "view"
    assert (category[views] == events.loc[views, "intent_category"]).all()


def test_intent_shifts_are_labelled_and_move_to_a_complementary_category(shop):
    sessions = shop["sessions"]
    shifted = sessions[sessions["shifted_to_category"].notna()]
    assert 0.15 < len(shifted) / (sessions["kind"] == "web").sum() < 0.5
    assert (shifted["shifted_to_category"] != shifted["intent_category"]).all()
    complements = shop["effects"]["complements"]
    to_complement = np.mean(
        [row.shifted_to_category in complements[row.intent_category] for row in shifted.itertuples()]
    )
    assert to_complement > 0.3  # complements get a strong boost: 4x above 2 / 29 by chance
    events = shop["events"].merge(shop["truth"], on="event_id")
    after = events[events["after_intent_shift"]]
    assert set(after["session_id"]) <= set(shifted["session_id"])


def test_context_changes_which_categories_are_likely(shop):
    """A device type's boosted categories are several times more common on that device than on others."""
    events = shop["events"].merge(shop["truth"], on="event_id")
    views = events[events["event_type"] == "view"]
    boosts = shop["effects"]["context_boosts"]
    for device in DEVICE_TYPES:
        boosted = views["intent_category"].isin(boosts["device_type"][device])
        on_device = boosted[views["device_type"] == device].mean()
        elsewhere = boosted[views["device_type"] != device].mean()
        assert on_device > 1.5 * elsewhere, (device, on_device, elsewhere)
    for referrer in ("search", "social", "ads"):
        boosted = views["intent_category"].isin(boosts["referrer"][referrer])
        assert boosted[views["referrer"] == referrer].mean() > 1.3 * boosted[views["referrer"] != referrer].mean()


def test_mobile_shoppers_see_cheaper_items_than_desktop_shoppers(shop):
    views = shop["events"][shop["events"]["event_type"] == "view"]
    items = shop["items"].set_index("item_id")
    tier = views["item_id"].map(items["price_tier"])
    premium = lambda device: (tier[views["device_type"] == device] == "premium").mean()  # noqa: E731
    assert premium("desktop") > 1.3 * premium("mobile")


def test_customers_use_several_devices_and_anonymous_sessions_log_in_later(shop):
    events = shop["events"]
    truth = shop["truth"].set_index("event_id")
    events = events.assign(true_customer=events["event_id"].map(truth["true_customer_id"]))
    web = events[events["device_type"].notna()]
    types_per_customer = web.groupby("true_customer")["device_type"].nunique()
    assert (types_per_customer >= 2).mean() > 0.3
    first_known = events.groupby("session_id")["customer_id"].agg(lambda s: (s.isna().iloc[0], s.notna().any()))
    late_logins = sum(1 for anonymous_start, known_later in first_known if anonymous_start and known_later)
    guests = sum(1 for anonymous_start, known_later in first_known if anonymous_start and not known_later)
    assert late_logins > 100 and guests > 50
    sessions = shop["sessions"].set_index("session_id")
    assert set(sessions.loc[[s for s, (a, k) in first_known.items() if a and k], "login"]) == {"late_login"}


def test_carts_purchases_emails_and_store_visits_are_consistent(shop):
    events = shop["events"]
    sessions = shop["sessions"].set_index("session_id")
    per_session = events.groupby("session_id")["event_type"].agg(set)
    abandoned = sessions.index[sessions["cart_abandoned"]].intersection(per_session.index)
    assert len(abandoned) > 100
    assert all("add_to_cart" in per_session[s] and "purchase" not in per_session[s] for s in abandoned[:-1])
    purchases = events[events["event_type"] == "purchase"]
    carted = set(
        zip(
            events.loc[events["event_type"] == "add_to_cart", "session_id"],
            events.loc[events["event_type"] == "add_to_cart", "item_id"],
        )
    )
    assert all(pair in carted for pair in zip(purchases["session_id"], purchases["item_id"]))
    clicks = events[events["event_type"] == "email_click"]
    assert len(clicks) > 0 and (clicks["channel"] == "email").all()
    assert (
        events.loc[events["session_id"].isin(clicks["session_id"]) & (events["event_type"] == "view"), "referrer"]
        == "email"
    ).all()
    store = events[events["channel"] == "store"]
    assert len(store) > 0
    assert (
        (store["event_type"] == "store_purchase").all()
        and store["device_id"].isna().all()
        and store["customer_id"].notna().all()
    )


def test_a_new_intent_starts_after_a_pause(shop):
    events = shop["events"].merge(shop["truth"], on="event_id").sort_values(["session_id", "event_time"], kind="stable")
    gap_s = events.groupby("session_id")["event_time"].diff().dt.total_seconds()
    shifted = events["after_intent_shift"].to_numpy()
    previous = np.r_[False, shifted[:-1]] & (
        events["session_id"].to_numpy() == np.r_[None, events["session_id"].to_numpy()[:-1]]
    )
    new_intent = shifted & ~previous & (events["event_type"] == "view").to_numpy() & gap_s.notna().to_numpy()
    low, high = shop["effects"]["shift_pause_s"]
    assert new_intent.sum() > 100
    assert ((gap_s[new_intent] >= low - 1) & (gap_s[new_intent] <= high + 1)).all()
    browsing = gap_s[~new_intent & (events["event_type"] == "view").to_numpy() & gap_s.notna().to_numpy()]
    assert (browsing > low).mean() < 0.05  # ordinary browsing gaps rarely reach the pause: the gap signals a shift


def test_bad_shop_config_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.num_events=10; expected 1,000 to 50,000,000 events"):
        ShopConfig(num_events=10).resolved()
    with pytest.raises(ConfigError, match=r"data\.intent_shift_prob=1\.5; expected a probability in \[0, 1\]"):
        ShopConfig(intent_shift_prob=1.5).resolved()
    with pytest.raises(ConfigError, match=r"data\.catalog_size=10 is below 3 x data\.num_categories=90"):
        ShopConfig(catalog_size=10).resolved()
    with pytest.raises(ConfigError, match=r"data\.shift_pause_s=2000\.0; expected 0 to 1,000 seconds"):
        ShopConfig(shift_pause_s=2000.0).resolved()


def test_prepared_shop_keeps_context_per_step(shop, tmp_path):
    from intentrec.data.prepare import run
    from tests.conftest import compose_config

    stats = run(
        compose_config(
            "prepare", ["data=synthetic", "data.num_events=4000", "data.seed=2", f"artifacts_dir={tmp_path}"]
        )
    )
    test = pq.read_table(tmp_path / "data" / "synthetic" / "test.parquet").to_pandas()
    steps = test.explode(["item_ids", "device_types", "referrers", "hours", "days_of_week", "channels", "regions"])
    assert set(steps["device_types"]) <= {0, 1, 2, 3} and (steps["device_types"] > 0).any()
    assert steps["hours"].between(1, 24).all() and steps["days_of_week"].between(1, 7).all()
    assert (steps["regions"] > 0).all()
    # Every known synthetic customer has a loyalty flag; device-only (never logged in) sequences do not.
    assert (test.loc[test["customer_known"], "loyalty"] > 0).all()
    assert (test.loc[~test["customer_known"], "loyalty"] == 0).all()
    items = pd.read_parquet(tmp_path / "data" / "synthetic" / "items.parquet")
    assert (items["category_idx"] > 0).all() and (items["price_bucket"] > 0).all()
    assert stats["shop"]["counts"]["events"] == 4000


def test_new_arrivals_are_never_seen_before_their_launch(shop):
    items = shop["items"].set_index("item_id")
    launched = shop["events"]["item_id"].map(items["first_available"])
    assert (shop["events"]["event_time"] >= launched).all()
    new = items[items["first_available"] > items["first_available"].min()]
    assert 0.05 < len(new) / len(items) < 0.15  # new_item_share=0.1
    assert shop["events"]["item_id"].isin(new.index).any()


def test_data_synthetic_cli_refuses_another_dataset(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "-m", "data.synthetic", "data=yoochoose", f"artifacts_dir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "data='yoochoose' is not the synthetic shop; run python -m data.synthetic data=synthetic." in result.stderr
