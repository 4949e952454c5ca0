"""Full-catalogue ranking metrics with exact handling of ties.

For each example the target's score is compared with every item's: `greater` items score higher and
`ties` other items score the same. Under random tie-breaking the target's 0-based position is uniform
over [greater, greater + ties], so HR@K, NDCG@K and MRR@K are their exact expectations over that
range. This matters for baselines: a popularity or co-occurrence model that gives thousands of items
the same score is neither rewarded (optimistic ranking) nor punished (pessimistic) for it.

    HR@K   = P(position < K)
    NDCG@K = E[1 / log2(position + 2) if position < K]     (one relevant item, so IDCG = 1)
    MRR@K  = E[1 / (position + 1) if position < K]

Only to set a figure beside a paper that ranks against sampled negatives (SASRec's protocol: the
target among 100 items drawn uniformly from those the shopper has not interacted with),
`evaluate.sampled_negatives: N` adds `<split>_sampled<N>/*` metrics next to the full-ranking ones,
never instead of them. The negatives are drawn once per example with `evaluate.sampled_seed`, so every
model and seed is ranked against the same ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from intentrec import progress

DEFAULT_KS = (5, 10, 20, 50, 100)
MAX_DRAW_ROUNDS = 100


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

    def __init__(
        self,
        ks,
        num_items: int,
        train_counts: np.ndarray,
        replay: dict | None = None,
        business_ks=(),
        codes=None,
        negatives: np.ndarray | None = None,
    ):
        self.replay, self.business_ks, self.codes = replay, tuple(sorted(business_ks)), codes
        # (E, N) sampled negatives per example of the split (see sample_negatives), or None.
        self.negatives = negatives
        self.sampled_sums: dict[str, float] = defaultdict(float)
        self.sampled_count = 0
        self.example_lists: list[tuple[np.ndarray, np.ndarray]] = []  # (example indices, top lists) for replay
        # (example indices, greater, ties) of every batch: per-example metrics for paired significance tests
        self.example_ranks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.ks = tuple(sorted(set(ks) | set(self.business_ks)))
        self.num_items = num_items
        self.train_counts = np.asarray(train_counts, dtype=np.float64)
        self.sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.counts: dict[str, int] = defaultdict(int)
        self.recommended = {k: np.zeros(num_items + 1, bool) for k in self.ks}
        self.popularity_sum = {k: 0.0 for k in self.ks}
        self.lists = 0
        self._pending: list[tuple] = []  # ranks and top lists still where they were computed (see add)

    def add(
        self,
        scores: torch.Tensor,
        targets: torch.Tensor,
        slices: dict[str, np.ndarray],
        example_index: np.ndarray | None = None,
    ) -> None:
        """scores (B, N) with excluded items at -inf; targets (B,); slices name -> (B,) bool;
        example_index (B,): which examples these are (needed for the business metrics' replay).

        The ranks and the top lists are computed where the scores are and only kept (small tensors):
        they come to the host together when a result is asked for (`_collect`), so a GPU evaluation
        runs its batches without waiting for the host after each one."""
        greater, ties = target_ranks(scores, targets)
        top = torch.topk(scores, min(max(self.ks), scores.shape[1]), dim=1).indices
        self._pending.append((greater, ties, top, slices, example_index))
        if self.negatives is not None and example_index is not None:
            self._add_sampled(scores, targets, np.asarray(example_index))

    def _collect(self) -> None:
        """Bring the kept ranks and lists to the host and add them to the sums (in the order added)."""
        pending, self._pending = self._pending, []
        for greater, ties, top, slices, example_index in pending:
            self._add_host(greater.cpu().numpy(), ties.cpu().numpy(), top.cpu().numpy(), slices, example_index)

    def _add_host(self, greater, ties, top, slices, example_index) -> None:
        if example_index is not None:
            self.example_ranks.append((np.asarray(example_index), greater, ties))
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
        for k in self.ks:
            self.recommended[k][top[:, :k].ravel()] = True
            self.popularity_sum[k] += float(self.train_counts[top[:, :k]].mean(axis=1).sum())
        self.lists += len(top)
        if self.replay is not None and self.business_ks and example_index is not None:
            self.example_lists.append((np.asarray(example_index), top[:, : max(self.business_ks)]))

    def _add_sampled(self, scores: torch.Tensor, targets: torch.Tensor, example_index: np.ndarray) -> None:
        """The target ranked among its example's sampled negatives only (ties: expected position)."""
        candidates = torch.from_numpy(self.negatives[example_index]).to(scores.device)
        negative_scores = scores.gather(1, candidates)
        target_scores = scores.gather(1, targets.to(scores.device).unsqueeze(1))
        greater = (negative_scores > target_scores).sum(dim=1).cpu().numpy()
        ties = (negative_scores == target_scores).sum(dim=1).cpu().numpy()
        for k in self.ks:
            if k <= self.negatives.shape[1]:
                for metric, values in expected_metrics(greater, ties, k).items():
                    self.sampled_sums[metric] += float(values.sum())
        self.sampled_count += len(example_index)

    def state(self) -> dict:
        """Plain sums, so ranks of a distributed run can be added up before `result`."""
        self._collect()
        return {
            "sampled_sums": dict(self.sampled_sums),
            "sampled_count": self.sampled_count,
            "sums": {n: dict(m) for n, m in self.sums.items()},
            "counts": dict(self.counts),
            "recommended": {k: v.copy() for k, v in self.recommended.items()},
            "popularity_sum": dict(self.popularity_sum),
            "lists": self.lists,
            "example_lists": list(self.example_lists),
            "example_ranks": list(self.example_ranks),
        }

    def merge(self, state: dict) -> None:
        self._collect()
        for name, metrics in state["sums"].items():
            for metric, value in metrics.items():
                self.sums[name][metric] += value
        for name, count in state["counts"].items():
            self.counts[name] += count
        for k in self.ks:
            self.recommended[k] |= state["recommended"][k]
            self.popularity_sum[k] += state["popularity_sum"][k]
        self.lists += state["lists"]
        self.example_lists += state.get("example_lists", [])
        self.example_ranks += state.get("example_ranks", [])
        for metric, value in state.get("sampled_sums", {}).items():
            self.sampled_sums[metric] += value
        self.sampled_count += state.get("sampled_count", 0)

    def ranks(self) -> dict[str, np.ndarray] | None:
        """Each example's rank counts, by example index: {example_index, greater, ties} (None without indices)."""
        self._collect()
        if not self.example_ranks:
            return None
        index = np.concatenate([i for i, _, _ in self.example_ranks])
        order = np.argsort(index, kind="stable")
        return {
            "example_index": index[order],
            "greater": np.concatenate([g for _, g, _ in self.example_ranks])[order],
            "ties": np.concatenate([t for _, _, t in self.example_ranks])[order],
        }

    def result(self, prefix: str) -> dict[str, float]:
        """`{prefix}/ndcg@10`, `{prefix}/<slice>/ndcg@10`, `{prefix}/count`, coverage and popularity."""
        self._collect()
        out: dict[str, float] = {}
        for name, metrics in self.sums.items():
            head = prefix if name == "all" else f"{prefix}/{name}"
            for metric, total in metrics.items():
                out[f"{head}/{metric}"] = total / self.counts[name]
            out[f"{head}/count"] = self.counts[name]
        for k in self.ks:
            out[f"{prefix}/coverage@{k}"] = float(self.recommended[k][1:].sum()) / self.num_items
            out[f"{prefix}/avg_popularity@{k}"] = self.popularity_sum[k] / max(self.lists, 1)
        if self.sampled_count:
            head = f"{prefix}_sampled{self.negatives.shape[1]}"
            for metric, total in self.sampled_sums.items():
                out[f"{head}/{metric}"] = total / self.sampled_count
            out[f"{head}/count"] = self.sampled_count
        if self.replay is not None and self.business_ks and self.example_lists:
            index = np.concatenate([i for i, _ in self.example_lists])
            lists = np.zeros((len(self.replay["example_step"]), max(self.business_ks)), np.int64)
            lists[index] = np.concatenate([top for _, top in self.example_lists])
            for key, value in business_metrics(self.replay, lists, self.business_ks, **self.codes).items():
                out[f"{prefix}/{key}"] = value
        return out


def business_codes() -> dict[str, int]:
    """Event type codes of prepared data that the business metrics count."""
    from intentrec.data.schema import EVENT_TYPES, enum_code

    return {"add_to_cart": enum_code(EVENT_TYPES, "add_to_cart"), "purchase": enum_code(EVENT_TYPES, "purchase")}


def sample_negatives(seen: dict, num_items: int, count: int, seed: int) -> np.ndarray:
    """(E, count) item ids, each drawn uniformly from 1..num_items and redrawn while it is the example's
    target or in its history (independent draws, as SASRec's evaluation makes them).

    Args:
        seen: an evaluation split's histories: {"offsets": (E+1,), "items": (H,), "targets": (E,)}.
    """
    from intentrec.errors import ConfigError

    offsets, targets = seen["offsets"], np.asarray(seen["targets"], np.int64)
    examples = len(targets)
    width = num_items + 1
    history_rows = np.repeat(np.arange(examples, dtype=np.int64), np.diff(offsets))
    forbidden = np.unique(
        np.concatenate(
            [
                history_rows * width + seen["items"].astype(np.int64),
                np.arange(examples, dtype=np.int64) * width + targets,
            ]
        )
    )
    allowed = num_items - np.bincount(forbidden // width, minlength=examples)
    if examples and allowed.min() < 1:
        row = int(allowed.argmin())
        raise ConfigError(
            f"evaluate.sampled_negatives={count}: example {row} has no item left to sample (its history and target "
            f"cover all {num_items} items); set evaluate.sampled_negatives=0 for full ranking only."
        )
    rng = np.random.default_rng(seed)
    negatives = rng.integers(1, num_items + 1, size=(examples, count), dtype=np.int64)
    rows = np.arange(examples, dtype=np.int64)[:, None]
    for _ in range(MAX_DRAW_ROUNDS):
        bad = np.isin(rows * width + negatives, forbidden, assume_unique=False)
        if not bad.any():
            return negatives
        negatives[bad] = rng.integers(1, num_items + 1, size=int(bad.sum()), dtype=np.int64)
    raise ConfigError(
        f"evaluate.sampled_negatives={count}: could not draw negatives outside the histories in {MAX_DRAW_ROUNDS} "
        "rounds (histories cover almost the whole catalogue); use a smaller count or 0."
    )


def split_negatives(evaluation: dict, num_items: int, seen: dict | None) -> np.ndarray | None:
    """The sampled negatives an evaluation config asks for (`evaluate.sampled_negatives`, `sampled_seed`),
    drawn once per split and kept in `seen`; None for full ranking only (the default)."""
    from intentrec.errors import ConfigError

    count = evaluation.get("sampled_negatives", 0) or 0
    if isinstance(count, bool) or not isinstance(count, int) or count < 0 or (count and count >= num_items):
        raise ConfigError(
            f"evaluate.sampled_negatives={count!r}: expected an integer from 0 (full ranking only, the default) to "
            f"{num_items - 1} (the catalogue has {num_items} items); SASRec's protocol uses 100."
        )
    if not count:
        return None
    if seen is None or "targets" not in seen:
        raise ConfigError("evaluate.sampled_negatives needs the split's histories; evaluate through the DataModule.")
    seed = int(evaluation.get("sampled_seed", 0))
    key = ("negatives", count, seed, num_items)
    if key not in seen:
        seen[key] = sample_negatives(seen, num_items, count, seed)
    return seen[key]


def make_accumulator(evaluation: dict, num_items: int, train_counts, seen: dict | None) -> RankingAccumulator:
    """The accumulator an evaluation config asks for (with the business replay when the split has one,
    and sampled negatives when `evaluate.sampled_negatives` > 0)."""
    return RankingAccumulator(
        evaluation["ks"],
        num_items,
        train_counts,
        replay=(seen or {}).get("replay"),
        business_ks=evaluation.get("business_ks", ()) or (),
        codes=business_codes(),
        negatives=split_negatives(evaluation, num_items, seen),
    )


def business_metrics(
    replay: dict[str, np.ndarray], lists: np.ndarray, ks, add_to_cart: int, purchase: int
) -> dict[str, float]:
    """Offline business metrics by replaying logged sessions against the recommended lists.

    A session is shown, at each of its evaluated steps, the top-K list computed from the history before
    that step. A later add-to-cart or online purchase in the same session (at that step or after) is
    *attributed* to the recommendations when its item was in a list shown at or before it. Per K:
    `biz/atc_rate@K` and `biz/conversion@K` are the shares of sessions with an attributed add-to-cart
    or purchase, `biz/revenue_per_session@K` the attributed purchase value (price x quantity) per
    session, `biz/aov@K` the attributed value per converting session. For scale, `biz/session_atc_rate`,
    `biz/session_conversion` and `biz/revenue_per_session` count every cart add and purchase of the
    sessions, recommended or not (the ceiling of attribution). `biz/sessions` is their number.

    Args:
        replay: from `training.datamodule.session_replay`: example_session (E,), example_step (E,),
            event_session/event_step/event_item/event_type/event_value (F,) for the evaluated sessions.
        lists: (E, max K) recommended item ids per example, best first.
        add_to_cart, purchase: event type codes.
    """
    sessions = int(replay["num_sessions"])
    if sessions == 0:
        return {}
    width = int(max(lists.max(initial=0), replay["event_item"].max(initial=0))) + 1
    kind, value = replay["event_type"], replay["event_value"]
    event_keys = replay["event_session"].astype(np.int64) * width + replay["event_item"]
    is_cart, is_purchase = kind == add_to_cart, kind == purchase
    out = {
        "biz/sessions": float(sessions),
        "biz/session_atc_rate": len(np.unique(replay["event_session"][is_cart])) / sessions,
        "biz/session_conversion": len(np.unique(replay["event_session"][is_purchase])) / sessions,
        "biz/revenue_per_session": float(value[is_purchase].sum()) / sessions,
    }
    for k in ks:
        keys = (replay["example_session"].astype(np.int64)[:, None] * width + lists[:, :k]).ravel()
        steps = np.repeat(replay["example_step"], k)
        unique, inverse = np.unique(keys, return_inverse=True)
        first_shown = np.full(len(unique), np.iinfo(np.int64).max)
        np.minimum.at(first_shown, inverse, steps)
        position = np.minimum(np.searchsorted(unique, event_keys), max(len(unique) - 1, 0))
        shown = (unique[position] == event_keys) & (first_shown[position] <= replay["event_step"])
        converted = np.unique(replay["event_session"][shown & is_purchase])
        revenue = float(value[shown & is_purchase].sum())
        out[f"biz/atc_rate@{k}"] = len(np.unique(replay["event_session"][shown & is_cart])) / sessions
        out[f"biz/conversion@{k}"] = len(converted) / sessions
        out[f"biz/revenue_per_session@{k}"] = revenue / sessions
        out[f"biz/aov@{k}"] = revenue / len(converted) if len(converted) else 0.0
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


def evaluate_scorer(
    score: Callable, datamodule, split: str, evaluation: dict, num_items: int, ranks: dict | None = None
) -> dict[str, float]:
    """Rank the catalogue for every example of `split` with `score(batch) -> (B, N)` scores; `ranks[split]`
    receives each example's rank counts when a dict is given (see `write_ranks`)."""
    batch_arrays, slices, seen = datamodule.eval_sets[split]
    accumulator = make_accumulator(evaluation, num_items, datamodule.train_counts, seen)
    loader = datamodule.eval_loader(split)
    with torch.no_grad():
        for batch in progress.bar(loader, desc=f"evaluate {split}"):
            index = batch["example_index"].numpy()
            scores = mask_scores(score(batch).double(), index, seen, bool(evaluation.get("exclude_seen", False)))
            accumulator.add(scores, batch["target"], {name: mask[index] for name, mask in slices.items()}, index)
    if ranks is not None:
        ranks[split] = accumulator.ranks()
    return accumulator.result(split)
