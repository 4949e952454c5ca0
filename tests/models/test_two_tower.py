"""Model properties: causal (no look-ahead), padding-invariant, cold items embedded from content."""

from __future__ import annotations

import pytest
import torch

from intentrec.models.losses import GBCE, SampledSoftmax, causal_history, chunked_softmax, full_softmax
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


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("history", [False, True])
def test_chunked_softmax_equals_the_full_softmax_in_loss_and_gradients(chunk, history):
    # The fused loss makes its gradients chunk by chunk in the forward pass; the model's parameters
    # must get what autograd gives through the full (M, N) logits, within 1e-5.
    torch.manual_seed(0)
    item_ids = torch.randint(1, NUM_ITEMS + 1, (6, 5))
    mask = torch.rand(6, 5) > 0.2
    targets = torch.randint(1, NUM_ITEMS + 1, (6, 5))[mask]
    seen = causal_history(item_ids, mask) if history else None
    grads = []
    for loss_fn in (full_softmax, lambda *a: chunked_softmax(*a, chunk=chunk)):
        torch.manual_seed(1)
        model = make_model(similarity="cosine", temperature=0.1).train()
        queries = model.query(make_batch()).repeat(10, 1)[: len(targets)]
        loss = loss_fn(queries, targets, model.item_embeddings(), model.logit_scale(), seen)
        (2.5 * loss).backward()  # an upstream gradient other than 1 reaches both
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (full_loss, full_grads), (chunked_loss, chunked_grads) = grads
    assert chunked_loss.item() == pytest.approx(full_loss.item(), abs=1e-5)
    assert full_grads.keys() == chunked_grads.keys() and len(full_grads) > 3
    for name, grad in full_grads.items():
        assert torch.allclose(chunked_grads[name], grad, atol=1e-5), name


def test_chunked_softmax_runs_under_bfloat16_autocast():
    queries = torch.nn.functional.normalize(torch.randn(40, 8), dim=1).requires_grad_()
    items = torch.nn.functional.normalize(torch.randn(NUM_ITEMS + 1, 8), dim=1).requires_grad_()
    targets = torch.randint(1, NUM_ITEMS + 1, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_softmax(queries, targets, items, 10.0, chunk=16)
    loss.backward()
    exact = full_softmax(queries.detach(), targets, items.detach(), 10.0)
    assert loss.dtype == torch.float32 and queries.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(exact.item(), rel=2e-2)
    assert torch.isfinite(items.grad).all() and items.grad.abs().sum() > 0


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


def test_a_bag_feature_is_the_mean_of_its_known_codes_in_training_and_in_the_exported_graph(monkeypatch):
    from torch import nn

    from intentrec.models.towers import feature_vectors

    torch.manual_seed(0)
    embedding = nn.Embedding(6, 4)  # no padding_idx: row 0 is not zero, as in a ranker's table
    codes = torch.tensor([[[1, 3, 0], [0, 0, 0]], [[5, 5, 2], [4, 0, 0]]])  # (2, 2, 3): a bag of 3 per item
    expected = torch.stack(
        [
            torch.stack([embedding.weight[[1, 3]].mean(0), embedding.weight[0]]),  # an empty bag: row 0
            torch.stack([embedding.weight[[5, 5, 2]].mean(0), embedding.weight[4]]),
        ]
    )
    fused = feature_vectors(nn.ModuleList([embedding]), [3], codes)[0]
    assert torch.allclose(fused, expected, atol=1e-6)
    fused.sum().backward()
    assert embedding.weight.grad[0].abs().sum() > 0  # the empty bag reaches row 0
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)  # the plain ops the exporter sees
    plain = feature_vectors(nn.ModuleList([embedding]), [3], codes)[0]
    assert torch.allclose(plain, expected, atol=1e-6)


@pytest.mark.parametrize("id_dropout", [0.0, 0.3])
def test_the_whole_catalogue_pass_of_the_item_tower_equals_embedding_every_item(id_dropout):
    # all_items() builds the catalogue's vectors from the tables (mask, sparse products) instead of
    # gathering every row; values and every table's gradient must be the gather path's.
    from intentrec.models.towers import ItemTower

    torch.manual_seed(0)
    n = 60
    codes = torch.cat(
        [torch.randint(0, 4, (n + 1, 1)), torch.randint(0, 6, (n + 1, 3)) * (torch.rand(n + 1, 3) > 0.4)], 1
    )
    codes[0] = 0
    assert ((codes[:, 1:] == 0).all(1)).sum() > 1 and (codes[:, 0] == 0).sum() > 1  # empty bags, unknown codes
    tower = ItemTower(n, 8, codes, [4, 6], id_dropout=id_dropout, feature_widths=[1, 3]).train()
    tower.has_id[7] = False  # a cold item: content only
    upstream = torch.randn(n + 1, 8)
    results = []
    for pass_ in (tower.all_items, lambda: tower(torch.arange(n + 1))):
        torch.manual_seed(3)  # the same id dropout draw
        vectors = pass_()
        results.append((vectors, torch.autograd.grad((vectors * upstream).sum(), list(tower.parameters()))))
    (fast, fast_grads), (gathered, gathered_grads) = results
    assert torch.allclose(fast, gathered, atol=1e-6)
    for (name, _), a, b in zip(tower.named_parameters(), fast_grads, gathered_grads):
        assert torch.allclose(a, b, atol=1e-5), name
