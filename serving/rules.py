"""Stage 5, rules: each row's list cut to `k`, the complement rule after a purchase, popularity without history.

Exclusions (purchased items, the cart with `exclude_in_cart`) and filters (categories, price band)
already shaped the candidates (decode sets them, retrieve applies them). Here:
- after a purchase (web or store) within `complement_window_hours`, the list holds at least
  `complement_slots` items of the purchased category's complement categories (`complements.json`:
  its most frequent next categories in training sessions), placed last when the model ranked fewer;
- a row without any known event (empty history, or only unknown ids) gets the most popular items
  that pass the rules and filters (`info.fallback = "popularity"`).
"""

from __future__ import annotations

import numpy as np

from intentrec.serving.catalogue import Catalogue
from intentrec.serving.rows import Batch, Row, member


class Rules:
    name = "rules"

    def __init__(self, catalogue: Catalogue, complement_slots: int = 2):
        self.catalogue = catalogue
        self.complement_slots = int(complement_slots)

    def run(self, batch: Batch) -> None:
        for row in batch.rows:
            if not isinstance(row, Row):
                continue
            if row.active:
                row.items, row.scores = self.complements(row, row.items[: row.k], row.scores[: row.k])
            elif row.delegate is None:
                if row.model:
                    row.info["fallback"] = "popularity"
                row.items, row.scores = self.popular(row)

    def complements(self, row: Row, items: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """After a recent purchase, the list holds at least `complement_slots` items of its complement categories.

        Complements the model ranked keep their places and count; the missing ones replace the
        lowest-ranked other items, taken in retrieval-score order from the most-trained items of
        those categories (`COMPLEMENT_POOL` each) within the row's filters and rules.
        """
        c = self.catalogue
        configured = self.complement_slots if row.complement_slots is None else row.complement_slots
        slots = min(configured, len(items))
        targets = c.complements.get(row.complement_of or "", [])
        if not slots or not targets:
            return items, scores
        target_codes = c.complement_codes[row.complement_of]
        already = member(c.item_category[items], target_codes)
        needed = slots - int(already.sum())
        placed = 0
        pool = c.complement_pool(targets) if needed > 0 else np.zeros(0, dtype=np.int64)
        if row.allowed is not None:
            pool = pool[member(pool, row.allowed)]
        pool = pool[~member(pool, row.excluded) & ~member(pool, items)]
        if needed > 0 and len(pool):
            retrieval = c.embeddings[pool] @ row.query * c.scale
            best = pool[np.argsort(-retrieval, kind="stable")[:needed]]
            # Replace the lowest-ranked items that are not complements already.
            replace_at = np.flatnonzero(~already)[::-1][: len(best)][::-1]
            placed = len(replace_at)
            items, scores = items.copy(), scores.astype(np.float64).copy()
            if placed:
                # Below the items they follow, in retrieval order.
                scores[replace_at] = scores[replace_at[0]] - 1e-3 * np.arange(1, placed + 1)
                items[replace_at] = best[:placed]
        row.info["complements"] = {
            "after": row.complement_of,
            "categories": targets,
            "items": c.item_ids[items[member(c.item_category[items], target_codes)]].tolist(),
            "placed": placed,
        }
        return items, scores

    def popular(self, row: Row) -> tuple[np.ndarray, np.ndarray]:
        """The most popular items within the row's filters, its exclusions left out."""
        c = self.catalogue
        pool = c.popular if row.allowed is None else row.allowed[np.argsort(-c.popularity[row.allowed], kind="stable")]
        pool = pool[~member(pool, row.excluded)][: row.k]
        return pool, c.popularity[pool]
