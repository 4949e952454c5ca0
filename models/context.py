"""Context of the moment of a recommendation, and how it is fused into the query (pure torch).

Context per query position (the step being predicted): device type, hour of day, day of week,
referrer, region, time-gap bucket since the previous event; per shopper: loyalty; plus a summary of
past purchases (mean embedding of purchased items, from before the window and within it so far).
"""

from __future__ import annotations

import torch
from torch import nn

from intentrec.models.towers import Dropout

CONTEXT_FIELDS = (
    "ctx_device_types",
    "ctx_hours",
    "ctx_days_of_week",
    "ctx_referrers",
    "ctx_regions",
    "ctx_gap_buckets",
)
FUSIONS = ("none", "concat", "latent_cross")


class ContextEmbedding(nn.Module):
    """Sum of context-field embeddings (B, T) -> (B, T, D), plus loyalty (B,) and purchase summary (B, T, D)."""

    def __init__(self, embedding_dim: int, sizes: dict[str, int]):
        super().__init__()
        self.fields = nn.ModuleDict(
            {name: nn.Embedding(sizes[name], embedding_dim, padding_idx=0) for name in CONTEXT_FIELDS}
        )
        self.loyalty = nn.Embedding(3, embedding_dim, padding_idx=0)
        self.purchases = nn.Linear(embedding_dim, embedding_dim)
        for embedding in [*self.fields.values(), self.loyalty]:
            nn.init.normal_(embedding.weight, std=0.02)

    def forward(self, batch: dict[str, torch.Tensor], purchase_summary: torch.Tensor) -> torch.Tensor:
        out = self.loyalty(batch["loyalty"]).unsqueeze(1) + self.purchases(purchase_summary)
        for name, embedding in self.fields.items():
            out = out + embedding(batch[name])
        return out


class ContextFusion(nn.Module):
    """How context enters the query.

    - `none`: the sequence state is the query (context ignored).
    - `concat`: MLP over [state, context], added to the state.
    - `latent_cross`: state * (1 + context) (Beutel et al., WSDM 2018).
    """

    def __init__(self, kind: str, embedding_dim: int, dropout: float):
        super().__init__()
        if kind not in FUSIONS:
            raise ValueError(f"model.context={kind!r}; expected one of {list(FUSIONS)}.")
        self.kind = kind
        if kind == "concat":
            self.mlp = nn.Sequential(
                nn.Linear(2 * embedding_dim, 2 * embedding_dim),
                nn.GELU(),
                Dropout(dropout),
                nn.Linear(2 * embedding_dim, embedding_dim),
            )
        self.norm = nn.LayerNorm(embedding_dim) if kind != "none" else nn.Identity()

    def forward(self, states: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """states, context: (B, T, D) -> queries (B, T, D)."""
        if self.kind == "none":
            return states
        if self.kind == "concat":
            return self.norm(states + self.mlp(torch.cat([states, context], dim=-1)))
        return self.norm(states * (1 + context))
