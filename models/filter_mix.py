"""Filter-mixing query encoder: a learnable sequence filter beside self-attention (`model=filter_mix`).

Follows the line of FMLP-Rec and BSARec:
- FMLP-Rec (Zhou et al., "Filter-enhanced MLP is All You Need for Sequential Recommendation",
  WWW 2022) replaces self-attention with a learnable filter over the sequence axis (a global filter
  applied in the frequency domain), which removes noise from logged behaviour;
- BSARec (Shin et al., "An Attentive Inductive Bias for Sequential Recommendation beyond the
  Self-Attention", AAAI 2024) keeps self-attention and mixes it with a frequency-rescaling branch:
  `alpha * filter(x) + (1 - alpha) * attention(x)`, then the feed-forward layer of each block.

What differs here, and why: every position of a right-padded sequence is a training target in one
pass (as in the other encoders), so the filter must be causal: step t may read steps <= t only. A
global filter in the frequency domain is a circular convolution over the whole window; this module
learns a causal convolution kernel over the window instead (one kernel per channel, one value per
lag 0..T-1), which is the same family of filters restricted to the past, and is applied as a
lower-triangular Toeplitz matrix product so the ONNX export keeps its dynamic axes. BSARec's
hand-set low/high frequency split is left to the learned kernel; `alpha` (model.filter_mix) is the
share of the filter branch in each block (0: a transformer, 1: FMLP-Rec's filter-only blocks).
"""

from __future__ import annotations

import torch
from torch import nn

from intentrec.models.towers import Dropout, SelfAttention, TransformerEncoder


class CausalFilter(nn.Module):
    """y[t] = sum over lags l <= t of kernel[l] * x[t - l], per channel (D kernels of length max_seq_len)."""

    def __init__(self, embedding_dim: int, max_seq_len: int):
        super().__init__()
        # Start as the identity filter (lag 0 = 1) plus small noise, so training starts where a plain
        # residual block does and learns which past steps to blend in.
        kernel = torch.randn(max_seq_len, embedding_dim) * 0.02
        kernel[0] += 1.0
        self.kernel = nn.Parameter(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        steps = torch.arange(T, device=x.device)
        lags = steps[:, None] - steps[None, :]  # (T, T): lag of source s for target t
        causal = (lags >= 0).to(x.dtype)
        toeplitz = self.kernel[lags.clamp(min=0)] * causal[..., None]  # (T, T, D)
        return torch.einsum("tsd,bsd->btd", toeplitz, x)


class FilterMixBlock(nn.Module):
    """Pre-norm block: x + mix(norm(x)), then x + FFN(norm(x)); mix = alpha * filter + (1 - alpha) * attention."""

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float, max_seq_len: int, alpha: float):
        super().__init__()
        self.alpha = float(alpha)
        self.filter = CausalFilter(embedding_dim, max_seq_len)
        self.self_attn = SelfAttention(embedding_dim, num_heads, dropout) if self.alpha < 1.0 else None
        self.linear1 = nn.Linear(embedding_dim, 4 * embedding_dim)
        self.linear2 = nn.Linear(4 * embedding_dim, embedding_dim)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        mixed = self.alpha * self.filter(h)
        if self.self_attn is not None:
            mixed = mixed + (1.0 - self.alpha) * self.self_attn(h)
        x = x + self.dropout(mixed)
        hidden = self.dropout(nn.functional.gelu(self.linear1(self.norm2(x))))
        return x + self.dropout(self.linear2(hidden))


class FilterMixEncoder(TransformerEncoder):
    """The transformer encoder's positions, final norm and length check, with filter-mixing blocks."""

    def block(self, embedding_dim: int, num_heads: int, dropout: float, max_seq_len: int, filter_mix: float = 0.5, **_):
        if not 0.0 <= float(filter_mix) <= 1.0:
            raise ValueError(
                f"model.filter_mix={filter_mix}; expected a share from 0 (attention only) to 1 (filter only)."
            )
        return FilterMixBlock(embedding_dim, num_heads, dropout, max_seq_len, filter_mix)
