"""Attribute fusion in the attention scores (`model=dif_sr`), after DIF-SR (Xie et al., "Decoupled Side
Information Fusion for Sequential Recommendation", SIGIR 2022).

Adding item attributes to the item vector before self-attention (early fusion) mixes them into the values
every block passes on; DIF-SR keeps them out of the values and lets them shape only where each step
looks: a block computes one query-key product per stream, the item stream, each item attribute (category,
brand, price bucket, each attribute column of the item file) and the positions, and sums them into one
attention score before the softmax (the paper's `sum` fusion):

    score(t, s) = (q_item(t) . k_item(s) + sum over attributes a of q_a(t) . k_a(s) + q_pos(t) . k_pos(s)) / sqrt(d)
    out(t)      = sum over s <= t of softmax(score)(t, s) * v_item(s)

Each attribute stream is that attribute's embedding in the item tower (a multi-valued attribute: the mean
of its values' embeddings), shared with the item tower as the paper shares its attribute tables, layer-
normed, the same at every block; each block has its own query and key projections per stream.

What differs from the paper, and why:
- the item stream is the step as every other encoder reads it (item tower vector, id + content, plus event
  type, time gap, channel, new-session flag), so cold items still enter by their content, and the item
  tower's output embeddings are unchanged;
- positions enter the attention only (their own stream), not the item stream, as in the paper;
- the paper's auxiliary attribute-prediction loss is `model.attribute_loss` (its lambda; 0 = off, the
  default), with the attribute tables of the item tower as the predictors' weights instead of separate
  linear layers (`models.losses.attribute_prediction_loss`); it works with every encoder, training only;
- without attribute columns (`model.item_features=id`, or data without them) only the item and position
  streams remain;
- `model.filter_mix` > 0 adds the filter-mixing branch of models/filter_mix.py beside the decoupled
  attention (BSARec's `alpha * filter + (1 - alpha) * attention` with DIF-SR's attention; `model=dif_sr_filter`);
  0, the paper's blocks, is `model=dif_sr`.

Serving reads the attribute streams from the bundle (`items.parquet` codes and `content_tables.npz`), so
items added later (`python -m serving.add_items`) come with theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from intentrec.models.filter_mix import CausalFilter
from intentrec.models.towers import TransformerBlock, TransformerEncoder


class DecoupledAttention(nn.Module):
    """Causal multi-head attention whose score sums one query-key product per stream; values from the items."""

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float, num_attributes: int):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.item = nn.Linear(embedding_dim, 3 * embedding_dim)  # query, key, value
        self.attributes = nn.ModuleList(nn.Linear(embedding_dim, 2 * embedding_dim) for _ in range(num_attributes))
        self.position = nn.Linear(embedding_dim, 2 * embedding_dim)
        self.out_proj = nn.Linear(embedding_dim, embedding_dim)
        for layer in (self.item, self.position, *self.attributes):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, attributes: list[torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), attributes: one (B, T, D) per stream, positions (T, D) -> (B, T, D)."""
        B, T, D = x.shape
        H = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, D/H)
            return t.reshape(B, T, H, -1).transpose(1, 2)

        q, k, v = self.item(x).chunk(3, dim=-1)
        queries, keys = [heads(q)], [heads(k)]
        for projection, stream in zip(self.attributes, attributes):
            q_a, k_a = projection(stream).chunk(2, dim=-1)
            queries.append(heads(q_a))
            keys.append(heads(k_a))
        q_p, k_p = self.position(positions).chunk(2, dim=-1)  # (T, D)
        queries.append(heads(q_p.unsqueeze(0).expand(B, T, D)))
        keys.append(heads(k_p.unsqueeze(0).expand(B, T, D)))
        # Concatenating the streams' heads makes one dot product the sum of the streams' products.
        out = nn.functional.scaled_dot_product_attention(
            torch.cat(queries, dim=-1),
            torch.cat(keys, dim=-1),
            heads(v),
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=True,
            scale=(D // H) ** -0.5,
        )
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))


class DifSrBlock(TransformerBlock):
    """Pre-norm block as the transformer's, with decoupled attention (mixed with a causal filter when
    `filter_mix` > 0: `filter_mix * filter + (1 - filter_mix) * attention`)."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        dropout: float,
        num_attributes: int,
        max_seq_len: int,
        filter_mix: float = 0.0,
    ):
        super().__init__(embedding_dim, num_heads, dropout)
        if not 0.0 <= float(filter_mix) < 1.0:
            raise ValueError(
                f"model.filter_mix={filter_mix} with model.encoder=dif_sr; expected a share from 0 (decoupled attention "
                "only) up to, not including, 1 (dif_sr needs its attention)."
            )
        self.self_attn = DecoupledAttention(embedding_dim, num_heads, dropout, num_attributes)
        self.alpha = float(filter_mix)
        self.filter = CausalFilter(embedding_dim, max_seq_len) if self.alpha > 0 else None

    def forward(self, x: torch.Tensor, attributes: list[torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        mixed = self.self_attn(h, attributes, positions)
        if self.filter is not None:
            mixed = self.alpha * self.filter(h) + (1.0 - self.alpha) * mixed
        x = x + self.dropout(mixed)
        hidden = self.dropout(nn.functional.gelu(self.linear1(self.norm2(x))))
        return x + self.dropout(self.linear2(hidden))


class DifSrEncoder(TransformerEncoder):
    """Learned positions (their own attention stream), DIF-SR blocks, final norm; reads attribute streams."""

    reads_attributes = True

    def __init__(
        self,
        embedding_dim: int,
        num_layers: int,
        num_heads: int,
        dropout: float,
        max_seq_len: int,
        num_attributes: int = 0,
        filter_mix: float = 0.0,
        **_,
    ):
        super().__init__(
            embedding_dim,
            num_layers,
            num_heads,
            dropout,
            max_seq_len,
            num_attributes=num_attributes,
            filter_mix=filter_mix,
        )
        self.num_attributes = num_attributes
        self.attribute_norms = nn.ModuleList(nn.LayerNorm(embedding_dim) for _ in range(num_attributes))

    def block(
        self,
        embedding_dim: int,
        num_heads: int,
        dropout: float,
        max_seq_len: int,
        num_attributes: int = 0,
        filter_mix: float = 0.0,
        **_,
    ) -> nn.Module:
        return DifSrBlock(embedding_dim, num_heads, dropout, num_attributes, max_seq_len, filter_mix)

    def forward(self, steps: torch.Tensor, mask: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """steps (B, T, D), mask (B, T), attributes (B, T, A, D) -> states (B, T, D); state t sees steps <= t."""
        T = self.check_length(steps.shape[1])
        if attributes.shape[-2] != self.num_attributes:
            raise ValueError(
                f"{attributes.shape[-2]} attribute streams given; the encoder was built for {self.num_attributes} "
                "(the item features of the data it was trained on)."
            )
        positions = self.position(torch.arange(T, device=steps.device))
        streams = [self.dropout(norm(attributes[:, :, a])) for a, norm in enumerate(self.attribute_norms)]
        x = self.dropout(steps)
        for block in self.blocks:
            x = block(x, streams, positions)
        return self.norm(x)
