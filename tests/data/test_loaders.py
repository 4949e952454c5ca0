"""Loaders: exact counts on the shared real data, every generic format, and every bad-input message."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from intentrec.data.loaders import load
from intentrec.data.prepare import run
from intentrec.data.schema import EVENT_SCHEMA
from intentrec.errors import ConfigError, DataError
from tests.conftest import compose_config

pytestmark = []


def distinct(table: pa.Table, column: str) -> int:
    return len(pc.unique(table[column].drop_null()))


# --- real data in ../shared/data ---------------------------------------------------------------


@pytest.mark.shared_data
def test_diginetica_views_sample_has_the_documented_counts(shared_data):
    loaded = load({"format": "diginetica", "path": str(shared_data / "diginetica"), "purchases": "none"})
    events = loaded.events
    assert events.num_rows == 12_391
    assert distinct(events, "session_id") == 2_986
    assert distinct(events, "item_id") == 7_139
    assert distinct(events, "customer_id") == 1_270
    # Every viewed item has a category from product-categories.csv.
    assert loaded.items.num_rows == 7_139 and loaded.items["category_id"].null_count == 0


@pytest.mark.shared_data
def test_diginetica_join_adds_every_purchase_row_and_keeps_duplicates(shared_data):
    loaded = load({"format": "diginetica", "path": str(shared_data / "diginetica")})
    events = loaded.events
    assert events.num_rows == 12_391 + 18_025
    purchases = events.filter(pc.equal(events["event_type"], "purchase"))
    assert purchases.num_rows == 18_025
    assert distinct(purchases, "session_id") == 12_630
    assert distinct(purchases, "item_id") == 11_244
    assert loaded.notes["purchase_exact_duplicate_rows_kept"] == 28
    # 138 sessions of the views sample also purchase: 2,986 + 12,630 - 138 sessions in all.
    assert distinct(events, "session_id") == 2_986 + 12_630 - 138
    assert events.schema.field("event_time").type == EVENT_SCHEMA.field("event_time").type


@pytest.mark.shared_data
def test_yoochoose_keeps_its_given_split(shared_data):
    loaded = load(
        {
            "format": "yoochoose",
            "path": str(shared_data / "yoochoose-100k"),
            "valid_file": "yoochoose-clicks-100k_train_valid.txt",
        }
    )
    events = loaded.events
    assert events.num_rows == 83_846
    assert distinct(events, "item_id") == 2_933
    assert distinct(events, "session_id") == 21_210
    split = events["_split"]
    assert pc.sum(pc.equal(split, "test")).as_py() == 13_568
    test_sessions = pc.unique(events.filter(pc.equal(split, "test"))["session_id"])
    assert len(test_sessions) == 3_416
    val_sessions = pc.unique(events.filter(pc.equal(split, "val"))["session_id"])
    assert len(val_sessions) == 4_084


@pytest.mark.shared_data
def test_amazon_video_games_lines_have_the_documented_counts(shared_data):
    loaded = load(
        {
            "format": "sasrec_lines",
            "path": str(shared_data / "amazon-video-games" / "Video.txt"),
            "default_event_type": "purchase",
        }
    )
    events = loaded.events
    assert events.num_rows == 287_107
    assert distinct(events, "customer_id") == 31_013
    assert distinct(events, "item_id") == 23_715
    assert "event_time" not in events.column_names  # file order is time order
    assert events.slice(0, 3)["item_id"].to_pylist() == ["6393", "13504", "14087"]


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "name, events, items, sequences",
    [
        ("yoochoose", 83_846, 2_933, 21_210),
        ("amazon_video_games", 287_107, 23_715, 31_013),
        ("diginetica", 30_416, 15_936, 15_478),
    ],
)
def test_prepare_each_shared_dataset_reports_source_counts(shared_data, tmp_path, name, events, items, sequences):
    stats = run(compose_config("prepare", [f"data={name}", f"artifacts_dir={tmp_path}"]))
    assert stats["source"] == {"events": events, "items": items, "sequences": sequences}
    assert stats["prepared"]["events"] <= events
    for split in ("train", "val", "test"):
        assert stats["split"][split]["rows"] > 0
    assert all(len(f["sha256"]) == 64 for f in stats["source_files"])
    test = pq.read_table(tmp_path / "data" / name / "test.parquet")
    max_id = pc.max(pc.list_flatten(test["item_ids"])).as_py()
    assert 1 <= max_id <= stats["num_items"]


@pytest.mark.shared_data
def test_yoochoose_predefined_split_puts_test_file_sessions_in_test(shared_data, tmp_path):
    stats = run(compose_config("prepare", ["data=yoochoose", f"artifacts_dir={tmp_path}"]))
    # Every test-file session has >= 2 clicks; each click after the first is a target (SR-GNN protocol).
    assert stats["split"]["test"]["rows"] == 3_416
    assert stats["split"]["test"]["targets"] == 13_568 - 3_416


# --- generic formats --------------------------------------------------------------------------


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def generic(path, **keys):
    cfg = {
        "format": "csv",
        "path": str(path),
        "sep": ",",
        "time_unit": "s",
        "strict": True,
        "columns": {"user_id": "user", "item_id": "item"},
    }
    for key, value in keys.items():
        if key == "columns":
            cfg["columns"] = {**cfg["columns"], **value}
        else:
            cfg[key] = value
    return load(cfg)


def test_generic_csv_maps_columns_and_event_types(tmp_path):
    path = write(
        tmp_path,
        "e.csv",
        "user,item,when,kind,cat,cost\n1,10,2024-01-01T10:00:00Z,click,shoes,9.5\n"
        "1,11,2024-01-01T10:05:00Z,buy,bags,20\n",
    )
    loaded = generic(
        path,
        time_unit="iso",
        event_type_map={"click": "view", "buy": "purchase"},
        columns={"timestamp": "when", "event_type": "kind", "category_id": "cat", "price": "cost"},
    )
    events = loaded.events.to_pydict()
    assert events["event_type"] == ["view", "purchase"]
    assert events["customer_id"] == ["1", "1"]
    assert [t.isoformat() for t in events["event_time"]] == [
        "2024-01-01T10:00:00+00:00",
        "2024-01-01T10:05:00+00:00",
    ]
    assert loaded.items.to_pydict()["category_id"] == ["shoes", "bags"]
    assert events["event_id"] == ["e.csv:2", "e.csv:3"]


def test_generic_without_timestamp_keeps_file_order(
    tmp_path,
):
    path = write(tmp_path, "e.csv", "user,item\nu,c\nu,a\nu,b\n")
    stats, out = _prepare_generic(tmp_path, path)
    test = pq.read_table(out / "test.parquet").to_pylist()[0]
    item_ids = dict(zip(*pq.read_table(out / "item_map.parquet").to_pydict().values()))
    assert [item_ids[i] for i in test["item_ids"]] == ["c", "a", "b"]
    assert test["time_gaps"] == [-1, -1, -1]
    assert stats["has_timestamps"] is False


def _prepare_generic(tmp_path, path, *overrides):
    cfg = compose_config(
        "prepare",
        [
            "data=generic",
            f"data.path={path}",
            "data.columns.user_id=user",
            "data.columns.item_id=item",
            f"artifacts_dir={tmp_path / 'a'}",
            *overrides,
        ],
    )
    return run(cfg), tmp_path / "a" / "data" / "generic"


def test_generic_parquet_reads_the_same_mapping(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user": ["u", "u", "v"], "item": [1, 2, 1], "ts": [1.0, 2.0, 3.0]}), path)
    loaded = load(
        {
            "format": "parquet",
            "path": str(path),
            "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts"},
        }
    )
    assert loaded.events["item_id"].to_pylist() == ["1", "2", "1"]
    assert loaded.events["event_id"].to_pylist() == ["e.parquet:1", "e.parquet:2", "e.parquet:3"]  # 1-based rows


def test_sequence_lines_explode_into_ordered_events(tmp_path):
    path = write(tmp_path, "seq.txt", "u1 5 6 7\nu2 7 5\n")
    loaded = load({"format": "sequence_lines", "path": str(path)})
    assert loaded.events["customer_id"].to_pylist() == ["u1", "u1", "u1", "u2", "u2"]
    assert loaded.events["item_id"].to_pylist() == ["5", "6", "7", "7", "5"]


def test_recbole_inter_file_reads_typed_header(tmp_path):
    path = write(
        tmp_path,
        "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t31\t2.5\t1260759144\n1\t1029\t3.0\t1260759179\n2\t31\t4\t1260759200\n",
    )
    loaded = load({"format": "recbole", "path": str(path)})
    events = loaded.events.to_pydict()
    assert events["customer_id"] == ["1", "1", "2"]
    assert events["item_id"] == ["31", "1029", "31"]
    assert events["event_time"][0].timestamp() == 1260759144


# --- bad input: every message names file, line, column, value, what was expected ------------


def test_missing_mapped_column_names_the_file_key_and_columns_found(tmp_path):
    path = write(tmp_path, "e.csv", "user,product\n1,2\n")
    with pytest.raises(
        DataError,
        match=r"e\.csv: has no column 'item' \(data\.columns\.item_id\); columns found: \['user', 'product'\]",
    ):
        generic(path)


def test_unparsable_timestamp_names_line_column_and_value(tmp_path):
    path = write(tmp_path, "e.csv", "user,item,ts\n1,2,100\n1,3,yesterday\n")
    with pytest.raises(
        DataError, match=r"e\.csv, line 3, column 'ts' \(event_time\): got 'yesterday'; expected a number of s since"
    ):
        generic(path, columns={"timestamp": "ts"})


def test_negative_price_names_line_and_value(tmp_path):
    path = write(tmp_path, "e.csv", "user,item,price\n1,2,3.5\n1,3,-4\n")
    with pytest.raises(DataError, match=r"line 3, column 'price': got '-4'; expected a number >= 0"):
        generic(path, columns={"price": "price"})


def test_unknown_event_type_lists_allowed_values_and_the_mapping_fix(tmp_path):
    path = write(tmp_path, "e.csv", "user,item,type\n1,2,view\n1,3,wishlist\n")
    with pytest.raises(
        DataError,
        match=r"line 3, column 'type' \(event_type\): got 'wishlist'; expected one of \['view', .*data\.event_type_map",
    ):
        generic(path, columns={"event_type": "type"})


def test_non_numeric_id_in_a_numeric_format_names_line_and_value(tmp_path):
    path = write(tmp_path, "Video.txt", "1 10\n1 11\nx7 12\n")
    with pytest.raises(
        DataError,
        match=r"Video\.txt, line 3, column 'customer_id': got 'x7'; expected a non-negative integer",
    ):
        load({"format": "sasrec_lines", "path": str(path), "numeric_ids": True})
    path = write(tmp_path, "Video.txt", "1 10\n1 1x1\n")
    with pytest.raises(
        DataError,
        match=r"Video\.txt, line 2, column 'item_id': got '1x1'; expected a non-negative integer id",
    ):
        load({"format": "sasrec_lines", "path": str(path), "numeric_ids": True})


def test_missing_item_id_names_the_line(tmp_path):
    path = write(tmp_path, "e.csv", "user,item\n1,2\n1,\n")
    with pytest.raises(
        DataError, match=r"e\.csv, line 3, column 'item' \(item_id\): got an empty value; expected a non-empty id"
    ):
        generic(path)


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(DataError, match=r"data\.path='.*nope\.csv' does not exist or is not a file"):
        generic(tmp_path / "nope.csv")


def test_unknown_format_lists_the_formats():
    with pytest.raises(ConfigError, match=r"data\.format='xml'; expected one of \[.*'csv'.*'synthetic'\]"):
        load({"format": "xml", "path": "x"})


def test_unknown_column_mapping_key_is_a_config_error(tmp_path):
    path = write(tmp_path, "e.csv", "user,item\n1,2\n")
    with pytest.raises(ConfigError, match=r"data\.columns has unknown key\(s\) \['colour'\]"):
        generic(path, columns={"colour": "c"})


def test_non_strict_load_writes_every_bad_row_to_rejects_and_counts_them(tmp_path):
    path = write(
        tmp_path,
        "e.csv",
        "user,item,ts,type,price\n"
        "1,10,1,view,1.0\n"  # good
        "1,11,oops,view,1.0\n"  # line 3: bad time
        "1,12,3,teleport,1.0\n"  # line 4: unknown event type
        "1,13,4,view,-2\n"  # line 5: negative price
        "1,14,5,purchase,2\n"  # good
        "1,,6,view,1\n",  # line 7: missing item
    )
    stats, out = _prepare_generic(
        tmp_path,
        path,
        "data.strict=false",
        "data.columns.timestamp=ts",
        "data.columns.event_type=type",
        "data.columns.price=price",
    )
    rejects = pd.read_csv(out / "rejects.csv")
    assert sorted(rejects["line"].tolist()) == [3, 4, 5, 7]
    assert set(rejects["column"]) == {"event_time", "event_type", "price", "item_id"}
    assert stats["rejects"]["rows"] == 4 and stats["rejects"]["file"] == "rejects.csv"
    assert stats["source"]["events"] == 2  # the good rows are kept, nothing else
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["rejects"]["problems"] == 4


@pytest.mark.parametrize(
    "files, cfg, error, message",
    [
        (
            {"Video.txt": "1 2 3\n"},
            {"format": "sasrec_lines"},
            DataError,
            r"Video\.txt: expected 2 fields per line \('user item'\), found 3\. Use data\.format=sequence_lines",
        ),
        (
            {"seq.txt": "u1 5\nlonely\n"},
            {"format": "sequence_lines"},
            DataError,
            r"seq\.txt, line 2, column 'line': got 'lonely'; expected 'user item1 \[item2 \.\.\.\]'",
        ),
        (
            {"e.csv": "user,item,ts\n1,2,3\n"},
            {
                "format": "csv",
                "time_unit": "days",
                "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts"},
            },
            DataError,
            r"data\.time_unit='days' is not one of \['s', 'ms', 'us', 'ns', 'iso'\]",
        ),
        (
            {"e.csv": "user,item\n1,2\n"},
            {
                "format": "csv",
                "default_event_type": "click",
                "columns": {"user_id": "user", "item_id": "item"},
            },
            DataError,
            r"data\.default_event_type='click' is not one of \['view'",
        ),
        (
            {"e.csv": "user,item\n1,2\n"},
            {"format": "csv", "columns": {"user_id": "user"}},
            ConfigError,
            r"data\.columns\.item_id is not set and e\.csv has no column named item_id; name the file's item id "
            r"column, e\.g\. data\.columns\.item_id=sku \(columns found: \['user', 'item'\]\)",
        ),
        (
            {"e.csv": "item\n2\n"},
            {"format": "csv", "columns": {"item_id": "item"}},
            DataError,
            r"e\.csv: needs a session or user column to group events into sequences; columns found: \['item_id'\]",
        ),
        (
            {"e.csv": "user,item,q\n1,2,1.5\n"},
            {"format": "csv", "columns": {"user_id": "user", "item_id": "item", "quantity": "q"}},
            DataError,
            r"line 2, column 'q' \(quantity\): got '1\.5'; expected an integer >= 1",
        ),
        (
            {"e.csv": "user,item,dev\n1,2,phone\n"},
            {"format": "csv", "columns": {"user_id": "user", "item_id": "item", "device_type": "dev"}},
            DataError,
            r"line 2, column 'dev' \(device_type\): got 'phone'; expected one of \['desktop', 'mobile', 'tablet'\]",
        ),
        (
            {
                "dg/sample_train-item-views.csv": "session_id;user_id;item_id;timeframe;eventdate\n1;NA;5;10;2016-13-01\n"
            },
            {"format": "diginetica", "purchases": "none", "categories_file": None},
            DataError,
            r"sample_train-item-views\.csv, line 2, column 'eventdate': got '2016-13-01'; expected a date YYYY-MM-DD",
        ),
        (
            {
                "dg/sample_train-item-views.csv": "session_id;user_id;item_id;timeframe;eventdate\n1;NA;5;10;2016-01-01\n"
            },
            {"format": "diginetica", "purchases": "some"},
            ConfigError,
            r"data\.purchases='some'; expected one of \['all', 'in_view_sessions', 'none'\]",
        ),
        (
            {"dg/sample_train-item-views.csv": "session;item\n1;5\n"},
            {"format": "diginetica", "purchases": "none"},
            DataError,
            r"missing column\(s\) \['session_id', 'user_id', 'item_id', 'timeframe', 'eventdate'\]",
        ),
        (
            {"e.csv": "user,item\n1,\n"},
            {"format": "csv", "strict": False, "columns": {"user_id": "user", "item_id": "item"}},
            DataError,
            r"e\.csv: no valid events left after parsing \(1 problems; see rejects\.csv\)",
        ),
    ],
)
def test_bad_input_message_names_what_is_wrong(tmp_path, files, cfg, error, message):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    path = tmp_path / ("dg" if cfg["format"] == "diginetica" else next(iter(files)))
    with pytest.raises(error, match=message):
        load({"path": str(path), **cfg})


def test_a_canonical_parquet_shop_with_a_bad_enum_names_row_and_column(tmp_path):
    from intentrec.data.loaders import load_canonical
    from intentrec.data.schema import conform

    events = pa.table(
        {
            "event_id": ["a", "b"],
            "customer_id": ["c", "c"],
            "item_id": ["1", "2"],
            "event_type": ["view", "buy"],
        }
    )
    pq.write_table(conform(events, EVENT_SCHEMA), tmp_path / "events.parquet")
    with pytest.raises(
        DataError,
        match=r"events\.parquet, row 2, column 'event_type': got 'buy'; expected one of \['view'.*Fix the writer of this file \(1 row\(s\) affected\)",
    ):
        load_canonical(tmp_path)


def test_unknown_sequence_key_and_event_types_name_their_keys(tmp_path):
    path = write(tmp_path, "e.csv", "user,item\n1,2\n1,3\n")
    with pytest.raises(ConfigError, match=r"data\.sequence_key='visit'; expected one of \['session', 'customer'\]"):
        _prepare_generic(tmp_path, path, "data.sequence_key=visit")
    with pytest.raises(ConfigError, match=r"data\.event_types has unknown value\(s\) \['like'\]"):
        _prepare_generic(tmp_path, path, "data.event_types=[view,like]")


def test_prepare_writes_the_source_as_canonical_parquet_that_loads_back_identically(tmp_path):
    path = write(tmp_path, "e.csv", "user,item,ts,type\nu,a,1,view\nu,b,2,purchase\nv,a,3,view\nv,c,4,view\n")
    first, out = _prepare_generic(tmp_path, path, "data.columns.timestamp=ts", "data.columns.event_type=type")
    canonical = out / "canonical"
    assert (
        pq.read_schema(canonical / "events.parquet")
        .remove_metadata()
        .equals(
            pa.schema(
                [EVENT_SCHEMA.field(n) for n in ("event_id", "event_time", "customer_id", "item_id", "event_type")]
            )
        )
    )
    again = run(
        compose_config(
            "prepare",
            [
                "data=generic",
                "data.format=canonical",
                f"data.path={canonical}",
                "data.name=again",
                f"artifacts_dir={tmp_path / 'a'}",
            ],
        )
    )
    assert again["prepared"] == first["prepared"] and again["split"]["test"] == first["split"]["test"]
    # (prices are NaN = unknown here, and NaN != NaN, so they are left out of the comparison)
    reloaded = pq.read_table(out.parent / "again" / "test.parquet").drop_columns(["prices"])
    assert reloaded.equals(pq.read_table(out / "test.parquet").drop_columns(["prices"]))


def test_a_canonical_column_of_the_wrong_type_names_column_and_type(tmp_path):
    from intentrec.data.loaders import load_canonical

    pq.write_table(
        pa.table({"customer_id": ["c"], "item_id": ["1"], "event_time": ["yesterday"]}), tmp_path / "events.parquet"
    )
    with pytest.raises(
        DataError,
        match=r"events\.parquet: column 'event_time' has type string, which does not convert to the canonical timestamp\[ms, tz=UTC\]",
    ):
        load_canonical(tmp_path)


# --- columns found, not lost; malformed files --------------------------------------------------

SHOP_CSV = (
    "User_ID,session_id,item_id,timestamp,event_type,category_id,price,colour\n"
    "u1,s1,i1,1700000000,view,shoes,9.5,red\n"
    "u1,s1,i2,1700000060,purchase,bags,20,blue\n"
)


def test_canonical_column_names_are_used_without_mapping_and_the_rest_are_listed(tmp_path):
    loaded = load({"format": "csv", "path": str(write(tmp_path, "shop.csv", SHOP_CSV)), "columns": {}})
    events = loaded.events.to_pydict()
    assert events["customer_id"] == ["u1", "u1"] and events["session_id"] == ["s1", "s1"]
    assert events["event_type"] == ["view", "purchase"] and events["price"] == [9.5, 20.0]
    assert [t.timestamp() for t in events["event_time"]] == [1_700_000_000, 1_700_000_060]
    assert loaded.items.to_pydict()["category_id"] == ["shoes", "bags"]
    assert loaded.notes["columns_found_by_name"] == sorted(
        ["User_ID", "session_id", "item_id", "timestamp", "event_type", "category_id", "price"]
    )
    assert loaded.notes["columns_not_used"] == ["colour"]
    assert any("shop.csv: column(s) ['colour'] are not used" in w for w in loaded.rejects.warnings)


def test_an_explicit_mapping_wins_over_a_column_named_like_the_key(tmp_path):
    path = write(tmp_path, "e.csv", "user,item_id,other_item\nu,a,b\nu,c,d\n")
    loaded = load({"format": "csv", "path": str(path), "columns": {"user_id": "user", "item_id": "other_item"}})
    assert loaded.events["item_id"].to_pylist() == ["b", "d"]
    assert loaded.notes["columns_not_used"] == ["item_id"]


def test_the_readme_event_type_map_override_composes_without_a_plus():
    cfg = compose_config(
        "prepare", ["data=generic", "data.path=x.csv", "data.event_type_map={click: view, cart: add_to_cart}"]
    )
    assert dict(cfg.data.event_type_map) == {"click": "view", "cart": "add_to_cart"}


def test_a_time_before_1970_is_refused_and_one_before_1990_is_flagged(tmp_path):
    path = write(tmp_path, "e.csv", "user_id,item_id,timestamp\nu,a,1700000000\nu,b,-5\n")
    with pytest.raises(
        DataError,
        match=r"e\.csv, line 3, column 'timestamp' \(event_time\): got '-5'; expected a time after 1970-01-01",
    ):
        load({"format": "csv", "path": str(path), "columns": {}})
    path = write(tmp_path, "ms.csv", "user_id,item_id,timestamp\nu,a,1700000000\nu,b,1700000001\n")
    loaded = load({"format": "csv", "path": str(path), "time_unit": "ms", "columns": {}})
    assert loaded.events.num_rows == 2
    (warning,) = loaded.rejects.warnings
    assert "ms.csv: 2 time(s) before 1990 or after 2100, e.g. line 2, column 'timestamp' (event_time)" in warning
    assert "'1700000000' read as ms is 1970-01-20T16:13:20.000Z" in warning and "set data.time_unit" in warning


def _parquet_bytes(tmp_path) -> bytes:
    pq.write_table(pa.table({"user_id": ["u"] * 50, "item_id": [f"i{i}" for i in range(50)]}), tmp_path / "ok.parquet")
    return (tmp_path / "ok.parquet").read_bytes()


MALFORMED = [
    ("empty.csv", lambda t: b"", "csv", r"empty\.csv is empty \(0 bytes\); point data\.path at the file"),
    (
        "ragged.csv",
        lambda t: b"user_id,item_id\nu,a\nu,b,extra,more\n",
        "csv",
        r"ragged\.csv: Expected 2 fields in line 3, saw 4; every line needs the header's number of fields",
    ),
    ("binary.csv", lambda t: bytes(range(256)) * 8, "csv", r"binary\.csv is not a text file \(it holds NUL bytes"),
    (
        "latin1.csv",
        lambda t: "user_id,item_id\nu,caf\xe9\n".encode("latin-1"),
        "csv",
        r"latin1\.csv: byte \d+ is not UTF-8 .*re-export the file as UTF-8",
    ),
    ("table.csv", _parquet_bytes, "csv", r"table\.csv is a Parquet file, not delimited text; set data\.format=parquet"),
    ("empty.parquet", lambda t: b"", "parquet", r"empty\.parquet is empty \(0 bytes\)"),
    (
        "truncated.parquet",
        lambda t: _parquet_bytes(t)[:300],
        "parquet",
        r"truncated\.parquet is not a readable Parquet file \(.*\); it may be truncated",
    ),
    (
        "text.parquet",
        lambda t: b"user_id,item_id\nu,a\n",
        "parquet",
        r"text\.parquet does not start with Parquet's magic bytes \(it looks like text: set data\.format=csv\)",
    ),
]


@pytest.mark.parametrize("name, content, fmt, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_file_is_a_clear_error(tmp_path, name, content, fmt, message):
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    with pytest.raises(DataError, match=message):
        load({"format": fmt, "path": str(path), "columns": {}})


def test_prepare_on_a_malformed_file_prints_the_error_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    (tmp_path / "empty.csv").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "data.prepare", "data=generic", f"data.path={tmp_path / 'empty.csv'}"]
        + [f"artifacts_dir={tmp_path / 'a'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "empty.csv is empty (0 bytes)" in result.stderr


def test_explain_shows_the_mapping_event_types_and_first_rows_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    path = write(tmp_path, "shop.csv", SHOP_CSV)
    result = subprocess.run(
        [sys.executable, "-m", "data.prepare", "data=generic", f"data.path={path}", "explain=true"]
        + [f"artifacts_dir={tmp_path / 'a'}", f"hydra.run.dir={tmp_path / 'h'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "User_ID                  -> customer_id    (by its name)" in out
    assert "not used: ['colour']" in out and "event types: view 1, purchase 1" in out
    assert "item attributes: category_id (categorical, 2 values)" in out
    assert "first 2 events as the model will see them:" in out and "purchase   20.0" in out
    assert not (tmp_path / "a" / "data").exists()


def test_a_large_string_item_attribute_is_embedded_and_a_numeric_one_is_bucketed(tmp_path, caplog):
    shop = tmp_path / "shop"
    shop.mkdir()
    events = pa.table(
        {
            "event_id": [f"e{i}" for i in range(12)],
            "event_time": pa.array([1_700_000_000_000 + i * 60_000 for i in range(12)], pa.timestamp("ms", tz="UTC")),
            "customer_id": ["u1"] * 6 + ["u2"] * 6,
            "item_id": ["a", "b", "c", "a", "b", "c"] * 2,
            "event_type": ["view"] * 12,
        }
    )
    pq.write_table(events, shop / "events.parquet")
    items = pa.table(
        {
            "item_id": ["a", "b", "c"],
            "colour": pa.array(["red", "blue", "red"], pa.large_string()),  # what pandas 3 writes
            "weight_g": [100, 200, 300],
        }
    )
    pq.write_table(items, shop / "items.parquet")
    cfg = compose_config(
        "prepare",
        ["data=generic", "data.format=canonical", f"data.path={shop}", f"artifacts_dir={tmp_path / 'a'}"],
    )
    with caplog.at_level("WARNING"):
        run(cfg)
    vocab = json.loads((tmp_path / "a" / "data" / "generic" / "vocab.json").read_text())
    assert vocab["item_attributes"]["colour"] == ["<unknown>", "blue", "red"]
    # A number is a quantity: bucketed by quantiles, not dropped.
    assert vocab["item_attribute_kinds"] == {"colour": "categorical", "weight_g": "numeric"}
    assert "are not used" not in caplog.text


def test_a_canonical_table_refuses_times_before_1970_and_flags_ones_before_1990(tmp_path):
    from intentrec.data.loaders import load_canonical

    def shop(times_ms):
        folder = tmp_path / f"shop{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        events = pa.table(
            {
                "event_id": [f"e{i}" for i in range(len(times_ms))],
                "event_time": pa.array(times_ms, pa.timestamp("ms", tz="UTC")),
                "customer_id": ["u"] * len(times_ms),
                "item_id": ["a"] * len(times_ms),
                "event_type": ["view"] * len(times_ms),
            }
        )
        pq.write_table(events, folder / "events.parquet")
        return folder

    with pytest.raises(
        DataError, match=r"events\.parquet, row 2, column 'event_time': got .*; expected a time after 1970"
    ):
        load_canonical(shop([1_700_000_000_000, -5_000]))
    loaded = load_canonical(shop([1_700_000_000_000, 500_000_000_000, 600_000_000_000]))
    (warning,) = loaded.rejects.warnings
    assert (
        "events.parquet: 2 time(s) before 1990 or after 2100, e.g. row 2, column 'event_time' is 1985-11-05" in warning
    )
