"""Hybrid scores: the two-tower's logits plus co-occurrence evidence, with one weight tuned on validation.

    score(q, i) = logit(q, i) + weight * log(eps + C(q, i))

C(q, i) is the `cooccurrence` baseline's score of item i after the query's recent items (counted on
the training split only). Every item without co-occurrence gets the same offset weight * log(eps),
so among those the two-tower's order is kept. Serving can therefore score FAISS's top candidates
plus the items that have co-occurrence, and nothing else, and still return the exact top k.

The weight is chosen from `hybrid.weights` by validation NDCG@10 (the validation split is the
model-selection split, as for early stopping); test is evaluated once, with that weight.
Results are `hybrid_val/*` and `hybrid_test/*` beside the two-tower's own `val/*` and `test/*`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from intentrec.data.features import hybrid_bonus
from intentrec.errors import ConfigError
from intentrec.training.baselines import CoOccurrence, check_settings
from intentrec.training.datamodule import read_split
from intentrec.training.metrics import evaluate_scorer

log = logging.getLogger(__name__)

COOCCURRENCE_KEYS = ("window", "history", "decay", "popularity_discount")


def check_config(cfg: dict) -> None:
    """Clear errors for hybrid.* values that cannot work."""
    weights = list(cfg.get("weights") or [])
    if not weights or any(not isinstance(w, int | float) or w < 0 for w in weights):
        raise ConfigError(f"hybrid.weights={weights}; expected a non-empty list of numbers >= 0 (e.g. [0.5, 1, 2, 4]).")
    if not float(cfg.get("eps", 0)) > 0:
        raise ConfigError(f"hybrid.eps={cfg.get('eps')}; expected a number > 0 (e.g. 0.1).")
    check_settings("hybrid.", **{key: cfg[key] for key in COOCCURRENCE_KEYS if key in cfg})


def build_cooccurrence(data, cfg: dict) -> CoOccurrence:
    """The co-occurrence counts of `data`'s training split with the window/history/decay of `cfg`
    (hybrid.* in training, the manifest's hybrid settings in export)."""
    train = read_split(data.directory / "train.parquet")
    return CoOccurrence(data.padded("train_count"), train, **{k: cfg[k] for k in COOCCURRENCE_KEYS if k in cfg})


def hybrid_scorer(model, cooccurrence: CoOccurrence, weight: float, eps: float):
    """score(batch) -> (B, N) float64 hybrid scores of every item."""
    items = model.item_embeddings()
    scale = model.logit_scale()
    offset = weight * float(np.log(eps))  # every item's share of weight * log(eps + C)

    def score(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = (model.query(batch) @ items.T * scale).double().add_(offset)
        evidence = cooccurrence.sparse(batch["item_ids"].numpy()).tocoo()
        bonus = torch.from_numpy(hybrid_bonus(evidence.data, weight, eps))  # 0 where C = 0
        rows, columns = torch.from_numpy(evidence.row.astype(np.int64)), torch.from_numpy(evidence.col.astype(np.int64))
        return scores.index_put_((rows, columns), bonus, accumulate=True)  # in place: no dense copy of the evidence

    return score


def evaluate_hybrid(task, datamodule, cfg: dict, evaluation: dict, ranks: dict | None = None) -> tuple[dict, dict]:
    """Tune the weight on val, evaluate test with it; returns (metrics, summary). `ranks["hybrid_test"]`
    receives the test examples' rank counts when a dict is given."""
    check_config(cfg)
    model = task.model.eval()
    cooccurrence = build_cooccurrence(datamodule.data, cfg)
    num_items = model.item_tower.num_items
    eps = float(cfg["eps"])
    tried, best = {}, None
    with torch.no_grad():
        for weight in [float(w) for w in cfg["weights"]]:
            result = evaluate_scorer(
                hybrid_scorer(model, cooccurrence, weight, eps), datamodule, "val", evaluation, num_items
            )
            tried[weight] = result["val/ndcg@10"]
            log.info("hybrid: weight %g -> val/ndcg@10 %.4f", weight, tried[weight])
            if best is None or tried[weight] > best[1]["val/ndcg@10"]:
                best = (weight, result)
        weight, val = best
        test_ranks: dict = {}
        test = evaluate_scorer(
            hybrid_scorer(model, cooccurrence, weight, eps), datamodule, "test", evaluation, num_items, test_ranks
        )
    if ranks is not None:
        ranks["hybrid_test"] = test_ranks["test"]
    metrics = {f"hybrid_{k}": v for k, v in {**val, **test}.items()}
    summary = {
        "weight": weight,
        "eps": eps,
        "val_ndcg@10_by_weight": {str(w): round(v, 6) for w, v in tried.items()},
        **{k: cfg[k] for k in COOCCURRENCE_KEYS if k in cfg},
    }
    log.info("hybrid: weight %g chosen on val; test/ndcg@10 %.4f", weight, test["test/ndcg@10"])
    return metrics, summary
