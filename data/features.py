"""Feature rules shared by training and serving, so both compute exactly the same inputs.

Every rule that turns a shopper's events into model inputs or rule inputs lives here once and is
imported by preparation (`data.prepare`), training, serving (`serving.recommender`) and the event
platform (`serving.events`): event-type sets, session starts, step time gaps and their buckets,
hour and day codes, the cart after a sequence of events, and co-occurrence evidence. Each works on
numpy arrays, so the batch path (a whole split) and one request call the same function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

NUM_GAP_BUCKETS = 24  # 0 = padding/unknown, 1 = no gap (first step), 2.. = log2 buckets of seconds
SESSION_GAP_MS = 30 * 60 * 1000  # without session ids, a pause longer than this starts a new session
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
# Event times outside this window are almost certainly unit mistakes (seconds sent as ms or the
# reverse); the collector, the recommend model and preparation's upper bound refuse them alike.
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01
MAX_EVENT_TIME_MS = 4_102_444_800_000  # 2100-01-01

# The purchase event set by name (data.schema.EVENT_TYPES holds the names and their codes).
PURCHASE_EVENTS = ("purchase", "store_purchase")  # what a shopper bought, online or in a store


def event_codes(names: Iterable[str], vocabulary: Sequence[str]) -> np.ndarray:
    """Codes of the event types `names` in `vocabulary` (a code is a position in it; 0 is padding), those
    present only: e.g. event_codes(PURCHASE_EVENTS, ["", *EVENT_TYPES])."""
    position = {name: code for code, name in enumerate(vocabulary) if code > 0}
    return np.asarray([position[name] for name in names if name in position], dtype=np.int64)


def session_starts(
    first: np.ndarray,
    sessions: np.ndarray,
    has_session: np.ndarray,
    times_ms: np.ndarray | None,
    gap_ms: int = SESSION_GAP_MS,
) -> np.ndarray:
    """Which steps start a session, over consecutive steps in time order (bool (n,)).

    A sequence's first step (`first`) starts one. After that, when a step and the step before both carry
    a session id, the shop's ids decide: a new id starts a session, and a long pause under the same id
    does not (the shop's own definition of a visit, as its analytics count them). When either has no
    id, a pause longer than `gap_ms` (SESSION_GAP_MS; milliseconds, compared exactly) starts one; without
    times, nothing more does.
    """
    new = np.asarray(first, dtype=bool).copy()
    if len(new) < 2:
        return new
    has_session = np.asarray(has_session, dtype=bool)
    both = has_session[1:] & has_session[:-1]
    changed = np.asarray(sessions[1:] != sessions[:-1], dtype=bool)
    paused = np.zeros(len(new) - 1, bool)
    if times_ms is not None:
        times_ms = np.asarray(times_ms, dtype=np.int64)
        paused = (times_ms[1:] - times_ms[:-1]) > gap_ms
    new[1:] |= np.where(both, changed, paused)
    return new


def step_gaps_seconds(times_ms: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Whole seconds since the step before (0 at a sequence's first step, and for out-of-order times)."""
    times_ms = np.asarray(times_ms, dtype=np.int64)
    gaps = np.zeros(len(times_ms), np.int64)
    gaps[1:] = (times_ms[1:] - times_ms[:-1]) // 1000
    gaps[np.asarray(first, dtype=bool)] = 0
    return np.clip(gaps, 0, np.iinfo(np.int32).max)


def hour_codes(times_ms) -> np.ndarray:
    """Hour of day (UTC) + 1: 1..24; 0 is kept for unknown."""
    return (np.asarray(times_ms, dtype=np.int64) // MS_PER_HOUR) % 24 + 1


def day_codes(times_ms) -> np.ndarray:
    """Day of week: 1 = Monday ... 7 = Sunday (1970-01-01 was a Thursday); 0 is kept for unknown."""
    return (np.asarray(times_ms, dtype=np.int64) // MS_PER_DAY + 3) % 7 + 1


def replay_cart(events: Iterable[tuple]) -> tuple[dict, int | None, int | None]:
    """The web cart after `events` (item, event type, quantity, time), oldest first.

    Returns (cart {item: quantity}, time of the last cart change, time of the last online purchase).
    add_to_cart adds its quantity (1 when missing or 0), remove_from_cart takes its quantity away (the
    item leaves the cart at 0), an online `purchase` checks the item out of the cart, and a store
    purchase leaves the web cart as it is (the shopper's web cart still shows it; rules that must not
    remind a shopper of what they bought in a store check purchases, not the cart).
    """
    cart: dict = {}
    changed = purchased = None
    for item, kind, quantity, when in events:
        quantity = int(quantity or 1)
        if kind == "add_to_cart":
            cart[item] = cart.get(item, 0) + quantity
            changed = when
        elif kind == "remove_from_cart":
            left = cart.get(item, 0) - quantity
            if left > 0:
                cart[item] = left
            else:
                cart.pop(item, None)
            changed = when
        elif kind == "purchase":
            cart.pop(item, None)
            purchased = when
    return cart, changed, purchased


def time_gap_buckets(gaps_seconds: np.ndarray) -> np.ndarray:
    """Bucket time gaps (seconds, -1 unknown) on a log2 scale: 0 unknown, 1 zero, 2 + floor(log2(gap)).

    1 s -> 2, 2-3 s -> 3, a minute -> 7, an hour -> 13, a day -> 18, a month -> 23 (the last bucket).
    """
    gaps = np.asarray(gaps_seconds, dtype=np.float64)
    buckets = 2 + np.floor(np.log2(np.maximum(gaps, 1.0)))
    buckets = np.where(gaps <= 0, 1, buckets)
    buckets = np.where(gaps < 0, 0, buckets)
    return np.clip(buckets, 0, NUM_GAP_BUCKETS - 1).astype(np.int64)


# The seconds each time-gap bucket stands for (its inverse, for sums of gaps): 0 for unknown and no gap, and
# 1.5 x 2^(b-2), the middle of bucket b's [2^(b-2), 2^(b-1)) seconds, above.
GAP_BUCKET_SECONDS = np.concatenate([[0.0, 0.0], 1.5 * 2.0 ** np.arange(NUM_GAP_BUCKETS - 2)]).astype(np.float32)


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


def bucket_edges(values, num_buckets: int) -> list[float]:
    """Quantile edges that split the known (non-NaN) `values` into at most `num_buckets` buckets (equal edges merged).

    Preparation fits them on the catalogue (prices, numeric item attributes); the bundle keeps them, so
    an item added later is bucketed by `value_buckets` with the training edges."""
    x = np.asarray(values, dtype=np.float64)
    known = x[~np.isnan(x)]
    if not len(known):
        return []
    return np.unique(np.quantile(known, np.linspace(0, 1, num_buckets + 1)[1:-1])).tolist()


def value_buckets(values, edges) -> np.ndarray:
    """Bucket codes of numeric values by `edges` (bucket_edges): 1..len(edges) + 1; 0 for an unknown (NaN) value."""
    x = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(x), 0, np.searchsorted(np.asarray(edges, np.float64), x, side="right") + 1).astype(
        np.int64
    )


def window_starts(lengths, max_len: int) -> np.ndarray:
    """Where the model's window starts in sequences of `lengths` steps: the most recent `max_len` steps are
    kept, older ones are cut (their purchases still count: `purchases_before`)."""
    return np.maximum(0, np.asarray(lengths, dtype=np.int64) - int(max_len))


def purchases_before(items, event_types, offsets, rows, starts, count: int, purchase_codes) -> np.ndarray:
    """(W, count) the last `count` items each row purchased before its window, oldest first, 0 on the left.

    items, event_types: flat step arrays of all rows; offsets: where each row starts in them; rows (W,)
    and starts (W,): the row of each window and its first flat step. Purchases are `purchase_codes`
    (event_codes(PURCHASE_EVENTS, vocabulary))."""
    rows, starts = np.asarray(rows, np.int64), np.asarray(starts, np.int64)
    # A broadcast compare: the purchase codes are one or two (np.isin sorts both sides, ~40 us a call).
    codes = np.asarray(purchase_codes, np.int64).reshape(-1)
    bought = np.flatnonzero((np.asarray(event_types)[:, None] == codes[None, :]).any(axis=1))
    if len(bought) == 0:
        return np.zeros((len(rows), count), np.int64)
    before = np.searchsorted(bought, starts)  # purchases (over all rows) before each window
    first = np.searchsorted(bought, np.asarray(offsets)[rows])  # each row's first purchase
    index = before[:, None] - count + np.arange(count)[None, :]
    found = np.asarray(items)[bought][np.clip(index, 0, len(bought) - 1)]
    return np.where(index >= first[:, None], found, 0).astype(np.int64)


def hybrid_bonus(counts, weight: float, eps: float) -> np.ndarray:
    """The co-occurrence term of the hybrid score beyond its constant: weight * (log(eps + C) - log(eps)), 0 at C = 0.

    score(q, i) = logit(q, i) + weight * log(eps + C(q, i)) = logit + weight * log(eps) + hybrid_bonus(C):
    items without co-occurrence keep the model's order (training.hybrid and serving.retrieve)."""
    counts = np.asarray(counts, dtype=np.float64)
    return weight * (np.log(eps + counts) - np.log(eps))
