"""Baselines as scorers of the same pipeline: same data, same examples, same metrics as the models.

- `popularity`: items ranked by their number of training events, the same for everyone.
- `cooccurrence`: sequential item-to-item co-occurrence (a neighbourhood / sequential-rules model):
  C[i, j] counts j following i within `window` steps of a training sequence, weighted 1 / distance,
  and divided by (training count of j) ^ `popularity_discount` (0: raw counts; 0.5 keeps the most
  popular items from following everything, as IDF weighting does in item-based neighbourhood models);
  a query scores sum_h w_h C[h, :] over its last `history` items h with recency weights
  w = decay^age. A popularity term of at most 1e-6 breaks ties among items co-occurrence cannot
  tell apart.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from intentrec.data.features import cooccurrence_scores
from intentrec.errors import ConfigError
from intentrec.training.datamodule import Split

BASELINES = ("popularity", "cooccurrence")


class Popularity:
    def __init__(self, train_counts: np.ndarray, **_):
        self.scores = torch.as_tensor(np.asarray(train_counts, dtype=np.float64))

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scores.unsqueeze(0).expand(batch["item_ids"].shape[0], -1).clone()


class CoOccurrence:
    def __init__(
        self,
        train_counts: np.ndarray,
        train: Split,
        window: int = 3,
        history: int = 5,
        decay: float = 0.8,
        popularity_discount: float = 0.0,
        **_,
    ):
        check_settings("model.", window=window, history=history, decay=decay, popularity_discount=popularity_discount)
        n = len(train_counts)
        items = train.steps["item_ids"].astype(np.int64)
        row = train.row_of_step
        rows, cols, weights = [], [], []
        for distance in range(1, window + 1):  # a handful of shifted copies, vectorised over all steps
            same = (row[:-distance] == row[distance:]) & (items[:-distance] > 0) & (items[distance:] > 0)
            rows.append(items[:-distance][same])
            cols.append(items[distance:][same])
            weights.append(np.full(int(same.sum()), 1.0 / distance))
        self.matrix = sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )
        self.matrix.sum_duplicates()
        if popularity_discount:
            discount = np.maximum(np.asarray(train_counts, dtype=np.float64), 1.0) ** -float(popularity_discount)
            self.matrix = (self.matrix @ sp.diags(discount)).tocsr()
        self.popularity = np.asarray(train_counts, dtype=np.float64) / max(float(np.max(train_counts)), 1.0) * 1e-6
        self.history, self.decay = history, decay

    def sparse(self, item_ids: np.ndarray) -> sp.csr_matrix:
        """(B, T) item ids (0 = padding, real steps first) -> (B, N) co-occurrence scores, no popularity term."""
        return cooccurrence_scores(self.matrix, item_ids, self.history, self.decay)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = self.sparse(batch["item_ids"].numpy()).toarray() + self.popularity[None, :]
        return torch.from_numpy(scores)


SETTINGS = {  # co-occurrence setting -> (valid?, what is expected)
    "window": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1 (e.g. 3)"),
    "history": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1 (e.g. 5)"),
    "decay": (lambda v: isinstance(v, int | float) and v >= 0, "a number >= 0 (e.g. 0.8; 0: the last item alone)"),
    "popularity_discount": (
        lambda v: isinstance(v, int | float) and v >= 0,
        "a number >= 0 (0 keeps raw counts, 0.5 discounts popular items)",
    ),
}


def check_settings(prefix: str = "", **settings) -> None:
    """Clear errors for co-occurrence settings that cannot work (model.* of the baseline, hybrid.* of the hybrid)."""
    for key, value in settings.items():
        valid, expected = SETTINGS[key]
        if isinstance(value, bool) or not valid(value):
            raise ConfigError(f"{prefix}{key}={value!r}; expected {expected}.")


def make_baseline(name: str, train_counts: np.ndarray, train: Split, params: dict):
    if name == "popularity":
        return Popularity(train_counts)
    if name == "cooccurrence":
        return CoOccurrence(train_counts, train, **params)
    raise ConfigError(f"model.baseline={name!r}; expected one of {list(BASELINES)}.")
