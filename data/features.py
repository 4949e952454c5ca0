"""Feature transforms shared by training and serving, so both compute exactly the same inputs."""

from __future__ import annotations

import numpy as np

NUM_GAP_BUCKETS = 24  # 0 = padding/unknown, 1 = no gap (first step), 2.. = log2 buckets of seconds


def time_gap_buckets(gaps_seconds: np.ndarray) -> np.ndarray:
    """Bucket time gaps (seconds, -1 unknown) on a log2 scale: 0 unknown, 1 zero, 2 + floor(log2(gap)).

    1 s -> 2, 2-3 s -> 3, a minute -> 7, an hour -> 13, a day -> 18, a month -> 23 (the last bucket).
    """
    gaps = np.asarray(gaps_seconds, dtype=np.float64)
    buckets = 2 + np.floor(np.log2(np.maximum(gaps, 1.0)))
    buckets = np.where(gaps <= 0, 1, buckets)
    buckets = np.where(gaps < 0, 0, buckets)
    return np.clip(buckets, 0, NUM_GAP_BUCKETS - 1).astype(np.int64)


def cooccurrence_scores(matrix, item_ids: np.ndarray, history: int, decay: float):
    """Co-occurrence evidence of every item after each query's recent items (training and serving share it).

    matrix: (N + 1, N + 1) scipy CSR, C[i, j] = weighted count of j following i; item_ids (B, T) with
    the real steps first (0 = padding). The last `history` real items vote with weights decay^age
    (age 0 = most recent). Returns a (B, N + 1) CSR matrix of sum_h w_h C[h, :].
    """
    import scipy.sparse as sp

    item_ids = np.asarray(item_ids)
    lengths = (item_ids > 0).sum(axis=1)
    B = len(item_ids)
    age = np.arange(history)[None, :]
    position = lengths[:, None] - 1 - age
    valid = position >= 0
    recent = np.where(valid, item_ids[np.arange(B)[:, None], np.clip(position, 0, None)], 0)
    weight = np.where(valid & (recent > 0), decay**age, 0.0)
    query = sp.csr_matrix(
        (weight.ravel(), (np.repeat(np.arange(B), history), recent.ravel())), shape=(B, matrix.shape[0])
    )
    return (query @ matrix).tocsr()
