"""The retrieval benchmark's timing and recall helpers, on real FAISS indexes (the full run is scripts/bench_retrieval.py)."""

from __future__ import annotations

import numpy as np
import pytest

from intentrec.serving.index import build_index, set_search_params
from scripts.bench_retrieval import recall, timed_search


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 4000)] + 0.3 * rng.normal(size=(4000, 16)).astype(np.float32)
    queries = centres[rng.integers(0, 40, 64)] + 0.3 * rng.normal(size=(64, 16)).astype(np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(queries, dtype=np.float32)


def test_every_timed_pass_is_kept_and_ids_come_from_the_last(clustered):
    vectors, queries = clustered
    index = build_index(vectors, "Flat")
    rates, ids = timed_search(index, queries, 20, 8, repeats=3)
    assert len(rates) == 3 and all(rate > 0 for rate in rates)
    assert ids.shape == (64, 20)
    np.testing.assert_array_equal(ids, index.search(queries, 20)[1])


def test_recall_is_measured_against_exact_search(clustered):
    vectors, queries = clustered
    _, exact = timed_search(build_index(vectors, "Flat"), queries, 50, 64, repeats=1)
    assert recall(exact, exact, 10) == 1.0
    ivf = build_index(vectors, "IVF64,Flat")
    set_search_params(ivf, {"nprobe": 1})
    _, narrow = timed_search(ivf, queries, 50, 64, repeats=1)
    set_search_params(ivf, {"nprobe": 64})
    _, wide = timed_search(ivf, queries, 50, 64, repeats=1)
    # One list of 64 misses neighbours in the lists next to it; all 64 lists are exact search.
    assert recall(narrow, exact, 50) < 0.9
    assert recall(wide, exact, 50) == pytest.approx(1.0)
