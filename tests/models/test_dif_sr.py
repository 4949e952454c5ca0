"""The attribute-fusion encoder (models/dif_sr.py): scores are the sum of the streams' query-key products,
values come from the item stream, attributes change the query, and it works without them."""

from __future__ import annotations

import pytest
import torch

from intentrec.models.dif_sr import DecoupledAttention
from tests.models.test_two_tower import make_batch, make_model


def test_the_score_is_the_sum_of_the_streams_products_and_values_are_the_items():
    torch.manual_seed(0)
    B, T, D, H = 2, 6, 8, 2
    attention = DecoupledAttention(D, H, 0.0, num_attributes=2).eval()
    x, a1, a2, positions = torch.randn(B, T, D), torch.randn(B, T, D), torch.randn(B, T, D), torch.randn(T, D)
    with torch.no_grad():
        got = attention(x, [a1, a2], positions)
        q, k, v = attention.item(x).chunk(3, dim=-1)
        pairs = [(q, k)]
        for projection, stream in zip(attention.attributes, (a1, a2)):
            pairs.append(projection(stream).chunk(2, dim=-1))
        q_p, k_p = attention.position(positions).chunk(2, dim=-1)
        pairs.append((q_p.expand(B, T, D), k_p.expand(B, T, D)))

        def heads(t):
            return t.reshape(B, T, H, D // H).transpose(1, 2)

        scores = sum(heads(qs) @ heads(ks).transpose(-1, -2) for qs, ks in pairs) / (D // H) ** 0.5
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        out = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(B, T, D)
        expected = attention.out_proj(out)
    assert torch.allclose(got, expected, atol=1e-5)
    # The attributes move the weights only: with one value per item stream, any attributes give the same output.
    with torch.no_grad():
        flat = x[:, :1].expand(B, T, D)
        same = attention(flat, [a1, a2], positions), attention(flat, [torch.randn(B, T, D)] * 2, positions)
    assert torch.allclose(*same, atol=1e-5)


def test_the_attributes_are_read_and_without_them_the_encoder_still_works():
    m, batch = make_model(encoder="dif_sr", filter_mix=0.0), make_batch()
    assert m.encoder.num_attributes == 2
    with torch.no_grad():
        before = m.query(batch)
        attributes = m.item_tower.attribute_vectors(batch["item_ids"])
        # The same item vectors with other attribute streams: another query.
        other = m.query(batch, step_attributes=attributes.flip(-2))
    assert (before - other).abs().max() > 1e-4
    plain = make_model(encoder="dif_sr", item_features="id").train()
    assert plain.encoder.num_attributes == 0 and plain.item_tower.attribute_vectors(batch["item_ids"]).shape[-2] == 0
    loss = plain.query(batch).pow(2).mean()
    loss.backward()
    assert plain.encoder.blocks[0].self_attn.position.weight.grad.abs().sum() > 0


# Causality and padding: tests/models/test_two_tower.py (ENCODERS).


def test_a_filter_share_of_one_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"model\.filter_mix=1\.0 with model\.encoder=dif_sr; expected a share from 0"):
        make_model(encoder="dif_sr", filter_mix=1.0)
