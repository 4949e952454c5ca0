"""Stage 6, respond: every row's `Result` (catalogue ids, scores, info), or the `RequestError` that refused it.

Each answered row gets its `recommendation_id` (intentrec.ids: unique, time-ordered) and the labels
attribution groups by: the model version and the row's experiment and arm.
"""

from __future__ import annotations

import numpy as np

from intentrec.serving.catalogue import Catalogue
from intentrec.serving.request import Result
from intentrec.serving.rows import Batch, Row


class Respond:
    name = "respond"

    def __init__(self, catalogue: Catalogue, model_version: str | None = None):
        self.catalogue = catalogue
        self.model_version = model_version

    def run(self, batch: Batch) -> None:
        item_ids = self.catalogue.item_ids
        for row in batch.rows:
            if isinstance(row, Row) and row.explore is not None:
                # An exploring row the model did not rank (no known event): its list was certain.
                shown = row.propensities if row.propensities is not None else np.ones(len(row.items))
                row.info["propensities"] = [round(float(p), 6) for p in shown]
            if isinstance(row, Row) and row.intent is not None:
                row.info["intent"] = row.intent
        batch.results = [
            Result(item_ids[row.items].tolist(), row.scores.astype(float).tolist(), row.info).label(
                self.model_version, row.experiment, row.arm
            )
            if isinstance(row, Row) and row.delegate is None
            else None  # answered by the arm's model version (Recommender.recommend)
            if isinstance(row, Row)
            else row
            for row in batch.rows
        ]
