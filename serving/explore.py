"""Stage: exploration, for arms that log propensities (`explore` > 0 in the experiment's arm).

A row of an exploring arm shows, with probability `explore` (epsilon), a uniformly random ordering of
the ranked list's first `explore_pool` (m) items cut to k, and otherwise the list as ranked (its first
k). The probability that the policy shows item i at position p (p <= k) is then known exactly:

    propensity(i, p) = epsilon / m + (1 - epsilon) * [i is the ranked list's item at p]

for every i among the first m, and 0 for any other item. The answer carries the shown items'
propensities (`info.propensities`, position order); the client logs them with the impressions, and
`serving.events.off_policy` estimates another policy's clicks from them (inverse propensity scoring).
Exploring rows skip the complement rule, so the ranked list is exactly what the propensities assume;
an exploring row without a known event gets the popularity list with propensity 1 (it was certain).
"""

from __future__ import annotations

import numpy as np

from intentrec.serving.rows import Batch


class Explore:
    name = "explore"

    def __init__(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)

    def run(self, batch: Batch) -> None:
        for row in batch.active():
            if row.explore is None:
                continue
            epsilon, pool = row.explore
            ranked, scores = row.items, row.scores
            k = min(row.k, len(ranked))
            m = max(min(pool, len(ranked)), k)
            greedy = ranked[:k]
            if self.rng.random() < epsilon:
                order = self.rng.permutation(m)[:k]
                shown, shown_scores = ranked[order], scores[order]
                row.info["explored"] = True
            else:
                shown, shown_scores = greedy, scores[:k]
            row.items, row.scores = shown, shown_scores
            row.complement_slots = 0
            row.propensities = epsilon / m + (1 - epsilon) * (shown == greedy)
