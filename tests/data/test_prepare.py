"""data.prepare on small hand-made files whose splits and ids are computed by hand here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from intentrec.data.prepare import run
from intentrec.errors import ConfigError, DataError
from tests.conftest import REPO_ROOT, compose_config

DAY = 86_400

EVENTS_CSV = """user,item,ts,type
u1,a,1,view
u1,b,2,view
u1,c,3,purchase
u1,d,4,view
u2,a,5,view
u2,b,6,view
u3,c,7,view
"""


def prepare_csv(tmp_path: Path, text: str, *overrides: str) -> tuple[dict, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "events.csv"
    source.write_text(text)
    cfg = compose_config(
        "prepare",
        [
            "data=generic",
            f"data.path={source}",
            "data.columns.user_id=user",
            "data.columns.item_id=item",
            "data.columns.timestamp=ts",
            "data.columns.event_type=type",
            f"artifacts_dir={tmp_path / 'artifacts'}",
            *overrides,
        ],
    )
    stats = run(cfg)
    return stats, tmp_path / "artifacts" / "data" / "generic"


def rows(out: Path, split: str) -> list[dict]:
    table = pq.read_table(out / f"{split}.parquet").to_pylist()
    return sorted(table, key=lambda r: r["seq_idx"])


def test_leave_last_out_matches_hand_computed_rows_and_targets(tmp_path):
    stats, out = prepare_csv(tmp_path, EVENTS_CSV)
    # u3 has one event and is removed by min_seq_len=2.
    assert stats["source"] == {"events": 7, "items": 4, "sequences": 3}
    assert stats["prepared"] == {"events": 6, "items": 4, "sequences": 2}
    # Ids by descending frequency, ties by raw id; 0 is padding.
    item_map = pq.read_table(out / "item_map.parquet").to_pydict()
    assert item_map == {"item_idx": [1, 2, 3, 4], "item_id": ["a", "b", "c", "d"]}
    test = rows(out, "test")
    assert [r["item_ids"] for r in test] == [[1, 2, 3, 4], [1, 2]]
    assert [r["target_mask"] for r in test] == [[False, False, False, True], [False, True]]
    val = rows(out, "val")
    assert [r["item_ids"] for r in val] == [[1, 2, 3]]
    assert [r["target_mask"] for r in val] == [[False, False, True]]
    train = rows(out, "train")  # u2 keeps only [a] before its test target: too short to train on
    assert [r["item_ids"] for r in train] == [[1, 2]]
    assert [r["target_mask"] for r in train] == [[False, True]]
    assert test[0]["event_types"] == [1, 1, 4, 1]  # view, view, purchase, view (1-based codes)
    assert test[0]["time_gaps"] == [0, 1, 1, 1]
    assert stats["split"]["test"] == {"rows": 2, "targets": 2, "steps": 6}


def test_target_event_types_limit_which_steps_are_targets(tmp_path):
    stats, out = prepare_csv(tmp_path, EVENTS_CSV, "data.target_event_types=[purchase]")
    test = rows(out, "test")
    # u1's last purchase is c (position 2): the test row ends there; u2 has no purchase: no test row.
    assert [r["item_ids"] for r in test] == [[1, 2, 3]]
    assert stats["split"]["val"]["rows"] == 0


def test_temporal_split_uses_cutoffs_and_keeps_history(tmp_path):
    text = "user,item,ts,type\n" + "\n".join(
        f"{user},{item},{day * DAY},view"
        for user, item, day in [
            ("u1", "a", 0),
            ("u1", "b", 1),
            ("u1", "c", 12),
            ("u1", "d", 18),
            ("u2", "a", 2),
            ("u2", "c", 3),
            ("u2", "b", 19),
            ("u3", "b", 1),
            ("u3", "a", 5),
        ]
    )
    stats, out = prepare_csv(
        tmp_path, text, "data.split.type=temporal", "data.split.test_days=5", "data.split.val_days=7"
    )
    # max time = day 19 -> test cut-off day 14, validation cut-off day 7.
    assert stats["split"]["test_cutoff_ms"] == 14 * DAY * 1000
    assert stats["split"]["val_cutoff_ms"] == 7 * DAY * 1000
    item = {r["item_id"]: r["item_idx"] for r in pq.read_table(out / "item_map.parquet").to_pylist()}
    test = rows(out, "test")
    assert [[item_id for item_id in r["item_ids"]] for r in test] == [
        [item["a"], item["b"], item["c"], item["d"]],
        [item["a"], item["c"], item["b"]],
    ]
    assert [r["target_mask"] for r in test] == [[False, False, False, True], [False, False, True]]
    val = rows(out, "val")
    assert [r["target_mask"] for r in val] == [[False, False, True]]
    train = rows(out, "train")
    assert [len(r["item_ids"]) for r in train] == [2, 2, 2]


def test_identity_stitching_gives_anonymous_events_to_the_customer_of_their_session(tmp_path):
    text = """customer,session,device,item,ts
