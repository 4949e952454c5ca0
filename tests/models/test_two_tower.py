"""Model properties: causal (no look-ahead), padding-invariant, cold items embedded from content."""

from __future__ import annotations

import pytest
import torch

from intentrec.models.losses import GBCE, SampledSoftmax, causal_history, full_softmax
from intentrec.models.two_tower import TwoTower, TwoTowerConfig, Vocabulary

NUM_ITEMS = 30
VOCAB = Vocabulary(
    num_items=NUM_ITEMS,
    num_event_types=8,
    num_gap_buckets=24,
    num_channels=5,
    context_sizes={
        "ctx_device_types": 4,
        "ctx_hours": 25,
        "ctx_days_of_week": 8,
        "ctx_referrers": 7,
        "ctx_regions": 5,
        "ctx_gap_buckets": 24,
    },
    feature_sizes=[6, 4],
)


def make_model(**overrides) -> TwoTower:
    torch.manual_seed(0)
    codes = torch.randint(1, 4, (NUM_ITEMS + 1, 2))
    codes[0] = 0
    model = TwoTower(
        TwoTowerConfig(embedding_dim=16, num_heads=2, max_seq_len=12, dropout=0.0, **overrides), VOCAB, codes
    )
    return model.eval()


def make_batch(B: int = 3, T: int = 8, lengths=(8, 5, 1), seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    rand = lambda high: torch.randint(1, high, (B, T), generator=g) * mask  # noqa: E731
    return {
        "item_ids": rand(NUM_ITEMS + 1),
        "event_types": rand(8),
        "gap_buckets": rand(24),
        "channels": rand(5),
        "new_session": torch.randint(0, 2, (B, T), generator=g) * mask,
        "ctx_device_types": rand(4),
        "ctx_hours": rand(25),
        "ctx_days_of_week": rand(8),
        "ctx_referrers": rand(7),
        "ctx_regions": rand(5),
        "ctx_gap_buckets": rand(24),
        "loyalty": torch.randint(0, 3, (B,), generator=g),
        "past_purchase_ids": torch.randint(0, NUM_ITEMS + 1, (B, 4), generator=g),
    }


ENCODERS = ["transformer", "gru", "mean", "filter_mix", "dif_sr"]


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("context", ["none", "concat", "latent_cross"])
def test_encoder_is_causal_future_steps_do_not_change_past_states(encoder, context):
    model = make_model(encoder=encoder, context=context)
    batch = make_batch()
    changed = {k: v.clone() for k, v in batch.items()}
    for name in ("item_ids", "event_types", "channels", "ctx_hours", "ctx_device_types"):
        changed[name][:, 5:] = (changed[name][:, 5:] % 3) + 1  # rewrite steps 5.. of every row
    with torch.no_grad():
        before, after = model.query_states(batch), model.query_states(changed)
    assert torch.allclose(before[:, :5], after[:, :5], atol=1e-6)
    assert not torch.allclose(before[0, 5:], after[0, 5:], atol=1e-4)  # the future did change


@pytest.mark.parametrize("encoder", ENCODERS)
def test_padding_does_not_change_the_query(encoder):
    model = make_model(encoder=encoder)
    batch = make_batch(T=8)
    padded = {
        k: (
            torch.cat([v, torch.zeros(v.shape[0], 4, dtype=v.dtype)], dim=1)
            if v.dim() == 2 and k != "past_purchase_ids"
            else v
        )
        for k, v in batch.items()
    }
    with torch.no_grad():
        assert torch.allclose(model.query(batch), model.query(padded), atol=1e-6)


def test_query_reads_the_last_real_step_of_each_row():
    model = make_model()
    batch = make_batch(lengths=(8, 5, 1))
    with torch.no_grad():
        states, queries = model.query_states(batch), model.query(batch)
    assert torch.allclose(queries[1], states[1, 4]) and torch.allclose(queries[2], states[2, 0])


def test_cold_items_are_embedded_from_their_features_alone():
    model = make_model()
    counts = torch.ones(NUM_ITEMS + 1)
    counts[7] = 0
    model.item_tower.set_cold_items(counts)
    with torch.no_grad():
        cold = model.item_embeddings(torch.tensor([7]))[0]
        content = sum(
            emb(model.item_tower.feature_codes[7, i]) for i, emb in enumerate(model.item_tower.feature_embeddings)
        )
    assert torch.allclose(cold, content) and cold.abs().sum() > 0
    id_only = make_model(item_features="id")
    id_only.item_tower.set_cold_items(counts)
    assert id_only.item_embeddings(torch.tensor([7])).abs().sum() == 0


def test_cosine_similarity_normalizes_both_towers():
    model = make_model(similarity="cosine")
    with torch.no_grad():
        assert torch.allclose(model.query(make_batch()).norm(dim=-1), torch.ones(3), atol=1e-5)
        assert torch.allclose(model.item_embeddings()[1:].norm(dim=-1), torch.ones(NUM_ITEMS), atol=1e-5)
    assert model.logit_scale() == pytest.approx(20.0)


def test_losses_are_finite_and_train_the_item_tower():
    model = make_model().train()
    queries = model.query(make_batch())
    targets = torch.tensor([3, 4, 5])
    for loss_fn in (
        lambda: full_softmax(queries, targets, model.item_embeddings(), 1.0),
        lambda: SampledSoftmax(torch.full((NUM_ITEMS + 1,), 1.0 / NUM_ITEMS).index_fill(0, torch.tensor([0]), 0), 8)(
            queries, targets, model.item_embeddings, 1.0
        ),
        lambda: GBCE(NUM_ITEMS, 8)(queries, targets, model.item_embeddings, 1.0),
    ):
        model.zero_grad()
        loss = loss_fn()
        assert torch.isfinite(loss)
        loss.backward(retain_graph=True)
        assert model.item_tower.id_embedding.weight.grad.abs().sum() > 0


def test_full_softmax_never_predicts_padding():
    queries = torch.randn(4, 8)
    items = torch.randn(NUM_ITEMS + 1, 8)
    items[0] = queries.mean(0) * 100  # padding would win every row if it were not masked
    loss = full_softmax(queries, torch.tensor([1, 2, 3, 4]), items, 1.0)
    logits = queries @ items.T
    logits[:, 0] = float("-inf")
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3, 4])).item())


