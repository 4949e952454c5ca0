"""scripts/bench_recbole.py with intentrec's side only (`--recbole-models` given no model), on the tiny shop:
the split handed to RecBole is the one intentrec trains and tests on, and the results land beside `--out`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scripts.bench_recbole import METRICS, export_split, pick_reference, seconds_to_reach, table

REPO = Path(__file__).resolve().parents[2]


def test_intentrec_only_run_exports_the_split_it_tests_on(tmp_path):
    out = tmp_path / "results" / "recbole.jsonl"
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench_recbole.py"),
        "--datasets",
        "synthetic",
        "--recbole-models",
        "--intentrec-models",
        "gru@hybrid.enabled=true",
        "--epochs",
        "1",
        "--max-len",
        "20",
        "--venv",
        str(tmp_path / "recbole_venv"),
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
        "--intentrec-overrides",
        "debug=fast",
        f"artifacts_dir={tmp_path / 'artifacts'}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # No RecBole model asked for: its venv is not installed.
    assert not (tmp_path / "recbole_venv").exists()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows][0] == "gru@hybrid.enabled=true"
    assert len(rows) == 2 and rows[1]["variant"].startswith("gru@hybrid.enabled=true + co-occurrence (hybrid, weight ")
    gru = rows[0]
    assert gru["library"] == "intentrec" and gru["epochs"] == 1 and gru["seed"] == 0
    assert "--recbole-models --intentrec-models" in gru["command"]
    assert 0.0 <= gru["test"]["ndcg@10"] <= gru["test"]["hr@10"] <= 1.0

    # The prepared split came from the overridden artifacts_dir, and RecBole's test file holds
    # exactly the targets intentrec was tested on.
    assert (tmp_path / "artifacts" / "data" / "synthetic").is_dir()
    test_files = list((tmp_path / "work").glob("*/synthetic/recbole_data/synthetic/synthetic.test.inter"))
    assert len(test_files) == 1
    exported = test_files[0].read_text().splitlines()
    assert exported[0] == "session_id:token\titem_id_list:token_seq\titem_id:token"
    assert len(exported) - 1 == gru["targets"]["test"] == gru["test_targets"]
    assert all(len(line.split("\t")[1].split()) <= 20 for line in exported[1:])

    # The markdown table is written beside --out, not into the repository's results.
    tables = list(out.parent.glob("recbole_*.md"))
    assert len(tables) == 1
    row = next(line for line in tables[0].read_text().splitlines() if line.startswith("| intentrec | gru@hybrid"))
    # No SASRec ran, so "seconds to SASRec's best validation" is not applicable, not "not reached" ("-").
    assert row.endswith("| 1 | n/a |")
    assert "| s to RecBole's best val |" in tables[0].read_text()
    (curves,) = out.parent.glob("recbole_*_synthetic_curves.png")
    assert curves.stat().st_size > 10_000 and curves.name in tables[0].read_text()

    # With history masking, each row also carries its whole history, which RecBole's runner masks.
    seen_dir = tmp_path / "seen"
    counts = export_split(tmp_path / "artifacts" / "data" / "synthetic", seen_dir, "synthetic", 5, seen=True)
    lines = (seen_dir / "synthetic.test.inter").read_text().splitlines()
    assert lines[0].endswith("\tseen_list:token_seq") and len(lines) - 1 == counts["test"] == gru["test_targets"]
    longer = 0
    for line in lines[1:]:
        _, window, target, seen = line.split("\t")
        assert seen.split()[-len(window.split()) :] == window.split() and len(window.split()) <= 5
        longer += len(seen.split()) > 5
    assert longer > 0  # rows whose history is longer than the window: masked in full


def _row(library, variant, val, speed, curve, best_seconds=None):
    row = {
        "library": library,
        "variant": variant,
        "test": {m: 0.05 if library == "recbole" else 0.06 for m in METRICS},
        "val_ndcg@10": val,
        "train_targets_per_second": speed,
        "seconds_per_epoch": 1.0,
        "epochs": len(curve),
        "curve": curve,
    }
    if best_seconds is not None:
        row["best_epoch_train_seconds"] = best_seconds
    return row


def test_ratios_are_against_sasrec_if_it_ran_else_the_recbole_model_that_did():
    gru4rec = _row("recbole", "GRU4Rec", 0.04, 500.0, [[30.0, 0.03], [60.0, 0.04]], best_seconds=60.0)
    sasrec = _row("recbole", "SASRec", 0.05, 400.0, [[40.0, 0.05]], best_seconds=40.0)
    ours = _row("intentrec", "gru", 0.055, 5000.0, [[3.0, 0.041], [6.0, 0.055]])

    assert pick_reference([gru4rec, sasrec, ours]) is sasrec
    assert pick_reference([ours]) is None
    reference = pick_reference([gru4rec, ours])
    assert reference is gru4rec
    ours["seconds_to_reference"] = seconds_to_reach(ours["curve"], reference["val_ndcg@10"])
    text = table("synthetic", [gru4rec, ours], reference)
    assert "s to RecBole GRU4Rec's best val" in text
    assert "10.0x the training targets/s, 1.200x the test NDCG@10, 20.0x faster to RecBole GRU4Rec's best" in text
