"""Stage 6, respond: every row's `Result` (catalogue ids, scores, info), or the `RequestError` that refused it."""

from __future__ import annotations

from intentrec.serving.catalogue import Catalogue
from intentrec.serving.request import Result
from intentrec.serving.rows import Batch, Row


class Respond:
    name = "respond"

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue

    def run(self, batch: Batch) -> None:
        item_ids = self.catalogue.item_ids
        batch.results = [
            Result(item_ids[row.items].tolist(), row.scores.astype(float).tolist(), row.info)
            if isinstance(row, Row)
            else row
            for row in batch.rows
        ]