def test_full_softmax_can_take_the_history_out_of_the_negatives():
    item_ids = torch.tensor([[3, 5, 2, 0], [4, 4, 0, 0]])
    targets = torch.tensor([[5, 2, 1, 0], [4, 6, 0, 0]])  # row 1 repeats item 4: a target is never dropped
    mask = targets > 0
    seen = causal_history(item_ids, mask)
    assert seen.tolist() == [[3, 0, 0, 0], [3, 5, 0, 0], [3, 5, 2, 0], [4, 0, 0, 0], [4, 4, 0, 0]]
    queries = torch.randn(5, 8)
    items = torch.randn(NUM_ITEMS + 1, 8)
    loss = full_softmax(queries, targets[mask], items, 1.0, seen)
    logits = queries @ items.T
    logits[:, 0] = float("-inf")
    for row, drop in enumerate([[3], [3, 5], [3, 5, 2], [], [4]]):
        logits[row, drop] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, targets[mask])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() < full_softmax(queries, targets[mask], items, 1.0).item()


def test_bad_model_config_names_the_key():
    with pytest.raises(
        ValueError,
        match=r"model\.encoder='lstm'; expected one of \['mean', 'gru', 'transformer', 'filter_mix', 'bert4rec', 'dif_sr'\]",
    ):
        TwoTowerConfig(encoder="lstm")
    with pytest.raises(ValueError, match=r"model\.embedding_dim=10 must be divisible by model\.num_heads=4"):
        TwoTowerConfig(embedding_dim=10, num_heads=4)


def test_a_sequence_longer_than_the_positions_is_refused_with_the_fix():
    model = make_model()  # max_seq_len=12
    with pytest.raises(
        ValueError, match=r"sequence of 16 steps is longer than model\.max_seq_len=12; keep the most recent steps"
    ):
        model.query_states(make_batch(T=16, lengths=(16, 5, 1)))
