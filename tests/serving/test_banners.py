"""Banners and content slots ranked for the shopper: the catalogue file's checks, the ranking after an intent
shift against the popular banner, and the fallback (tests/serving/test_triton.py serves the `banners` model)."""

from __future__ import annotations

import numpy as np
import pytest

from intentrec.errors import ConfigError
from intentrec.serving.banners import load_banners
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query, RequestError
from tests.conftest import CONF_DIR

BANNERS = CONF_DIR / "banners" / "synthetic.yaml"
T0 = 1_772_000_000_000


@pytest.fixture(scope="module")
def recommender(bundle):
    return Recommender(bundle, banners=BANNERS)


def shift(recommender, old: str, new: str) -> Query:
    """4 views of the most popular items of `old`, then 2 of `new` (40 s apart)."""
    _, top = recommender.bundle.items_by_category()
    items = top[old][:4] + top[new][:2]
    return Query(item_ids=items, timestamps=[T0 + 40_000 * i for i in range(6)], now=T0 + 300_000, k=20)


def test_after_an_intent_shift_the_new_intents_banner_wins_over_the_popular_one(recommender, shop_truth):
    banners = load_banners(BANNERS)
    banner_of = {c: b["id"] for b in banners for c in b.get("categories", [])}
    popular = banners[int(recommender.banner_set.popularity_share.argmax())]["id"]
    pairs = [(a, shop_truth["complements"][a][0]) for a in sorted(shop_truth["complements"])[:12]]
    pairs = [(old, new) for old, new in pairs if banner_of[new] != popular][:10]
    wins, first = 0, 0
    for old, new in pairs:
        reply = recommender.banners([shift(recommender, old, new)])[0]
        order = reply.item_ids
        assert len(order) == len(banners) and reply.info["banner_parts"] == "intent+items"  # k=20: all 16
        assert reply.scores == sorted(reply.scores, reverse=True) and reply.info["banners"][0]["id"] == order[0]
        wins += order.index(banner_of[new]) < order.index(popular)
        first += order[0] == banner_of[new]
    # Ranked by popularity, the popular banner would come first every time.
    assert len(pairs) == 10 and wins >= 8 and first >= 6, (wins, first)


def test_a_request_without_known_events_gets_the_banners_by_popularity(recommender):
    reply = recommender.banners([Query(item_ids=["never-sold"], k=3)])[0]
    share = recommender.banner_set.popularity_share
    assert reply.info["fallback"] == "popularity" and len(reply.item_ids) == 3
    np.testing.assert_allclose(reply.scores, np.sort(share)[::-1][:3], atol=1e-6)
    assert isinstance(recommender.banners([Query(item_ids=["x"], k=0)])[0], RequestError)
    assert "no banner catalogue" in str(Recommender(recommender.bundle.directory).banners([Query(item_ids=["x"])])[0])


def test_price_and_brand_banners_promote_their_items(bundle):
    banners = [
        {"id": "cheap", "max_price": 10},
        {"id": "brand", "brands": ["beauty-brand0"]},
        {"id": "beauty", "categories": ["beauty"]},
    ]
    recommender = Recommender(bundle, banners=banners)
    c = recommender.catalogue
    members = recommender.banner_set.members
    assert (c.prices[members[0]] <= 10).all() and members[0].sum() > 10
    assert set(c.categories[members[1]]) == {"beauty"} and members[1].sum() < members[2].sum()
    _, top = recommender.bundle.items_by_category()
    reply = recommender.banners([Query(item_ids=top["beauty"][:5])])[0]
    assert reply.item_ids[0] in ("beauty", "brand"), reply.item_ids


@pytest.mark.parametrize(
    "entries,message",
    [
        ([{"id": "a", "colour": "red", "categories": ["beauty"]}], r"banner 0: unknown key\(s\) \['colour'\]"),
        ([{"id": "a", "categories": ["beauty"]}, {"id": "a", "max_price": 5}], "id 'a' is used twice"),
        ([{"id": "a", "title": "no filter"}], "banner 'a' has no filter; give categories, brands"),
        ([{"id": "a", "max_price": -1}], "`max_price` must be a price >= 0, got -1"),
        ([{"id": "a", "min_price": 9, "max_price": 5}], "min_price 9 is above max_price 5"),
        ([{"id": "a", "categories": "beauty"}], "`categories` must be a non-empty list of names"),
        ([{"id": ""}], "`id` must be a non-empty string"),
    ],
)
def test_a_bad_banner_file_is_refused_naming_the_banner_and_the_field(entries, message):
    with pytest.raises(ConfigError, match=message):
        load_banners(entries)


def test_banners_that_match_nothing_or_name_unknown_values_are_refused(bundle, tmp_path):
    for entries, message in [
        ([{"id": "x", "categories": ["dressess"]}], r"categories \['dressess'\] are not in the catalogue"),
        ([{"id": "x", "brands": ["nobody"]}], r"brands \['nobody'\] are not in the catalogue"),
        ([{"id": "x", "categories": ["beauty"], "min_price": 1e9}], "matches no item of the catalogue"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Recommender(bundle, banners=entries)
    (tmp_path / "bad.yaml").write_text("banners: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_banners(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="banners file .* not found"):
        load_banners(tmp_path / "missing.yaml")
