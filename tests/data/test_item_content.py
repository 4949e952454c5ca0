"""Item content from files: items tables (CSV, Parquet) and the S3-Rec attribute JSON reach the item tower
as categorical, multi-valued (bag) and numeric (bucketed) features; bad files name file, item and value."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from intentrec.data.prepare import run as prepare
from intentrec.errors import ConfigError, DataError
from tests.conftest import compose_config


def write_events(path, items=40, rows=2500):
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        for i in range(rows):
            w.writerow([f"u{i % 120}", f"i{rng.integers(0, items)}", 1_700_000_000 + i * 60])
    return path


def write_items(path, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows(rows)
    return path


def prepared(tmp_path, *overrides, events=None):
    events = events or write_events(tmp_path / "events.csv")
    cfg = compose_config(
        "prepare",
        [f"artifacts_dir={tmp_path / 'art'}", "data=generic", f"data.path={events}", "data.name=shop", *overrides],
    )
    stats = prepare(cfg)
    folder = tmp_path / "art" / "data" / "shop"
    vocab = json.loads((folder / "vocab.json").read_text())
    items = pq.read_table(folder / "items.parquet").to_pydict()
    row = {item: n for n, item in enumerate(items["item_id"])}
    return stats, vocab, items, row


def test_an_items_csv_gives_categorical_multi_valued_and_numeric_features(tmp_path):
    rows = [["item_id", "tags", "weight", "color", "shelf"]]
    for n in range(40):
        tags = "|".join(f"t{(n + k) % 7}" for k in range(n % 4))  # 0 to 3 tags; n % 4 == 0: none
        rows.append([f"i{n}", tags, "" if n % 10 == 0 else str(n * 1.5), ["red", "blue"][n % 2], str(100 + n % 3)])
    rows.append(["only_in_file", "t1", "2", "red", "100"])
    items_file = write_items(tmp_path / "items.csv", rows)
    stats, vocab, items, row = prepared(
        tmp_path, f"data.items.path={items_file}", "data.items.lists=[tags]", "data.items.categorical=[shelf]"
    )
    assert vocab["item_attribute_kinds"] == {
        "tags": "multi",
        "weight": "numeric",
        "color": "categorical",
        "shelf": "categorical",
    }
    assert vocab["item_attributes"]["tags"] == ["<unknown>", *(f"t{k}" for k in range(7))]
    assert vocab["item_attributes"]["shelf"] == ["<unknown>", "100", "101", "102"]
    code = {value: c for c, value in enumerate(vocab["item_attributes"]["tags"])}
    # i7: tags t0|t1|t2 -> their codes in file order; i4: no tags -> an empty bag; i10: no weight -> bucket 0.
    assert items["tags_idx"][row["i7"]] == [code["t0"], code["t1"], code["t2"]] and items["tags_idx"][row["i4"]] == []
    assert (
        items["weight_idx"][row["i10"]] == 0
        and items["weight_idx"][row["i39"]] == len(vocab["item_attribute_edges"]["weight"]) + 1
    )
    assert items["color_idx"][row["i1"]] == vocab["item_attributes"]["color"].index("blue")
    assert "only_in_file" not in row  # items without events are not in the catalogue
    kinds = {"tags": "multi", "weight": "numeric", "color": "categorical", "shelf": "categorical"}
    assert stats["items_file"] == {"file": str(items_file), "rows": 41, "attributes": kinds}
    assert str(items_file) in {f["path"] for f in stats["source_files"]}


def test_parquet_list_columns_are_bags_and_canonical_names_keep_their_meaning(tmp_path):
    table = pa.table(
        {
            "item_id": [f"i{n}" for n in range(40)],
            "genres": [[f"g{n % 3}", f"g{(n + 1) % 3}"] if n % 5 else None for n in range(40)],
            "year": pa.array([1990 + n for n in range(40)], pa.int64()),
            "category_id": [f"c{n % 4}" for n in range(40)],
            "price": [float(n) for n in range(40)],
        }
    )
    pq.write_table(table, tmp_path / "items.parquet")
    _, vocab, items, row = prepared(tmp_path, f"data.items.path={tmp_path / 'items.parquet'}")
    assert vocab["item_attribute_kinds"] == {"genres": "multi", "year": "numeric"}
    assert vocab["categories"] == ["<unknown>", "c0", "c1", "c2", "c3"] and items["category_id"][row["i6"]] == "c2"
    assert items["price"][row["i7"]] == 7.0 and items["genres_idx"][row["i5"]] == []
    assert len(items["genres_idx"][row["i6"]]) == 2


@pytest.mark.parametrize("model", ["transformer", "filter_mix", "cl4srec", "duorec", "bert4rec", "dif_sr"])
def test_the_s3rec_attribute_json_reaches_the_item_tower_and_new_items_by_their_attributes(tmp_path, model):
    from intentrec.serving.bundle import add_items
    from intentrec.serving.export import export
    from intentrec.training.datamodule import PreparedData
    from intentrec.training.train import train

    rng = np.random.default_rng(1)
    lines = [" ".join([str(u)] + [str(rng.integers(1, 31)) for _ in range(rng.integers(5, 15))]) for u in range(1, 121)]
    (tmp_path / "Shop.txt").write_text("\n".join(lines) + "\n")
    attributes = {str(i): [int(a) for a in rng.integers(1, 12, rng.integers(1, 6))] for i in range(1, 31)}
    (tmp_path / "Shop_item2attributes.json").write_text(json.dumps(attributes))
    folder = tmp_path / "art" / "data" / "shop"
    overrides = [
        f"artifacts_dir={tmp_path / 'art'}",
        "data=lastfm",
        "data.name=shop",
        f"data.path={tmp_path / 'Shop.txt'}",
        f"data.items.path={tmp_path / 'Shop_item2attributes.json'}",
    ]
    prepare(compose_config("prepare", overrides))
    train(
        compose_config("train", ["debug=fast", f"data_dir={folder}", f"model={model}", f"run_dir={tmp_path / 'run'}"])
    )
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=False)
    vocab = ckpt["hyper_parameters"]["vocab"]
    # One bag as wide as the most distinct attributes of an item.
    assert max(vocab["feature_widths"]) == max(len(set(v)) for v in attributes.values())
    export(
        compose_config(
            "export",
            [f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", f"export.out_dir={tmp_path / 'b1'}"],
        )
    )
    new = pa.table({"item_id": ["n1", "n2", "n3"], "attributes": [["1", "2"], ["7", "9"], ["2", "1"]]})
    pq.write_table(new, tmp_path / "new.parquet")
    add_items(tmp_path / "b1", tmp_path / "new.parquet", tmp_path / "b2")
    vectors = np.load(tmp_path / "b2" / "item_embeddings.npy")[-3:]
    # Other attributes, another vector; the same attributes in another order, the same vector.
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-4 and np.allclose(vectors[0], vectors[2], atol=1e-6)
    # A CSV of new items splits its lists by preparation's rule (separator, spaces, empty values).
    (tmp_path / "new.csv").write_text("item_id,attributes\nn4, 2 | 1 ||\n")
    add_items(tmp_path / "b1", tmp_path / "new.csv", tmp_path / "b3")
    assert np.allclose(np.load(tmp_path / "b3" / "item_embeddings.npy")[-1], vectors[0], atol=1e-6)
    if model == "dif_sr":
        served_attribute_streams_equal_the_item_towers(
            tmp_path / "run" / "checkpoints" / "best.ckpt", tmp_path / "b2", PreparedData.load(folder)
        )


def served_attribute_streams_equal_the_item_towers(ckpt, bundle_dir, data):
    """An attribute-fusion model served from a bundle (with items added later) gives torch's query."""
    from intentrec.models.context import CONTEXT_FIELDS
    from intentrec.serving.onnx_models import QueryEncoder
    from intentrec.serving.recommender import Recommender
    from intentrec.serving.request import Query
    from intentrec.training.evaluate import load_checkpoint

    model = load_checkpoint(ckpt, data).eval().model
    recommender = Recommender(bundle_dir)
    assert "step_attributes" in recommender.encoder.inputs
    history = ["3", "17", "n1", "5"]  # n1: added after training, embedded from its attributes alone
    decoded = recommender.decode(Query(item_ids=history, k=5))
    served = recommender.encode([decoded])[0]
    ids = torch.as_tensor(decoded.idx)[None]
    T, D = ids.shape[1], model.cfg.embedding_dim
    codes = torch.as_tensor(recommender.catalogue.feature_codes)
    known = ids < model.item_tower.num_items + 1
    with torch.no_grad():
        model.item_tower.feature_codes = codes  # the bundle's codes: trained items and the added ones
        attributes = model.item_tower.attribute_vectors(ids)
    assert not known.all() and attributes.shape == (1, T, len(model.item_tower.feature_embeddings), D)
    step = {name: torch.as_tensor(getattr(decoded, name))[None] for name in ("event_types", "gap_buckets", "channels")}
    context = [torch.tensor([int(c)]) for c in decoded.context][: len(CONTEXT_FIELDS)]
    with torch.no_grad():
        expected = QueryEncoder(model)(
            torch.as_tensor(recommender.catalogue.embeddings[decoded.idx])[None],
            torch.ones(1, T, dtype=torch.long),
            step["event_types"],
            step["gap_buckets"],
            step["channels"],
            torch.as_tensor(decoded.new_session).long()[None],
            *context,
            torch.tensor([int(decoded.loyalty)]),
            torch.zeros(1, 1, D),
            torch.zeros(1, 1, dtype=torch.long),
            attributes,
        )[0].numpy()
    assert np.abs(served - expected).max() < 1e-4
    # An added item with other attributes in the same place gives another query.
    decoded_other = recommender.decode(Query(item_ids=["3", "17", "n2", "5"], k=5))
    assert np.abs(recommender.encode([decoded_other])[0] - served).max() > 1e-4
    assert len(recommender.recommend([Query(item_ids=history, k=5)])[0].item_ids) == 5


