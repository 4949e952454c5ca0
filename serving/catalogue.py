"""The served catalogue: an export bundle's tables, read once, which every stage of the serving path looks up.

Item ids and their indexes (1..N; 0 is padding), item vectors, categories, prices, popularity, the
vocabularies of event types and context values, the complement categories after a purchase, and,
for a bundle exported with the hybrid, the co-occurrence counts.
"""

from __future__ import annotations

import json

import numpy as np

from intentrec.data.features import PURCHASE_EVENTS, event_codes
from intentrec.errors import DataError
from intentrec.serving.bundle import Bundle

COMPLEMENT_POOL = 200  # most-trained items per complement category the complement rule scores
VOCABULARIES = ("event_types", "device_types", "referrers", "regions", "channels", "loyalty")


class Catalogue:
    """Lookups over one bundle's items and vocabularies, built once per loaded model version."""

    def __init__(self, bundle: Bundle):
        m = bundle.manifest
        self.bundle = bundle
        self.embeddings = bundle.embeddings
        self.dim = bundle.dim
        self.num_items = bundle.num_items
        self.max_seq_len = int(m["model"]["max_seq_len"])
        self.past = max(1, int(m["past_purchases"]))
        self.scale = float(m["model"]["logit_scale"])
        self.session_gap_ms = int(m["session_gap_s"]) * 1000
        vocab = m["vocab"]
        self.codes = {
            name: {value: code for code, value in enumerate(vocab.get(name, [])) if code > 0} for name in VOCABULARIES
        }
        self.event_names = {code: name for name, code in self.codes["event_types"].items()}
        self.purchase_codes = event_codes(PURCHASE_EVENTS, vocab["event_types"])
        self.web = self.codes["channels"].get("web", 0)
        self.item_index = {item_id: i + 1 for i, item_id in enumerate(bundle.items["item_id"].tolist())}
        self.item_ids = np.concatenate([[""], bundle.items["item_id"].astype(str)]).astype(object)
        self.categories = bundle.padded("category", "").astype(str)
        self.prices = bundle.padded("price", np.nan).astype(np.float64)
        self.priced = bool(np.isfinite(self.prices[1:]).any())
        complements_path = bundle.directory / "complements.json"
        following = json.loads(complements_path.read_text())["next"] if complements_path.is_file() else {}
        # The purchased category's top 3 next categories (shares of at least 5%).
        self.complements = {c: [n for n, share in rows[:3] if share >= 0.05] for c, rows in following.items()}
        # Integer category codes per item index (1.., sorted by name; 0: padding) for the rules'
        # comparisons, and each category's item indexes (ascending), without a loop over items.
        names, inverse = np.unique(self.categories[1:], return_inverse=True)
        self.category_code = {c: code for code, c in enumerate(names.tolist(), start=1)}
        self.item_category = np.concatenate([[0], inverse + 1]).astype(np.int64)
        grouped = np.argsort(inverse, kind="stable") + 1
        bounds = np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1]
        self.category_items = dict(zip(names.tolist(), np.split(grouped, bounds)))
        self.complement_codes = {
            c: np.asarray([self.category_code[n] for n in nexts if n in self.category_code], dtype=np.int64)
            for c, nexts in self.complements.items()
        }
        counts = bundle.padded("train_count").astype(np.float64)
        # The complement rule's pools: each category's most-trained items.
        self.complement_pools = {
            c: v[np.argsort(-counts[v], kind="stable")[:COMPLEMENT_POOL]] for c, v in self.category_items.items()
        }
        self.popular = np.argsort(-counts[1:], kind="stable") + 1
        self.popularity = counts
        self.feature_codes = bundle.feature_codes()
        # Candidates retrieval passes on (the ranker's training setting; 50 without a ranker).
        self.num_candidates = int(m["ranker"]["num_candidates"]) if m.get("ranker") else 50
        self.hybrid = m.get("hybrid") or None
        self.cooccurrence = self._cooccurrence() if self.hybrid else None

    def _cooccurrence(self):
        import scipy.sparse as sp

        m = self.bundle.manifest
        path = self.bundle.directory / "cooccurrence.npz"
        if not path.is_file():
            raise DataError(f"{path} not found but the manifest serves the hybrid; export the checkpoint again.")
        matrix = sp.load_npz(path).tocsr()
        trained = int(m.get("trained_items", m["num_items"]))
        if matrix.shape != (trained + 1, trained + 1):
            raise DataError(
                f"{path} is {matrix.shape[0]} x {matrix.shape[1]}; the manifest's trained_items={trained} needs "
                f"{trained + 1} x {trained + 1}; export the checkpoint again."
            )
        matrix.resize((self.num_items + 1, self.num_items + 1))  # items added later have no co-occurrence
        return matrix

    def indexes(self, item_ids) -> np.ndarray:
        """Item indexes of raw ids (0 for an id not in the catalogue)."""
        return np.asarray([self.item_index.get(str(i), 0) for i in item_ids], dtype=np.int64)

    def complement_pool(self, categories: list[str]) -> np.ndarray:
        """Item indices of `categories`: the `COMPLEMENT_POOL` most-trained items of each."""
        found = [self.complement_pools[c] for c in categories if c in self.complement_pools]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