,s1,d1,a,1
,s1,d1,b,2
c1,s1,d1,c,3
,s2,d1,d,10
,s3,d9,a,20
,s3,d9,b,21
"""
    source = tmp_path / "events.csv"
    source.write_text(text)
    cfg = compose_config(
        "prepare",
        [
            "data=generic",
            f"data.path={source}",
            "data.columns.user_id=customer",
            "data.columns.session_id=session",
            "data.columns.device_id=device",
            "data.columns.item_id=item",
            "data.columns.timestamp=ts",
            f"artifacts_dir={tmp_path / 'artifacts'}",
        ],
    )
    stats = run(cfg)
    out = tmp_path / "artifacts" / "data" / "generic"
    keys = pq.read_table(out / "sequence_map.parquet").to_pydict()
    # s1's early events and d1's later session belong to c1; the unknown device d9 is its own sequence.
    assert sorted(keys["sequence_key"]) == ["c1", "device:d9"]
    assert stats["prepared"]["sequences"] == 2
    by_key = dict(zip(keys["sequence_key"], keys["seq_idx"]))
    test = {r["seq_idx"]: r for r in pq.read_table(out / "test.parquet").to_pylist()}
    assert len(test[by_key["c1"]]["item_ids"]) == 4
    assert test[by_key["c1"]]["customer_known"] is True
    assert test[by_key["device:d9"]]["customer_known"] is False


def test_kcore_repeats_filters_until_stable(tmp_path):
    # Round 1: x has support 1 and goes, which leaves u3 = [c], too short, so u3 goes; now c has
    # support 1. Only k-core's round 2 removes c.
    text = "user,item,ts\nu1,a,1\nu1,b,2\nu1,c,3\nu2,a,4\nu2,b,5\nu3,c,6\nu3,x,7\n"
    once, _ = prepare_csv(tmp_path / "once", text, "data.columns.event_type=null", "data.filters.min_item_support=2")
    assert once["prepared"] == {"events": 5, "items": 3, "sequences": 2}
    core, _ = prepare_csv(
        tmp_path / "core",
        text,
        "data.columns.event_type=null",
        "data.filters.min_item_support=2",
        "data.filters.kcore=true",
    )
    assert core["prepared"] == {"events": 4, "items": 2, "sequences": 2}


def test_a_filter_that_empties_the_dataset_is_named_in_the_error(tmp_path):
    with pytest.raises(
        DataError, match=r"data\.filters\.min_item_support=50 removed all 7 remaining events of generic"
    ):
        prepare_csv(tmp_path, EVENTS_CSV, "data.filters.min_item_support=50")


def test_unknown_split_type_names_the_key(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"data\.split\.type='random'; expected one of \['leave_last_out', 'temporal', 'predefined'\]",
    ):
        prepare_csv(tmp_path, EVENTS_CSV, "data.split.type=random")


def test_predefined_split_without_one_in_the_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.split\.type=predefined but generic has no predefined split"):
        prepare_csv(tmp_path, EVENTS_CSV, "data.split.type=predefined")


def test_temporal_split_without_timestamps_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.split\.type=temporal but generic has no timestamps"):
        prepare_csv(tmp_path, EVENTS_CSV, "data.columns.timestamp=null", "data.split.type=temporal")


def test_unknown_target_event_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.target_event_types has unknown value\(s\) \['click'\]"):
        prepare_csv(tmp_path, EVENTS_CSV, "data.target_event_types=[click]")


def test_stats_json_has_the_interface_later_stages_rely_on(tmp_path):
    stats, out = prepare_csv(tmp_path, EVENTS_CSV)
    on_disk = json.loads((out / "stats.json").read_text())
    for key in (
        "source",
        "prepared",
        "split",
        "num_items",
        "padding_id",
        "schema_version",
        "source_files",
        "config_hash",
        "data_hash",
        "library_versions",
        "filters",
        "rejects",
    ):
        assert key in on_disk, key
    assert on_disk["source_files"][0]["sha256"] == stats["source_files"][0]["sha256"]
    assert len(on_disk["source_files"][0]["sha256"]) == 64
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["padding_id"] == 0 and vocab["event_types"][0] == "<pad>"


@pytest.mark.slow
def test_cli_prepares_the_synthetic_shop_and_prints_statistics(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data.prepare",
            "data=synthetic",
            "data.num_events=3000",
            "data.seed=7",
            f"artifacts_dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "dataset synthetic" in result.stdout and "source" in result.stdout
    stats = json.loads((tmp_path / "data" / "synthetic" / "stats.json").read_text())
    assert stats["source"]["events"] == 3000
    assert stats["shop"]["counts"]["events"] == 3000


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data.prepare",
            "data=generic",
            f"data.path={tmp_path / 'missing.csv'}",
            f"artifacts_dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "does not exist or is not a file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_mandatory_key_names_it(tmp_path):
    from intentrec.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"data\.path must be given \(it is \?\?\? in the config\); add data\.path=<value>"
    ):
        run(compose_config("prepare", ["data=generic", f"artifacts_dir={tmp_path}"]))


def test_new_session_marks_session_changes_or_30_minute_gaps(tmp_path):
    text = "user,session,item,ts\nu,s1,a,0\nu,s1,b,60\nu,s2,a,120\nu,s2,c,180\n"
    stats, out = prepare_csv(tmp_path / "with", text, "data.columns.session_id=session", "data.columns.event_type=null")
    assert rows(out, "test")[0]["new_session"] == [True, False, True, False]
    # Without session ids: a new session after more than 30 minutes of silence.
    text = "user,item,ts\nu,a,0\nu,b,1800\nu,a,3601\nu,c,3700\n"
    stats, out = prepare_csv(tmp_path / "without", text, "data.columns.event_type=null")
    assert rows(out, "test")[0]["new_session"] == [True, False, True, False]
