"""Stage 4, rank: the ONNX ranker re-scores each active row's candidates with context and item features.

A bundle without a ranker (or exported with the hybrid) keeps the retrieval order. `remote` runs the
ranker elsewhere (Triton BLS in the production repository).
"""

from __future__ import annotations

import numpy as np

from intentrec.serving.catalogue import Catalogue
from intentrec.serving.rows import Batch
from intentrec.serving.runtime import Runtime


class Rank:
    name = "rank"

    def __init__(self, catalogue: Catalogue, runtime: Runtime, remote=None):
        m = catalogue.bundle.manifest
        path = catalogue.bundle.directory / "ranker.onnx"
        self.catalogue = catalogue
        self.remote = remote
        self.session = runtime.session(path) if m.get("ranker") and path.is_file() else None
        # The inputs export recorded (a ranker without item features has no candidate_codes input).
        self.inputs = (m.get("ranker") or {}).get("inputs")

    def run(self, batch: Batch) -> None:
        rows = batch.active()
        if self.session is None or not rows:
            return
        C = max(len(row.items) for row in rows)
        if C == 0:
            return
        c = self.catalogue
        B = len(rows)
        items = np.zeros((B, C), np.int64)
        scores = np.zeros((B, C), np.float32)
        valid = np.zeros((B, C), bool)
        for i, row in enumerate(rows):
            n = len(row.items)
            items[i, :n], scores[i, :n], valid[i, :n] = row.items, row.scores, True
            scores[i, n:] = row.scores[-1] if n else 0.0
        feed = {
            "query": np.stack([row.query for row in rows]).astype(np.float32),
            "candidates": c.embeddings[items],
            "candidate_codes": c.feature_codes[items],
            "context": np.asarray([[*row.context, row.loyalty] for row in rows], np.int64),
            "retrieval_scores": scores,
        }
        if self.inputs is not None:
            feed = {name: feed[name] for name in self.inputs}
        logits = self.remote("ranker", feed) if self.remote is not None else self.session.run(["logits"], feed)[0]
        logits = np.where(valid, logits, -np.inf)
        for i, row in enumerate(rows):
            order = np.argsort(-logits[i], kind="stable")[: valid[i].sum()]
            row.items, row.scores = items[i, order], logits[i, order]