BAD = {
    "json_not_an_object": ("attrs.json", "[1, 2]", r"holds a JSON list; expected an object of item id -> list"),
    "json_value_not_a_list": ("attrs.json", '{"i1": 5}', r"item 'i1' has 5; expected a list of attribute ids"),
    "json_bad_element": (
        "attrs.json",
        '{"i1": [1, {"a": 2}]}',
        r"item 'i1' has attribute \{\"a\": 2\}; attribute ids are",
    ),
    "json_broken": ("attrs.json", '{"i1": [1,', r"is not valid JSON"),
    "csv_no_id": (
        "items.csv",
        "sku,color\ni1,red\n",
        r"no item id column item_id; columns are \['sku', 'color'\]\. Name it with data\.items\.item_id",
    ),
    "csv_duplicate": (
        "items.csv",
        "item_id,color\ni1,red\ni2,blue\ni1,green\n",
        r"item 'i1' has more than one row \(lines 2 and 4\)",
    ),
    "csv_empty_id": ("items.csv", "item_id,color\ni1,red\n,blue\n", r"line 3: the item id \(item_id\) is empty"),
    "csv_clash": ("items.csv", "item_id,count\ni1,3\n", r"column 'count' clashes with a built-in item feature"),
    "csv_empty": ("items.csv", "", r"is empty \(0 bytes\)"),
    "parquet_corrupt": ("items.parquet", "PAR1 not really", r"is not a readable Parquet file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_items_file_names_the_file_the_item_and_the_value(tmp_path, case):
    name, content, message = BAD[case]
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        prepared(tmp_path, f"data.items.path={tmp_path / name}")
    assert name in str(caught.value)


def test_bad_items_settings_name_the_key(tmp_path):
    items_file = write_items(tmp_path / "items.csv", [["item_id", "color"], ["i1", "red"]])
    with pytest.raises(ConfigError, match=r"data\.items has unknown key\(s\) \['colour'\]"):
        prepared(tmp_path, f"data.items.path={items_file}", "+data.items.colour=1")
    with pytest.raises(
        DataError, match=r"data\.items\.lists names 'tags', not an attribute column; they are \['color'\]"
    ):
        prepared(tmp_path, f"data.items.path={items_file}", "data.items.lists=[tags]")
    with pytest.raises(DataError, match=r"data\.items\.path='.*missing\.json' does not exist"):
        prepared(tmp_path, f"data.items.path={tmp_path / 'missing.json'}")
    with pytest.raises(
        DataError, match=r"data\.items\.columns names \['size'\], not in the file; its columns are \['color'\]"
    ):
        prepared(tmp_path, f"data.items.path={items_file}", "data.items.columns=[size]")
    with pytest.raises(ConfigError, match=r"data\.items\.num_buckets=0, data\.items\.max_values=64; both must be >= 1"):
        prepared(tmp_path, f"data.items.path={items_file}", "data.items.num_buckets=0")
    priced = write_items(tmp_path / "priced.csv", [["item_id", "price"], ["i1", "cheap"]])
    with pytest.raises(DataError, match=r"column 'price' is categorical, but price is a number per item"):
        prepared(tmp_path, f"data.items.path={priced}")
