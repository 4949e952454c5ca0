"""Export and serving work on any data set that trains: no context fields, a vocabulary of size 1, no
prices, no categories. Each case: a small CSV -> prepare -> train -> export with only ckpt_path -> answers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from intentrec.serving.export import export
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query, RequestError
from tests.conftest import compose_config

CASES = {
    # user, item and time only: every context field, category and price is missing.
    "ids_only": ["user_id", "item_id", "timestamp"],
    # one region and one device type (vocabularies of size 1), categories but no prices.
    "single_values": ["user_id", "item_id", "timestamp", "region", "device_type", "category_id"],
    # prices and event types but no categories.
    "prices_no_categories": ["user_id", "item_id", "timestamp", "event_type", "price"],
}


def write_events(path, columns, rows=3000, seed=0):
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for i in range(rows):
            item = int(rng.integers(0, 60))
            value = {
                "user_id": f"u{i % 150}",
                "item_id": f"i{item}",
                "timestamp": 1_700_000_000 + i * 60,
                "region": "north",
                "device_type": "mobile",
                "category_id": f"c{item % 5}",
                "event_type": "view" if i % 5 else "add_to_cart",
                "price": round(5 + item * 1.5, 2),
            }
            w.writerow([value[c] for c in columns])
    return path


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(case, bundle folder, manifest) of a model trained on the case's CSV and exported from its checkpoint."""
    from intentrec.data.prepare import run as prepare
    from intentrec.training.train import train

    case = request.param
    root = tmp_path_factory.mktemp(case)
    source = write_events(root / "events.csv", CASES[case])
    prepare(
        compose_config(
            "prepare", [f"artifacts_dir={root / 'art'}", "data=generic", f"data.path={source}", f"data.name={case}"]
        )
    )
    run = root / "run"
    train(compose_config("train", ["debug=fast", f"data_dir={root / 'art' / 'data' / case}", f"run_dir={run}"]))
    out = root / "bundle"
    manifest = export(
        compose_config("export", [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"export.out_dir={out}"])
    )
    return case, out, manifest


def test_export_needs_only_the_checkpoint_and_records_its_settings(exported):
    case, out, manifest = exported
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["settings"]["data"]["name"] == case and on_disk["settings"]["data"]["format"] == "csv"
    assert on_disk["forced"] == {} and on_disk["settings"]["data_dir"].endswith(f"data/{case}")


def test_the_bundle_answers_k_items_of_its_catalogue(exported):
    case, out, _ = exported
    recommender = Recommender(out)
    known = set(map(str, recommender.bundle.items["item_id"]))
    now = 1_700_000_000_000 + 3000 * 60_000
    query = Query(item_ids=["i3", "i7", "i3"], timestamps=[now - 120_000, now - 60_000, now], now=now, k=5)
    result = recommender.recommend([query])[0]
    assert not isinstance(result, RequestError), str(result)
    assert len(result.item_ids) == 5 and set(result.item_ids) <= known
    assert result.scores == sorted(result.scores, reverse=True)


def test_filters_the_catalogue_lacks_are_refused_naming_the_field(exported):
    case, out, _ = exported
    recommender = Recommender(out)
    row = {str(item): n + 1 for n, item in enumerate(recommender.bundle.items["item_id"])}
    by_category = recommender.recommend([Query(item_ids=["i3"], categories=["c1"], k=5)])[0]
    by_price = recommender.recommend([Query(item_ids=["i3"], min_price=10.0, max_price=40.0, k=5)])[0]
    if "category_id" in CASES[case]:
        assert not isinstance(by_category, RequestError), str(by_category)
        assert {recommender.catalogue.categories[row[i]] for i in by_category.item_ids} == {"c1"}
    else:
        assert isinstance(by_category, RequestError)
        assert "this catalogue has no categories (its data had no category column)" in str(by_category)
    if "price" in CASES[case]:
        assert not isinstance(by_price, RequestError), str(by_price)
        prices = [recommender.catalogue.prices[row[i]] for i in by_price.item_ids]
        assert prices and all(10.0 <= p <= 40.0 for p in prices)
    else:
        assert isinstance(by_price, RequestError)
        assert "this catalogue has no prices (its data had no price column)" in str(by_price)
