"""Retrieval losses over (query, target item) pairs (pure torch).

- `full`: softmax cross-entropy over the whole catalogue. Exact; the default when the catalogue fits.
- `sampled`: sampled softmax with in-batch and popularity negatives and logQ correction
  (Yi et al., RecSys 2019), for large catalogues.
- `gbce`: generalized binary cross-entropy with uniform negatives (gSASRec, Petrov & Macdonald,
  RecSys 2023), which counters the overconfidence of sampled BCE.

Every loss takes queries (M, D) and target ids (M,) of the M target positions of a batch, the item
tower's embedding function and the logit scale.

Beside them, `attribute_prediction_loss` (DIF-SR's auxiliary term, `model.attribute_loss`): each query
also predicts its target item's attributes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

LOSSES = ("full", "sampled", "gbce")


def full_softmax(
    queries: torch.Tensor,
    targets: torch.Tensor,
    all_items: torch.Tensor,
    scale: float,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """queries (M, D), targets (M,) in 1..N, all_items (N + 1, D) with row 0 the padding -> mean CE.

    The padding row is left out of the logits (rather than set to -inf in place, which costs a copy
    of the (M, N) matrix in autograd). `seen` (M, S) item ids (0 = none): items of each target's
    history taken out of its softmax, as `evaluate.exclude_seen` takes them out of the ranking; the
    target itself is never taken out. This costs one copy of the logits.
    """
    logits = queries @ all_items[1:].T * scale  # (M, N)
    if seen is not None:
        drop = (seen > 0) & (seen != targets.unsqueeze(1))
        rows = torch.arange(len(seen), device=seen.device).unsqueeze(1).expand_as(seen)
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[rows[drop], seen[drop] - 1] = True
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, targets - 1)


class _ChunkedSoftmax(torch.autograd.Function):
    """Full-softmax cross-entropy whose gradients are made in the forward pass, `chunk` targets at a time.

    For a chunk of rows the logits (chunk, N) are formed, turned into softmax - one-hot, and multiplied
    straight into the gradients of the queries and the items; nothing of size (M, N) is kept for
    backward, which only scales the stored gradients. Three matrix products per chunk, as autograd
    does for `full_softmax`, and a working set of one chunk's logits instead of the (M, N) logits, their
    log-softmax and their gradient.
    """

    @staticmethod
    def forward(ctx, queries, items, targets, scale, seen, chunk):
        M = len(queries)
        compute = (
            torch.get_autocast_dtype(queries.device.type) if torch.is_autocast_enabled(queries.device.type) else None
        )
        q_all = queries.to(compute) if compute is not None else queries
        w = items.to(compute) if compute is not None else items
        exact = torch.promote_types(queries.dtype, torch.float32)  # softmax and sums in fp32 (fp64 stays fp64)
        grad_q = torch.empty(queries.shape, dtype=exact, device=queries.device)
        grad_w = torch.zeros(items.shape, dtype=exact, device=items.device)
        total = torch.zeros((), dtype=exact, device=queries.device)
        with torch.autocast(queries.device.type, enabled=False):
            for start in range(0, M, chunk):
                q = q_all[start : start + chunk]
                t = targets[start : start + chunk]
                rows = torch.arange(len(q), device=q.device)
                logits = (q @ w.T).to(exact).mul_(scale)  # (c, N)
                if seen is not None:
                    s = seen[start : start + chunk]
                    drop = (s > 0) & (s != (t + 1).unsqueeze(1))
                    r = rows.unsqueeze(1).expand_as(s)
                    logits[r[drop], s[drop] - 1] = float("-inf")
                lse = torch.logsumexp(logits, dim=1)
                total += (lse - logits[rows, t]).sum()
                # d loss / d logits = (softmax - one-hot) / M; times scale for d / d (q . w).
                grad = logits.sub_(lse.unsqueeze(1)).exp_()
                grad[rows, t] -= 1.0
                grad.mul_(scale / M)
                grad = grad.to(w.dtype)
                grad_q[start : start + chunk] = grad @ w
                grad_w += grad.T @ q
        ctx.save_for_backward(grad_q, grad_w)
        ctx.dtypes = (queries.dtype, items.dtype)
        return total / M

    @staticmethod
    def backward(ctx, grad_output):
        grad_q, grad_w = ctx.saved_tensors
        return (
            (grad_q * grad_output).to(ctx.dtypes[0]),
            (grad_w * grad_output).to(ctx.dtypes[1]),
            None,
            None,
            None,
            None,
        )


def chunked_softmax(
    queries: torch.Tensor,
    targets: torch.Tensor,
    all_items: torch.Tensor,
    scale: float,
    seen: torch.Tensor | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """`full_softmax` (the same loss and gradients) without materialising the (M, N) logits: `chunk`
    targets at a time, gradients formed in the forward pass (`loss.chunk_targets`)."""
    return _ChunkedSoftmax.apply(queries, all_items[1:], targets - 1, float(scale), seen, max(int(chunk), 1))


def causal_history(item_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """item_ids (B, T), target_mask (B, T) -> (M, T): for each target position t, the steps <= t (0 after)."""
    T = item_ids.shape[1]
    upto = torch.ones(T, T, dtype=torch.bool, device=item_ids.device).tril()  # [t, s]: s <= t
    history = item_ids.unsqueeze(1).expand(-1, T, -1) * upto  # (B, T, T)
    return history[target_mask]


class SampledSoftmax:
    """In-batch + popularity-sampled negatives with logQ correction.

    Candidates are the batch's targets (in-batch negatives, drawn in proportion to their frequency
    as targets) and `num_negatives` items drawn from `sampling_probs`. Each logit is corrected by
    log of its expected count among the candidates, so the loss is an unbiased-in-expectation
    estimate of full softmax; a candidate equal to the row's own target (an accidental hit) is masked.
    """

    def __init__(self, target_probs: torch.Tensor, num_negatives: int):
        self.target_probs = target_probs  # (N,) frequency of each item as a training target
        self.num_negatives = num_negatives

    def __call__(self, queries: torch.Tensor, targets: torch.Tensor, embed: Callable, scale: float) -> torch.Tensor:
        M = targets.shape[0]
        probs = self.target_probs.to(queries.device)
        sampled = torch.multinomial(probs, self.num_negatives, replacement=True)  # (S,)
        candidates = torch.cat([targets, sampled])  # (M + S,)
        logits = queries @ embed(candidates).T * scale  # (M, M + S)
        expected = probs[candidates] * (M + self.num_negatives)
        logits = logits - torch.log(expected.clamp(min=1e-12))
        hit = candidates.unsqueeze(0) == targets.unsqueeze(1)  # (M, M + S)
        hit[torch.arange(M), torch.arange(M)] = False
        logits = logits.masked_fill(hit, float("-inf"))
        return F.cross_entropy(logits, torch.arange(M, device=queries.device))


class GBCE:
    """gSASRec's generalized BCE: beta-calibrated positive term, `num_negatives` uniform negatives per target."""

    def __init__(self, num_items: int, num_negatives: int, t: float = 0.75):
        self.num_items = num_items
        self.num_negatives = num_negatives
        alpha = num_negatives / max(num_items - 1, 1)
        self.beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)

    def __call__(self, queries: torch.Tensor, targets: torch.Tensor, embed: Callable, scale: float) -> torch.Tensor:
        M = targets.shape[0]
        negatives = torch.randint(1, self.num_items + 1, (M, self.num_negatives), device=queries.device)
        positive = (queries * embed(targets)).sum(-1) * scale  # (M,)
        negative = torch.einsum("md,mkd->mk", queries, embed(negatives)) * scale  # (M, K)
        negative = negative.masked_fill(negatives == targets.unsqueeze(1), float("-inf"))
        # log(sigmoid(s)^beta) = beta * logsigmoid(s); log(1 - sigmoid(s)) = logsigmoid(-s)
        return -(self.beta * F.logsigmoid(positive) + F.logsigmoid(-negative).sum(-1)).mean()


