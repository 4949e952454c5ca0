"""Intent heads on the query tower (pure torch): per-step purchase, exit and abandonment propensity and
the next-category distribution, from the sequence encoder's state and the context of the current step.

The heads read the encoder's state at step t (the events up to and including t) and the context the
shopper is in at t: device, hour, day of week, referrer and region of step t itself (in a batch
`now_*`; serving passes the request's context, which is the shopper's current moment), loyalty and
the purchases so far. Never the next step's context: its time gap alone tells whether the session ends.

Labels follow `training.intent_labels.intent_labels` (one rule); a batch carries them as (B, T) arrays,
-1 where a position has no label (padding, an unavailable head, an unknown next category).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from intentrec.data.features import GAP_BUCKET_SECONDS
from intentrec.training.intent_labels import BINARY_HEADS

LABEL_ARRAYS = {  # head -> (B, T) batch array of its labels
    "purchase": "intent_purchase",
    "exit": "intent_exit",
    "abandon": "intent_abandon",
    "next_category": "intent_category",
}
NOW_COLUMNS = {  # the context field a head reads -> the batch array of the current step's value
    "ctx_device_types": "now_device_types",
    "ctx_hours": "now_hours",
    "ctx_days_of_week": "now_days_of_week",
    "ctx_referrers": "now_referrers",
    "ctx_regions": "now_regions",
}
MODES = ("none", "joint", "second_stage")


COUNTERS = 5  # session_counters' features


def session_counters(batch: dict[str, torch.Tensor], codes: dict[str, int]) -> torch.Tensor:
    """(B, T, COUNTERS) what the session has done so far, at each step, within the window: log(1 + steps),
    log(1 + minutes) (the steps' time-gap buckets read as data.features.GAP_BUCKET_SECONDS), log(1 + items in the cart) (adds minus removes minus purchases, at least 0), whether the
    cart holds any, log(1 + purchases). Counting is what a small sequence encoder does worst, so the heads are
    given the counts; plain tensor ops (a (T, T) same-session mask), as exported to ONNX.

    codes: the prepared event-type codes of add_to_cart, remove_from_cart and purchase."""
    real = batch["item_ids"] > 0
    T = real.shape[1]
    position = torch.arange(T, device=real.device)
    starts = (batch["new_session"] > 0) | (position == 0).unsqueeze(0)  # a window's first step opens what it sees
    session = torch.cumsum(starts.long(), dim=1)  # (B, T)
    earlier = position.unsqueeze(1) >= position.unsqueeze(0)  # (T, T): j <= i
    same = (session.unsqueeze(2) == session.unsqueeze(1)) & earlier & real.unsqueeze(1)  # (B, i, j)
    same = same.to(torch.float32)
    kinds = batch["event_types"]
    bought = (kinds == codes["purchase"]).to(torch.float32)
    change = (kinds == codes["add_to_cart"]).to(torch.float32) - (kinds == codes["remove_from_cart"]).to(torch.float32)
    seconds = torch.as_tensor(GAP_BUCKET_SECONDS, device=real.device)[batch["gap_buckets"]]
    seconds = torch.where(starts, torch.zeros_like(seconds), seconds)  # the gap before the session is not in it
    per_step = torch.stack([torch.ones_like(bought), seconds / 60.0, change - bought, bought], dim=-1)  # (B, T, 4)
    so_far = torch.matmul(same, per_step)  # (B, T, 4): sums over the session's steps up to each one
    cart = so_far[..., 2].clamp(min=0)
    counters = torch.stack(
        [
            torch.log1p(so_far[..., 0]),
            torch.log1p(so_far[..., 1]),
            torch.log1p(cart),
            (cart > 0).to(torch.float32),
            torch.log1p(so_far[..., 3]),
        ],
        dim=-1,
    )
    return counters * real.unsqueeze(-1).to(counters.dtype)  # padding: 0


class IntentHeads(nn.Module):
    """One small head per signal over [state, context, session counters] (no context without one): a hidden
    layer, then 1 logit for each binary head (BINARY_HEADS) and `num_categories` for the next category (no
    such head below 2 categories). Separate heads can each stop learning at their own best epoch.

    Each head reads its inputs through a 0/1 mask (`input_masks`, a buffer saved with the model): all of them,
    all but the encoder's state (`without_state`), or the session counters alone (`counters_only`). The second
    stage (training.intent.train_heads) keeps, per head, whichever validates better: on little data a wide
    input lets a head fit noise that the narrower ones do not carry."""

    def __init__(self, embedding_dim: int, num_categories: int, with_context: bool):
        super().__init__()
        self.width = width = embedding_dim * (2 if with_context else 1) + COUNTERS
        self.state_width = embedding_dim
        sizes = {head: 1 for head in BINARY_HEADS}
        if num_categories > 1:
            sizes["next_category"] = num_categories
        self.order = list(sizes)  # the rows of input_masks
        self.register_buffer("input_masks", torch.ones(len(sizes), width))
        self._register_load_state_dict_pre_hook(self._all_inputs_when_missing)
        self.heads = nn.ModuleDict(
            {
                head: nn.Sequential(
                    nn.Linear(width, embedding_dim),
                    nn.GELU(),
                    nn.LayerNorm(embedding_dim),
                    nn.Linear(embedding_dim, size),
                )
                for head, size in sizes.items()
            }
        )

    def _all_inputs_when_missing(self, state_dict, prefix, *args) -> None:
        """A checkpoint saved before the masks existed: every head reads all its inputs."""
        state_dict.setdefault(prefix + "input_masks", torch.ones_like(self.input_masks))

    def without_state(self) -> torch.Tensor:
        """The mask that reads the context and the counters, not the encoder's state."""
        mask = torch.ones(self.width, device=self.input_masks.device)
        mask[: self.state_width] = 0
        return mask

    def counters_only(self) -> torch.Tensor:
        """The mask that reads the session counters alone."""
        mask = torch.zeros(self.width, device=self.input_masks.device)
        mask[-COUNTERS:] = 1
        return mask

    @property
    def category(self) -> nn.Module | None:
        return self.heads["next_category"] if "next_category" in self.heads else None

    @staticmethod
    def inputs(states: torch.Tensor, context: torch.Tensor | None, counters: torch.Tensor) -> torch.Tensor:
        """states, context (B, T, D), counters (B, T, COUNTERS) -> what the heads read (B, T, width)."""
        return torch.cat([states, counters] if context is None else [states, context, counters], dim=-1)

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """inputs (..., width) -> {"binary": (..., 3), "category": (..., C)} logits."""
        masks = self.input_masks
        out = {"binary": torch.cat([self.heads[h](inputs * masks[i]) for i, h in enumerate(BINARY_HEADS)], dim=-1)}
        if self.category is not None:
            out["category"] = self.category(inputs * masks[len(BINARY_HEADS)])
        return out


def now_context(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with the context fields of the current step in place of those of the next one, and no
    time gap to the next step (code 0: its embedding is zero)."""
    now = dict(batch)
    for field, column in NOW_COLUMNS.items():
        now[field] = batch[column]
    now["ctx_gap_buckets"] = torch.zeros_like(batch["ctx_gap_buckets"])
    return now


def intent_loss(logits: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], heads) -> tuple[torch.Tensor, dict]:
    """Sum over the active `heads` of each head's mean loss over its labelled positions (BCE for the binary
    heads, cross-entropy for the next category); a head without a labelled position in the batch adds 0."""
    total = logits["binary"].new_zeros(())
    parts = {}
    for index, head in enumerate(BINARY_HEADS):
        if head not in heads:
            continue
        labels = batch[LABEL_ARRAYS[head]]
        mask = labels >= 0
        loss = F.binary_cross_entropy_with_logits(
            logits["binary"][..., index][mask], labels[mask].float(), reduction="sum"
        )
        parts[head] = loss / mask.sum().clamp(min=1)
        total = total + parts[head]
    if "next_category" in heads and "category" in logits:
        labels = batch[LABEL_ARRAYS["next_category"]]
        mask = labels >= 0
        loss = F.cross_entropy(logits["category"][mask], labels[mask], reduction="sum")
        parts["next_category"] = loss / mask.sum().clamp(min=1)
        total = total + parts["next_category"]
    return total, parts
