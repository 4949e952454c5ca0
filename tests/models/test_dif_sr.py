"""The attribute-fusion encoder (models/dif_sr.py): scores are the sum of the streams' query-key products,
values come from the item stream, attributes change the query, and it works without them."""

from __future__ import annotations

import pytest
import torch

from intentrec.models.dif_sr import DecoupledAttention
from intentrec.models.losses import attribute_prediction_loss
from intentrec.models.towers import ItemTower
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


def test_the_attribute_loss_is_bce_over_each_features_codes_of_the_target():
    torch.manual_seed(0)
    # items 1..3; a single-code feature (vocabulary 3) and a bag of two (vocabulary 4); code 0 unknown
    codes = torch.tensor([[0, 0, 0], [1, 2, 0], [2, 1, 3], [0, 0, 0]])
    tower = ItemTower(3, 4, codes, [3, 4], feature_widths=[1, 2])
    queries, targets = torch.randn(3, 4, requires_grad=True), torch.tensor([1, 2, 3])
    got = attribute_prediction_loss(tower, queries, targets)

    def bce(query, table, labels):
        logits = (query @ table.weight.t())[1:]  # code 0 is neither a logit nor a label
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / len(labels)

    single = tower.feature_embeddings[0]
    bag = tower.feature_embeddings[1]
    # item 3 has no known code: it is left out of both means
    expected = (bce(queries[0], single, torch.tensor([1.0, 0])) + bce(queries[1], single, torch.tensor([0, 1.0]))) / 2
    expected = (
        expected
        + (bce(queries[0], bag, torch.tensor([0, 1.0, 0])) + bce(queries[1], bag, torch.tensor([1.0, 0, 1]))) / 2
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    got.backward()
    assert bag.weight.grad[1:].abs().sum() > 0 and bag.weight.grad[0].abs().sum() == 0
    # targets without a known attribute: nothing to predict, a zero loss and no gradient
    unknown = torch.randn(2, 4, requires_grad=True)
    nothing = attribute_prediction_loss(tower, unknown, torch.tensor([3, 3]))
    nothing.backward()
    assert nothing.item() == 0.0 and unknown.grad.abs().sum() == 0
    plain = ItemTower(3, 4, None, [])
    assert attribute_prediction_loss(plain, queries.detach(), targets) is None


def test_a_negative_attribute_loss_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"model\.attribute_loss=-1\.0; expected a weight >= 0"):
        make_model(encoder="dif_sr", attribute_loss=-1.0)
