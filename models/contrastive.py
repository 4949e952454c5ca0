"""Contrastive sequence learning beside the next-item loss (CL4SRec and DuoRec style).

- `cl4srec`: two random augmentations of each training sequence (crop a contiguous share `crop`, mask
  a share `mask` of the items with a learned [mask] vector, or shuffle a contiguous share `reorder`)
  are pulled together and pushed from the other sequences of the batch (Xie et al., "Contrastive
  Learning for Sequential Recommendation", ICDE 2022).
- `duorec`: the positive of a sequence is its own second forward pass (another dropout mask: model-level
  augmentation) or, when the batch has one, another sequence with the same next item (supervised
  positive) (Qiu et al., "Contrastive Learning for Representation Degeneration Problem in Sequential
  Recommendation", WSDM 2022).

The loss is InfoNCE over the 2B queries of a batch (`temperature`, dot product as both papers), added
to the next-item loss with weight `weight` (0.1 in both papers). The queries are the model's own (the
last real step, context fused), so context keeps working; nothing of this is exported: the serving
model is the two-tower model alone.

Differences from the papers: the next-item loss stays intentrec's (every position of a window a
target); augmentations act on the windows of a batch; DuoRec's positive is drawn from the same batch
(not the whole training set), and a sequence without a same-target partner keeps its dropout view.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

KINDS = ("cl4srec", "duorec")
AUGMENTATIONS = ("crop", "mask", "reorder")


def _window(
    lengths: torch.Tensor, share: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random contiguous sub-window of each row: (start, size) with size = max(1, floor(share * length))."""
    size = torch.clamp((lengths.float() * share).floor().long(), min=1)
    size = torch.minimum(size, lengths.clamp(min=1))
    room = (lengths - size + 1).clamp(min=1).float()
    start = (torch.rand(lengths.shape, generator=generator, device=lengths.device) * room).floor().long()
    return start, size


def augment(
    batch: dict[str, torch.Tensor],
    step_keys: Iterable[str],
    kinds: torch.Tensor,
    shares: dict[str, float],
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One augmented view of a right-padded batch; `kinds` (B,) picks each row's augmentation
    (index into AUGMENTATIONS). Returns (batch with every (B, T) step tensor of `step_keys` re-gathered,
    masked (B, T) bool: steps whose item embedding is to be replaced by the [mask] vector)."""
    ids = batch["item_ids"]
    B, T = ids.shape
    device = ids.device
    lengths = (ids > 0).sum(dim=1)
    steps = torch.arange(T, device=device).unsqueeze(0).expand(B, T)
    index = steps.clone()
    valid = steps < lengths.unsqueeze(1)

    crop = kinds == 0
    start, size = _window(lengths, shares["crop"], generator)
    index = torch.where(crop.unsqueeze(1), (start.unsqueeze(1) + steps).clamp(max=T - 1), index)
    valid = torch.where(crop.unsqueeze(1), steps < size.unsqueeze(1), valid)

    reorder = kinds == 2
    start, size = _window(lengths, shares["reorder"], generator)
    inside = (steps >= start.unsqueeze(1)) & (steps < (start + size).unsqueeze(1)) & reorder.unsqueeze(1)
    noise = torch.rand((B, T), generator=generator, device=device) * size.unsqueeze(1).float()
    keys = torch.where(inside, start.unsqueeze(1).float() + noise, steps.float())
    index = torch.where(reorder.unsqueeze(1), keys.argsort(dim=1), index)

    view = dict(batch)
    for key in step_keys:
        if key in batch and batch[key].shape[:2] == (B, T):
            gathered = batch[key].gather(1, index)
            view[key] = torch.where(valid, gathered, torch.zeros_like(gathered))
    chance = torch.rand((B, T), generator=generator, device=device)
    masked = (kinds == 1).unsqueeze(1) & valid & (chance < shares["mask"])
    # never mask a whole sequence: its first step stays
    masked[:, 0] = masked[:, 0] & (lengths > 1) & (masked.sum(dim=1) < lengths)
    return view, masked


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over 2B queries: each row's positive is its counterpart in the other view; the other 2B - 2
    rows are its negatives (NT-Xent, as CL4SRec and DuoRec)."""
    B = first.shape[0]
    both = torch.cat([first, second])  # (2B, D)
    logits = both @ both.T / temperature
    logits = logits.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=both.device), float("-inf"))
    positive = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(both.device)
    return F.cross_entropy(logits, positive)


def last_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The next item after each row's last real step (B,), 0 when that step is not a target."""
    last = (batch["item_ids"] > 0).sum(dim=1).clamp(min=1) - 1
    return batch["targets"][torch.arange(len(last), device=last.device), last]


def same_target_partner(targets: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) for each row another row with the same (non-zero) target, chosen at random, or the row itself."""
    B = targets.shape[0]
    same = (targets.unsqueeze(0) == targets.unsqueeze(1)) & (targets > 0).unsqueeze(0)
    same.fill_diagonal_(False)
    scores = torch.rand((B, B), generator=generator, device=targets.device).masked_fill(~same, -1.0)
    best = scores.argmax(dim=1)
    return torch.where(same.any(dim=1), best, torch.arange(B, device=targets.device))


class ContrastiveObjective(nn.Module):
    """The contrastive term of a training step. Holds the learned [mask] vector (training only)."""

    def __init__(
        self,
        embedding_dim: int,
        kind: str = "cl4srec",
        weight: float = 0.1,
        temperature: float = 1.0,
        crop: float = 0.6,
        mask: float = 0.3,
        reorder: float = 0.6,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"model.contrastive.kind={kind!r}; expected one of {list(KINDS)}.")
        for name, value in (("crop", crop), ("mask", mask), ("reorder", reorder)):
            if not 0 < value <= 1:
                raise ValueError(f"model.contrastive.{name}={value}; expected a share in (0, 1].")
        if temperature <= 0 or weight < 0:
            raise ValueError(
                f"model.contrastive: temperature={temperature}, weight={weight}; expected temperature > 0, weight >= 0."
            )
        self.kind, self.weight, self.temperature = kind, weight, temperature
        self.shares = {"crop": crop, "mask": mask, "reorder": reorder}
        self.mask_vector = nn.Parameter(torch.randn(embedding_dim) * 0.02)

    def _view_queries(self, model, batch: dict[str, torch.Tensor], step_keys) -> torch.Tensor:
        kinds = torch.randint(0, len(AUGMENTATIONS), (batch["item_ids"].shape[0],), device=batch["item_ids"].device)
        view, masked = augment(batch, step_keys, kinds, self.shares)
        step_items = model.item_embeddings(view["item_ids"])
        step_items = torch.where(masked.unsqueeze(-1), self.mask_vector.to(step_items.dtype), step_items)
        return model.query(view, step_items=step_items)

    def forward(self, model, batch: dict[str, torch.Tensor], step_keys: Iterable[str]) -> torch.Tensor:
        """The weighted contrastive loss of `batch` for `model` (a TwoTower in training mode)."""
        if self.kind == "cl4srec":
            first = self._view_queries(model, batch, step_keys)
            second = self._view_queries(model, batch, step_keys)
        else:
            first = model.query(batch)
            partner = same_target_partner(last_targets(batch))
            second = model.query({key: value[partner] for key, value in batch.items()})
        return self.weight * info_nce(first, second, self.temperature)
