"""The ranker: re-scores the retrieval's top candidates with context and candidate features (pure torch).

    x0 = [query, candidate, query * candidate, context, candidate features, retrieval score]
    x_{l+1} = x0 * (W_l x_l + b_l) + x_l          (DCN-v2 cross layers, Wang et al., WWW 2021)
    W_l = U_l V_l with `cross_rank` > 0            (the paper's low-rank cross layers: width x r x 2 weights)
    logit = MLP(x_L)

Shapes: B queries, C candidates each, D embedding dim, F candidate feature codes, K context fields.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from intentrec.models.towers import Dropout, feature_vectors


@dataclass
class RankerConfig:
    hidden_dim: int = 128  # width of the MLP
    num_cross_layers: int = 2  # DCN-v2 cross layers
    cross_rank: int = 0  # 0: full (width x width) cross matrices; r > 0: low-rank U (width x r) V (r x width)
    dropout: float = 0.1
    feature_dim: int = 16  # embedding size of each context field and candidate feature


class Ranker(nn.Module):
    """Scores (query, candidate) pairs.

    Args:
        cfg: RankerConfig.
        embedding_dim: D of the retrieval towers.
        context_sizes: vocabulary size of each of the K context fields (including loyalty).
        feature_sizes: vocabulary size of each candidate feature.
        feature_widths: columns of each feature in the candidate codes (more than 1: a bag, embedded as
            the mean of its codes); default 1 each.
    """

    def __init__(
        self,
        cfg: RankerConfig,
        embedding_dim: int,
        context_sizes: list[int],
        feature_sizes: list[int],
        feature_widths: list[int] | None = None,
    ):
        super().__init__()
        self.feature_widths = list(feature_widths) if feature_widths else [1] * len(feature_sizes)
        self.context = nn.ModuleList(nn.Embedding(size, cfg.feature_dim) for size in context_sizes)
        self.features = nn.ModuleList(nn.Embedding(size, cfg.feature_dim) for size in feature_sizes)
        width = 3 * embedding_dim + cfg.feature_dim * (len(context_sizes) + len(feature_sizes)) + 1
        if cfg.cross_rank < 0:
            raise ValueError(f"ranker.cross_rank={cfg.cross_rank}; expected 0 (full cross matrices) or a rank > 0")
        self.cross = nn.ModuleList(_cross_layer(width, cfg.cross_rank) for _ in range(cfg.num_cross_layers))
        self.mlp = nn.Sequential(
            nn.Linear(width, cfg.hidden_dim),
            nn.GELU(),
            Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim // 2),
            nn.GELU(),
            nn.Linear(cfg.hidden_dim // 2, 1),
        )
        for layer in self.cross:
            last = layer[-1] if isinstance(layer, nn.Sequential) else layer
            nn.init.zeros_(last.weight)  # start as the identity: x_{l+1} = x0 * b + x_l
            nn.init.zeros_(last.bias)

    def forward(
        self,
        query: torch.Tensor,
        candidates: torch.Tensor,
        candidate_codes: torch.Tensor,
        context_codes: torch.Tensor,
        retrieval_scores: torch.Tensor,
    ) -> torch.Tensor:
        """query (B, D), candidates (B, C, D), candidate_codes (B, C, F) int64, context_codes (B, K) int64,
        retrieval_scores (B, C) -> logits (B, C)."""
        B, C, _ = candidates.shape
        q = query.unsqueeze(1).expand(B, C, -1)
        context = torch.cat([emb(context_codes[:, i]) for i, emb in enumerate(self.context)], dim=-1)
        parts = [q, candidates, q * candidates, context.unsqueeze(1).expand(B, C, -1)]
        parts += feature_vectors(self.features, self.feature_widths, candidate_codes)
        parts.append(retrieval_scores.unsqueeze(-1))
        x0 = torch.cat(parts, dim=-1)  # (B, C, width)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return self.mlp(x).squeeze(-1)


def _cross_layer(width: int, rank: int) -> nn.Module:
    if rank == 0 or rank >= width:
        return nn.Linear(width, width)
    return nn.Sequential(nn.Linear(width, rank, bias=False), nn.Linear(rank, width))
