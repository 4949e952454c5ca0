"""Full-catalogue ranking metrics with exact handling of ties.

For each example the target's score is compared with every item's: `greater` items score higher and
`ties` other items score the same. Under random tie-breaking the target's 0-based position is uniform
over [greater, greater + ties], so HR@K, NDCG@K and MRR@K are their exact expectations over that
range. This matters for baselines: a popularity or co-occurrence model that gives thousands of items
the same score is neither rewarded (optimistic ranking) nor punished (pessimistic) for it.

    HR@K   = P(position < K)
    NDCG@K = E[1 / log2(position + 2) if position < K]     (one relevant item, so IDCG = 1)
    MRR@K  = E[1 / (position + 1) if position < K]
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

DEFAULT_KS = (5, 10, 20, 50, 100)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """scores (B, N), targets (B,) -> (greater, ties): counts of other items scoring above / equal."""
    target_scores = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    greater = (scores > target_scores).sum(dim=1)
    ties = (scores == target_scores).sum(dim=1) - 1
    return greater, ties


def _prefix(values: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(values)])


def expected_metrics(greater: np.ndarray, ties: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-example expected HR@k, NDCG@k, MRR@k for positions uniform on [greater, greater + ties]."""
    greater = np.asarray(greater, dtype=np.int64)
    ties = np.asarray(ties, dtype=np.int64)
    positions = np.arange(k)
    ndcg_prefix = _prefix(1.0 / np.log2(positions + 2))
    mrr_prefix = _prefix(1.0 / (positions + 1))
    low = np.minimum(greater, k)
    high = np.minimum(greater + ties + 1, k)  # exclusive
    width = ties + 1
    return {
        f"hr@{k}": (high - low) / width,
        f"ndcg@{k}": (ndcg_prefix[high] - ndcg_prefix[low]) / width,
        f"mrr@{k}": (mrr_prefix[high] - mrr_prefix[low]) / width,
    }


class RankingAccumulator:
    """Sums per-example metrics per slice, plus top-K coverage and popularity, over many batches.

    Args:
        ks: cut-offs.
        num_items: catalogue size (for coverage).
        train_counts: (N,) training events per item id (for the mean popularity of recommendations).
    """

    def __init__(self, ks, num_items: int, train_counts: np.ndarray):
        self.ks = tuple(sorted(ks))
        self.num_items = num_items
        self.train_counts = np.asarray(train_counts, dtype=np.float64)
        self.sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.counts: dict[str, int] = defaultdict(int)
        self.recommended = {k: np.zeros(num_items + 1, bool) for k in self.ks}
        self.popularity_sum = {k: 0.0 for k in self.ks}
        self.lists = 0

    def add(self, scores: torch.Tensor, targets: torch.Tensor, slices: dict[str, np.ndarray]) -> None:
        """scores (B, N) with excluded items at -inf; targets (B,); slices name -> (B,) bool."""
        greater, ties = target_ranks(scores, targets)
        greater, ties = greater.cpu().numpy(), ties.cpu().numpy()
        per_k = {}
        for k in self.ks:
            per_k.update(expected_metrics(greater, ties, k))
        for name, mask in slices.items():
            mask = np.asarray(mask, bool)
            if not mask.any():
                continue
            self.counts[name] += int(mask.sum())
            for metric, values in per_k.items():
                self.sums[name][metric] += float(values[mask].sum())
        top = torch.topk(scores, min(max(self.ks), scores.shape[1]), dim=1).indices.cpu().numpy()
        for k in self.ks:
            self.recommended[k][top[:, :k].ravel()] = True
            self.popularity_sum[k] += float(self.train_counts[top[:, :k]].mean(axis=1).sum())
        self.lists += len(top)

    def state(self) -> dict:
        """Plain sums, so ranks of a distributed run can be added up before `result`."""
        return {
            "sums": {n: dict(m) for n, m in self.sums.items()},
            "counts": dict(self.counts),
            "recommended": {k: v.copy() for k, v in self.recommended.items()},
            "popularity_sum": dict(self.popularity_sum),
            "lists": self.lists,
        }

    def merge(self, state: dict) -> None:
        for name, metrics in state["sums"].items():
            for metric, value in metrics.items():
                self.sums[name][metric] += value
        for name, count in state["counts"].items():
            self.counts[name] += count
        for k in self.ks:
            self.recommended[k] |= state["recommended"][k]
            self.popularity_sum[k] += state["popularity_sum"][k]
        self.lists += state["lists"]

    def result(self, prefix: str) -> dict[str, float]:
        """`{prefix}/ndcg@10`, `{prefix}/<slice>/ndcg@10`, `{prefix}/count`, coverage and popularity."""
        out: dict[str, float] = {}
        for name, metrics in self.sums.items():
            head = prefix if name == "all" else f"{prefix}/{name}"
            for metric, total in metrics.items():
                out[f"{head}/{metric}"] = total / self.counts[name]
            out[f"{head}/count"] = self.counts[name]
        for k in self.ks:
            out[f"{prefix}/coverage@{k}"] = float(self.recommended[k][1:].sum()) / self.num_items
            out[f"{prefix}/avg_popularity@{k}"] = self.popularity_sum[k] / max(self.lists, 1)
        return out


def mask_scores(scores: torch.Tensor, example_index: np.ndarray, seen: dict | None, exclude_seen: bool) -> torch.Tensor:
    """Padding (id 0) never ranks; with exclude_seen, items in the example's history do not either."""
    scores[:, 0] = float("-inf")
    if exclude_seen and seen is not None:
        offsets, items = seen["offsets"], seen["items"]
        lengths = offsets[example_index + 1] - offsets[example_index]
        rows = np.repeat(np.arange(len(example_index)), lengths)
        index = np.repeat(offsets[example_index] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(
            lengths.sum()
        )
        scores[torch.from_numpy(rows), torch.from_numpy(items[index].astype(np.int64))] = float("-inf")
    return scores
