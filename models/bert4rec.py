"""Bidirectional masked-item query encoder (`model=bert4rec`), after BERT4Rec (Sun et al., "BERT4Rec:
Sequential Recommendation with Bidirectional Encoder Representations from Transformer", CIKM 2019).

Every step attends to every real step of the window, before and after it (no causal mask), so a step's
state cannot predict the step after it as the causal encoders' do. Training is the Cloze task: a share
`model.cloze_mask` of the steps is replaced by a learned [mask] step and each is predicted from both
sides; and a [mask] slot appended after the last real step predicts the next item, which is exactly
what serving asks: the query of a sequence is the state of that appended slot.

How it fits the two-tower model, and what differs from the paper:
- a masked step hides its whole step embedding (item, event type, time gap, channel), not only the
  item id, so the appended slot at serving (which has no event yet) looks like a masked step;
- the context of "now" (device, hour, referrer, ..., purchases so far) is fused into the state of the
  position it describes: a masked step t takes the context that the causal encoders give position
  t - 1 (the context of step t's own time), the appended slot the context of the last real step;
- training adds the appended-slot targets to the paper's masked ones in one loss (the paper fine-tunes
  on the last position with a separate share of masked-last sequences);
- the item tower (id + content) gives the output embeddings, shared with the input, as the paper ties them.
"""

from __future__ import annotations

import torch
from torch import nn

from intentrec.models.towers import SelfAttention, TransformerBlock, TransformerEncoder


class BidirectionalSelfAttention(SelfAttention):
    """Multi-head self-attention over every real step (`key_mask` (B, T) bool: which keys are real)."""

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class BidirectionalBlock(TransformerBlock):
    def __init__(self, embedding_dim: int, num_heads: int, dropout: float):
        super().__init__(embedding_dim, num_heads, dropout)
        self.self_attn = BidirectionalSelfAttention(embedding_dim, num_heads, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.norm1(x), key_mask))
        hidden = self.dropout(nn.functional.gelu(self.linear1(self.norm2(x))))
        return x + self.dropout(self.linear2(hidden))


class Bert4RecEncoder(TransformerEncoder):
    """Learned positions (one more than max_seq_len: room for the appended [mask] slot), bidirectional
    blocks, final norm; and the learned [mask] step embedding."""

    bidirectional = True

    def __init__(self, embedding_dim: int, num_layers: int, num_heads: int, dropout: float, max_seq_len: int, **_):
        super().__init__(embedding_dim, num_layers, num_heads, dropout, max_seq_len + 1)
        self.mask_step = nn.Parameter(torch.randn(embedding_dim) * 0.02)

    def block(self, embedding_dim: int, num_heads: int, dropout: float, max_seq_len: int, **_) -> nn.Module:
        return BidirectionalBlock(embedding_dim, num_heads, dropout)

    def forward(self, steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """steps (B, T, D), mask (B, T) bool (real steps and [mask] slots) -> states (B, T, D)."""
        T = steps.shape[1]
        if not torch.jit.is_tracing() and T > self.max_seq_len:
            raise ValueError(
                f"sequence of {T - 1} steps is longer than model.max_seq_len={self.max_seq_len - 1}; "
                "keep the most recent steps."
            )
        x = self.dropout(steps + self.position(torch.arange(T, device=steps.device)))
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def cloze_states(
    model,
    batch: dict[str, torch.Tensor],
    masked: torch.Tensor | None,
    step_items: torch.Tensor | None = None,
    past_items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Queries (B, T + 1, D) of a TwoTower with a Bert4RecEncoder: the window's steps with `masked` (B, T)
    ones replaced by [mask], and a [mask] slot appended right after each row's last real step (at index
    `length`; later positions are padding). Position t's query predicts step t's item."""
    ids = batch["item_ids"]
    B, T = ids.shape
    real = ids > 0
    lengths = real.sum(dim=1)
    if step_items is None:
        step_items = model.item_embeddings(ids)  # the served table's vectors (normalized for cosine)
    steps = model.steps(batch, step_items)  # (B, T, D), pads 0
    mask_step = model.encoder.mask_step.to(steps.dtype)
    if masked is not None:
        steps = torch.where(masked.unsqueeze(-1), mask_step, steps)
    steps = torch.cat([steps, torch.zeros_like(steps[:, :1])], dim=1)  # (B, T + 1, D)
    positions = torch.arange(T + 1, device=ids.device).unsqueeze(0)
    slot = positions == lengths.unsqueeze(1)
    steps = torch.where(slot.unsqueeze(-1), mask_step, steps)
    states = model.encoder(steps, positions <= lengths.unsqueeze(1))
    context = None
    if model.context is not None:
        ahead = model.context(batch, model.purchase_summary(batch, step_items, past_items))  # (B, T, D): of step t + 1
        context = torch.cat([torch.zeros_like(ahead[:, :1]), ahead], dim=1)  # index t: the context of step t
    queries = model.fusion(states, context)
    return nn.functional.normalize(queries, dim=-1) if model.cfg.similarity == "cosine" else queries


def slot_query(
    model,
    batch: dict[str, torch.Tensor],
    step_items: torch.Tensor | None = None,
    past_items: torch.Tensor | None = None,
) -> torch.Tensor:
    """The query of each sequence (B, D): the state of the [mask] slot after its last real step."""
    states = cloze_states(model, batch, None, step_items, past_items)
    lengths = (batch["item_ids"] > 0).sum(dim=1)
    return states[torch.arange(states.shape[0], device=states.device), lengths]


def cloze_examples(
    model, batch: dict[str, torch.Tensor], ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training (queries (M, D), target ids (M,)) of one batch: a share `ratio` of the real steps masked and
    predicted (at least one per row of two or more steps), plus the appended slot predicting the next item."""
    ids = batch["item_ids"]
    B, T = ids.shape
    real = ids > 0
    lengths = real.sum(dim=1)
    chance = torch.rand((B, T), generator=generator, device=ids.device)
    masked = real & (chance < ratio)
    # A row with nothing masked gets its lowest-chance step masked (rows of one step: the slot is enough).
    lowest = chance.masked_fill(~real, 2.0).argmin(dim=1)
    none = (masked.sum(dim=1) == 0) & (lengths > 1)
    masked[torch.arange(B, device=ids.device)[none], lowest[none]] = True
    masked &= masked.sum(dim=1, keepdim=True) < lengths.unsqueeze(1)  # never every step of a row
    states = cloze_states(model, batch, masked)  # (B, T + 1, D)
    last = (lengths - 1).clamp(min=0)
    rows = torch.arange(B, device=ids.device)
    next_item = torch.where(lengths > 0, batch["targets"][rows, last], torch.zeros_like(last))
    targets = torch.cat([torch.where(masked, ids, torch.zeros_like(ids)), torch.zeros_like(ids[:, :1])], dim=1)
    targets[rows, lengths] = next_item
    keep = targets > 0
    return states[keep], targets[keep]
