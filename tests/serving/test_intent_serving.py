"""Intent signals served from a bundle: in `recommend`'s info, and alone from a light recommender (no index)."""

from __future__ import annotations

import json

import pytest

from intentrec.errors import ConfigError
from intentrec.serving.bundle import load_bundle
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query, RequestError


def test_the_bundle_carries_the_heads_calibration_and_what_they_scored(bundle):
    manifest = load_bundle(bundle).manifest
    assert manifest["intent"]["heads"] == ["purchase", "exit", "abandon", "next_category"]
    for head in ("purchase", "exit", "abandon"):
        assert 0.5 < manifest["intent"]["test"][head]["auc"] <= 1, head
    spec = json.loads((bundle / "intent.json").read_text())
    assert spec["heads"]["exit"]["method"] == "temperature" and spec["heads"]["exit"]["temperature"] > 0
    names = load_bundle(bundle).items["category"].astype(str)
    assert set(names) <= set(spec["next_category"]["names"])
    assert "intent.json" in manifest["files"]  # hashed and verified like every served file


def test_recommend_and_the_light_model_answer_the_same_signals(bundle):
    items = load_bundle(bundle).items["item_id"].astype(str)[:6].tolist()
    queries = [
        Query(item_ids=items[:3], event_types=["view", "add_to_cart", "view"], device_type="mobile"),
        Query(item_ids=items[3:], device_type="desktop", hour=21),
        Query(item_ids=["never-sold"]),
        Query(item_ids=items[:2], k=0),
    ]
    full, light = Recommender(bundle), Recommender(bundle, retrieval=False)
    listed, alone = full.recommend(queries), light.intent(queries)
    assert light.index is None and light.ranker is None
    for got, want in zip(alone[:2], listed[:2]):
        assert got.item_ids == [] and got.info["intent"] == want.info["intent"]
        signals = got.info["intent"]
        assert all(0 <= signals[h] <= 1 for h in ("purchase", "exit", "abandon"))
        assert len(signals["next_category"]) == 3
        assert 0 < sum(c["p"] for c in signals["next_category"]) <= 1 + 1e-6  # the top 3 of a distribution
    assert listed[0].info["intent"] != listed[1].info["intent"]  # the events and the device move them
    assert alone[2].info["intent"] is None and "no known event" in alone[2].info["fallback"]
    assert isinstance(alone[3], RequestError) and "k=0" in str(alone[3])  # refused as recommend refuses it
    with pytest.raises(ConfigError, match="intent signals only"):
        light.recommend(queries[:1])
