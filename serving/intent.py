"""Intent signals at serving: the query encoder's intent outputs -> calibrated probabilities and next categories.

A bundle exported from a model with intent heads has a query encoder with two more outputs, the heads'
logits at the request's moment (`intent_binary` (B, 3): purchase, exit, abandon; `intent_category` (B, C)),
and `intent.json`, the calibration fitted on the training run's validation steps and the category names:

    {"heads": {"purchase": {"method": "temperature", "temperature": 1.1}, "exit": {...}},
     "unavailable": {"abandon": "no session ends with a cart"},
     "next_category": {"temperature": 1.12, "names": ["", "dresses", ...]}}

`Signals.of` turns the logits (the category's through `Signals.distribution`) into what `recommend` answers in `info.intent` and the `intent` model
answers alone: `{"purchase": 0.41, "exit": 0.12, "next_category": [{"category": "dresses", "p": 0.83}, ...]}`
(a head that is off is left out). The calibration is training.intent.calibrated: one rule for both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from intentrec.training.intent import calibrated, category_probabilities
from intentrec.training.intent_labels import BINARY_HEADS  # numpy only: serving never imports torch

INTENT_FILE = "intent.json"
OUTPUTS = ("intent_binary", "intent_category")  # the query encoder's outputs after `query` (serving.onnx_models)
TOP_CATEGORIES = 3


class Signals:
    """The calibration of a bundle's intent heads (`intent.json`)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.heads = {head: spec["heads"][head] for head in BINARY_HEADS if head in spec.get("heads", {})}
        category = spec.get("next_category")
        self.category_temperature = float(category["temperature"]) if category else None
        self.names = list(category["names"]) if category else []

    @classmethod
    def load(cls, directory: Path) -> Signals | None:
        path = Path(directory) / INTENT_FILE
        return cls(json.loads(path.read_text())) if path.is_file() else None

    def distribution(self, category: np.ndarray | None) -> np.ndarray | None:
        """(B, C) next-category probabilities by code from the category logits (None without that head)."""
        if category is None or self.category_temperature is None:
            return None
        return category_probabilities(category, self.category_temperature)

    def of(self, binary: np.ndarray, probabilities: np.ndarray | None) -> list[dict]:
        """(B, 3) binary logits and (B, C) next-category probabilities (`distribution`, or None) -> one signals
        dict per row."""
        out = [{} for _ in range(len(binary))]
        for index, head in enumerate(BINARY_HEADS):
            if head in self.heads:
                for row, p in zip(out, calibrated(self.heads[head], binary[:, index])):
                    row[head] = round(float(p), 6)
        p = probabilities
        if p is not None:
            top = np.argsort(-p, axis=1, kind="stable")[:, :TOP_CATEGORIES]
            for row, codes, probabilities in zip(out, top, p):
                row["next_category"] = [
                    {
                        "category": self.names[c] if c < len(self.names) else str(c),
                        "p": round(float(probabilities[c]), 6),
                    }
                    for c in codes
                ]
        return out
