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