def attribute_prediction_loss(item_tower, queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """DIF-SR's auxiliary loss: from each query state, predict the attributes of its target item.

    Per content feature f of the item tower (vocabulary V_f), the logits are the query times that feature's
    embedding table, (M, D) x (D, V_f), and the labels the target's codes as a multi-hot vector (a bag
    feature has several); binary cross-entropy over the known codes (code 0, unknown, is never a label nor
    a logit), averaged over the targets that have at least one known code (0 when none has), summed over
    the features. No host synchronisation: the masks stay on the device.
    queries (M, D), targets (M,) item ids -> a scalar, or None when the tower has no content feature.
    """
    tables = [(e, w) for e, w in zip(item_tower.feature_embeddings, item_tower.feature_widths)]
    if item_tower.feature_codes is None or not any(e.num_embeddings > 1 for e, _ in tables):
        return None
    codes = item_tower.feature_codes[targets]  # (M, F)
    total, start = queries.new_zeros(()), 0
    for embedding, width in tables:
        block = codes[:, start : start + width]
        start += width
        if embedding.num_embeddings < 2:  # only the unknown code
            continue
        known = (block > 0).any(dim=1).to(queries.dtype)  # (M,)
        labels = torch.zeros(len(block), embedding.num_embeddings, device=queries.device, dtype=queries.dtype)
        labels.scatter_(1, block, 1.0)  # unknown codes land in column 0, which is dropped
        logits = queries @ embedding.weight.t()  # (M, V_f)
        per_target = F.binary_cross_entropy_with_logits(logits[:, 1:], labels[:, 1:], reduction="none").sum(dim=1)
        total = total + (per_target * known).sum() / known.sum().clamp(min=1) / (embedding.num_embeddings - 1)
    return total
