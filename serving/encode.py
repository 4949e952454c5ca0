"""Stage 2, encode: the active rows' model inputs -> (B, D) query vectors, with the ONNX query encoder.

The step items' vectors are read from the served table (so items added after training are
encoded as they are retrieved); an attribute-fusion encoder (dif_sr) also reads each step's
attribute vectors. `remote` runs the encoder elsewhere (Triton BLS in the production repository).
"""

from __future__ import annotations

import numpy as np

from intentrec.serving.bundle import attribute_vectors, feature_widths
from intentrec.serving.catalogue import Catalogue
from intentrec.serving.intent import OUTPUTS as INTENT_OUTPUTS
from intentrec.serving.intent import Signals
from intentrec.serving.rows import Batch, Row
from intentrec.serving.runtime import Runtime

STEP_FIELDS = ("event_types", "gap_buckets", "channels", "new_session")
CONTEXT_INPUTS = ("device_type", "hour", "day_of_week", "referrer", "region", "gap_bucket")  # Row.context order


class Encode:
    name = "encode"

    def __init__(self, catalogue: Catalogue, runtime: Runtime, remote=None):
        self.catalogue = catalogue
        self.remote = remote
        self.session = runtime.session(catalogue.bundle.directory / "query_encoder.onnx")
        # Inputs the model does not read (e.g. context with model.context=none) are not in the graph.
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.attribute_tables = catalogue.bundle.attribute_tables() if "step_attributes" in self.inputs else []
        # A model with intent heads answers their signals with the query, from the same pass.
        self.signals = Signals.load(catalogue.bundle.directory) if INTENT_OUTPUTS[0] in self.outputs else None

    def run(self, batch: Batch) -> None:
        rows = batch.active()
        if rows:
            queries, signals, categories = self._encode_all(rows)
            for row, query in zip(rows, queries):
                row.query = query
            for i, row in enumerate(rows if signals is not None else ()):
                row.intent = signals[i]
                row.intent_categories = categories[i] if categories is not None else None

    def feed(self, rows: list[Row]) -> dict[str, np.ndarray]:
        """The encoder's input tensors for `rows` (padded to the longest)."""
        c = self.catalogue
        B, T = len(rows), max(len(row.idx) for row in rows)
        arrays = {name: np.zeros((B, T), np.int64) for name in ("step_mask", *STEP_FIELDS)}
        step_idx = np.zeros((B, T), np.int64)
        past_idx = np.zeros((B, c.past), np.int64)
        for i, row in enumerate(rows):
            n = len(row.idx)
            step_idx[i, :n] = row.idx
            arrays["step_mask"][i, :n] = 1
            for name in STEP_FIELDS:
                arrays[name][i, :n] = getattr(row, name)
            past_idx[i, : len(row.past)] = row.past
        context = np.asarray([row.context for row in rows], np.int64)  # (B, 6)
        feed = {
            "step_items": c.embeddings[step_idx],
            **arrays,
            **{name: context[:, j] for j, name in enumerate(CONTEXT_INPUTS)},
            "loyalty": np.asarray([row.loyalty for row in rows], np.int64),
            "past_items": c.embeddings[past_idx],
            "past_mask": (past_idx > 0).astype(np.int64),
        }
        if "step_attributes" in self.inputs:
            widths = feature_widths(c.bundle.manifest)
            feed["step_attributes"] = attribute_vectors(self.attribute_tables, widths, c.feature_codes[step_idx], c.dim)
        return {name: feed[name] for name in self.inputs}

    def encode(self, rows: list[Row]) -> np.ndarray:
        """(B, D) query vectors of rows that have at least one known event."""
        return self._run(self.feed(rows), ["query"])[0]

    def encode_with_intent(self, rows: list[Row]) -> tuple[np.ndarray, list[dict] | None]:
        """(B, D) query vectors and, when the bundle serves them, each row's intent signals (else None)."""
        queries, signals, _ = self._encode_all(rows)
        return queries, signals

    def _encode_all(self, rows: list[Row]):
        """(queries, signals or None, (B, C) next-category probabilities or None)."""
        if self.signals is None:
            return self.encode(rows), None, None
        values = self._run(self.feed(rows), self.outputs)
        probabilities = self.signals.distribution(values[2] if len(values) > 2 else None)
        return values[0], self.signals.of(values[1], probabilities), probabilities

    def _run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        if self.remote is not None:
            return self.remote("query_encoder", feed, outputs)
        return self.session.run(outputs, feed)
