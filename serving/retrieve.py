"""Stage 3, retrieve: each active row's candidates, best first, after the exclusion rules and filters.

The FAISS index returns max(num_candidates, k) candidates plus as many as may be excluded. With a
category filter or a price band the allowed items are scored exactly instead (no candidate is lost
to the filter). A bundle exported with the hybrid (`manifest.hybrid`, `training.hybrid`) scores
every candidate logit + weight * log(eps + C), C the co-occurrence of the item after the row's last
`history` items (`cooccurrence.npz`), and the co-occurring items join the candidates (scored
exactly). Items without co-occurrence keep the two-tower's order, so the top k equals the hybrid's
ranking of the whole catalogue (with an exact index).
"""

from __future__ import annotations

import numpy as np

from intentrec.data.features import cooccurrence_scores, hybrid_bonus
from intentrec.serving.catalogue import Catalogue
from intentrec.serving.rows import Batch, Row, member


class Retrieve:
    name = "retrieve"

    def __init__(self, catalogue: Catalogue, index):
        self.catalogue = catalogue
        self.index = index

    def run(self, batch: Batch) -> None:
        rows = batch.active()
        if rows:
            for row, (items, scores) in zip(rows, self.candidates(rows)):
                row.items, row.scores = items, scores

    def candidates(self, rows: list[Row]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row: candidate item indexes and retrieval scores after rules, best first."""
        c = self.catalogue
        wanted = [max(c.num_candidates, row.k) for row in rows]
        out: list = [None] * len(rows)
        plain = [i for i, row in enumerate(rows) if row.allowed is None]
        if plain:
            n = min(c.num_items, max(wanted[i] + len(rows[i].excluded) for i in plain))
            queries = np.ascontiguousarray(np.stack([rows[i].query for i in plain]), dtype=np.float32)
            scores, found = self.index.search(queries, n)
            for j, i in enumerate(plain):
                row = rows[i]
                items, s = found[j] + 1, scores[j]
                keep = found[j] >= 0
                if len(row.excluded):
                    keep &= ~member(items, row.excluded)
                items, s = items[keep], s[keep] * c.scale
                if c.cooccurrence is not None:
                    items, s = self.hybrid(row, items, s)
                out[i] = (items[: wanted[i]], s[: wanted[i]])
        for i, row in enumerate(rows):
            if row.allowed is not None:
                allowed = row.allowed[~member(row.allowed, row.excluded)]
                s = c.embeddings[allowed] @ row.query * c.scale
                if c.cooccurrence is not None:
                    allowed, s = self.hybrid(row, allowed, s)
                top = np.argsort(-s, kind="stable")[: wanted[i]]
                out[i] = (allowed[top], s[top])
        return out

    def hybrid(self, row: Row, items: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates plus the row's co-occurring items, scored logit + weight * log(eps + C), best first."""
        c = self.catalogue
        weight, eps = float(c.hybrid["weight"]), float(c.hybrid["eps"])
        found_row = cooccurrence_scores(  # (1, N + 1): C(request, item), exactly as training scored it
            c.cooccurrence, row.idx[None, :], int(c.hybrid["history"]), float(c.hybrid["decay"])
        )
        found, counts = found_row.indices.astype(np.int64), found_row.data.astype(np.float64)
        usable = counts > 0
        if len(row.excluded):
            usable &= ~member(found, row.excluded)
        if row.allowed is not None:
            usable &= member(found, row.allowed)
        found, counts = found[usable], counts[usable]
        row.info["cooccurring_items"] = int(len(found))
        extra = found[~member(found, items)]
        items = np.concatenate([items, extra])
        scores = np.concatenate([logits, c.embeddings[extra] @ row.query * c.scale]).astype(np.float64)
        scores += weight * np.log(eps)  # every item's share of weight * log(eps + C)
        if len(found):
            order = np.argsort(items, kind="stable")
            at = order[np.searchsorted(items[order], found)]
            scores[at] += hybrid_bonus(counts, weight, eps)
        best = np.argsort(-scores, kind="stable")
        return items[best], scores[best]
