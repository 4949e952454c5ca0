"""The typed state the serving path's stages pass along: one `Row` per request row, one `Batch` per call.

`serving.pipeline` runs the stages in order over a `Batch`: decode fills `rows` (a `Row`, or the
`RequestError` that refused the request), encode sets each active row's `query`, retrieve and rank
set `items` and `scores` (best first), the rules stage cuts them to `k` and applies the list rules,
and respond turns every row into its `Result`. A stage reads and writes named fields only, so a new
stage (an experiment arm, an intent head) is one module and one entry in the pipeline's list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from intentrec.serving.request import Query, RequestError, Result


def member(values: np.ndarray, pool) -> np.ndarray:
    """np.isin(values, pool) for the short pools of one request (a few ids or codes).

    np.isin sorts both sides (about 40 us per call); up to 32 entries one broadcast compare is
    several times faster. Longer pools go to np.isin.
    """
    pool = np.asarray(pool)
    if len(pool) > 32:
        return np.isin(values, pool)
    if len(pool) == 0:
        return np.zeros(np.shape(values), dtype=bool)
    return (np.asarray(values)[..., None] == pool).any(-1)


@dataclass
class Row:
    """One decoded request: the model's inputs (the kept window of known events), the rule sets, and the
    list as the stages build it."""

    idx: np.ndarray  # item indexes of the kept events (1.., time order)
    event_types: np.ndarray  # their event-type codes
    gap_buckets: np.ndarray  # time-gap bucket of each step (data.features.time_gap_buckets)
    channels: np.ndarray  # channel codes
    new_session: np.ndarray  # 1 where a step starts a session (data.features.session_starts)
    context: list[int]  # device type, hour, day of week, referrer, region, gap-to-now bucket codes
    loyalty: int
    past: np.ndarray  # past purchases (item indexes, oldest first)
    k: int
    excluded: np.ndarray  # item indexes the rules leave out (purchased, in the cart), sorted
    allowed: np.ndarray | None  # the only item indexes allowed (category or price filter), or None: all
    in_cart: list[int]
    complement_of: str | None  # the category of a purchase within the complement window
    info: dict  # what the answer reports (unknown items and context, truncation, fallback, ...)
    experiment: str | None = None  # the experiment the shopper is in, and their arm (None outside one)
    arm: str | None = None
    model: bool = True  # whether this model answers the row (False: a popularity arm, or delegated)
    delegate: str | None = None  # the model version of the row's arm, when another version answers it
    complement_slots: int | None = None  # the arm's business-rule variant (None: the configured slots)
    explore: tuple[float, int] | None = None  # (epsilon, pool) of an exploring arm (serving.explore)
    propensities: np.ndarray | None = None  # P(shown item at its position) under an exploring policy
    query: np.ndarray | None = None  # (D,) query vector (encode)
    intent: dict | None = None  # intent signals (encode, when the bundle serves them: serving.intent)
    intent_categories: np.ndarray | None = None  # (C,) next-category probabilities by code (banners read them)
    items: np.ndarray | None = None  # the list, best first (retrieve, rank, rules)
    scores: np.ndarray | None = None

    @property
    def active(self) -> bool:
        """Whether the model encodes the row: a known event, and the model answers it (else the rules
        stage answers it by popularity, or another model version does)."""
        return self.model and len(self.idx) > 0


@dataclass
class Batch:
    """The requests of one call and what the stages made of them, row for row."""

    queries: list[Query]
    rows: list[Row | RequestError] = field(default_factory=list)
    results: list[Result | RequestError] = field(default_factory=list)

    def active(self) -> list[Row]:
        """The decoded rows with a known event, in request order (what encode, retrieve and rank see)."""
        return [row for row in self.rows if isinstance(row, Row) and row.active]
