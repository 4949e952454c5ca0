"""The serving benchmark's summary of repeated rounds (the load itself runs in scripts/bench_serving.py)."""

from __future__ import annotations

import math

import pytest

from scripts.bench_serving import main, percentile, summary_table


def _row(rps, p99, repeat, concurrency=8, errors=0):
    return {
        "benchmark": "serving",
        "num_items": 1_000_000,
        "model": "recommend",
        "protocol": "grpc",
        "client": "raw",
        "concurrency": concurrency,
        "repeat": repeat,
        "throughput_rps": rps,
        "p50_ms": 2.0 + repeat,
        "p95_ms": 5.0 + repeat,
        "p99_ms": p99,
        "errors": errors,
        "server_peak_rss_mib": 4850.0,
    }


def test_summary_gives_medians_and_the_spread_of_each_level():
    rows = [_row(1000, 16.0, 0), _row(1200, 13.0, 1, errors=1), _row(900, 20.0, 2), _row(250, 3.9, 0, concurrency=1)]
    rows.append({"benchmark": "serving_inprocess", "num_items": 1_000_000, "p50_ms": 0.9})
    lines = summary_table(rows).splitlines()
    assert len(lines) == 2 + 2  # header, rule, one row per concurrency level; the in-process row is not a level
    c1, c8 = lines[2], lines[3]
    assert "| 1 | 1 | 250 | 2.00 | 5.00 | 3.9 | 0 |" in c1
    assert "| 8 | 3 | 1,000 (900-1,200) | 3.00 | 6.00 | 16.0 (13.0-20.0) | 1 | 4,850 |" in c8


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0 and percentile(values, 50) == 50.0
    assert math.isnan(percentile([], 99))  # nothing to rank


def test_zero_rounds_are_refused_before_anything_starts(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["bench_serving.py", "--repeats", "0", "--bundle", str(tmp_path)])
    with pytest.raises(SystemExit, match="--repeats 0: expected 1 or more rounds"):
        main()
