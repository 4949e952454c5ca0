"""Intent heads on the query tower: what they read (the current step, never the next one), the session
counters, and the loss and its masks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from intentrec.data.schema import EVENT_TYPES, enum_code
from intentrec.models.intent import LABEL_ARRAYS, NOW_COLUMNS, intent_loss, session_counters
from intentrec.models.two_tower import TwoTower, TwoTowerConfig
from intentrec.training.intent_labels import CART_EVENT_CODES
from tests.models.test_two_tower import NUM_ITEMS, VOCAB, make_batch

CATEGORIES = 6


def make_model(**overrides) -> TwoTower:
    torch.manual_seed(0)
    codes = torch.randint(1, 4, (NUM_ITEMS + 1, 2))
    codes[0] = 0
    config = TwoTowerConfig(embedding_dim=16, num_heads=2, max_seq_len=12, dropout=0.0, intent_heads=True, **overrides)
    return TwoTower(config, dataclasses.replace(VOCAB, num_categories=CATEGORIES), codes).eval()


def intent_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    batch = make_batch(seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    real = batch["item_ids"] > 0
    for column in NOW_COLUMNS.values():
        batch[column] = torch.randint(1, 4, real.shape, generator=g) * real
    for head, column in LABEL_ARRAYS.items():
        high = CATEGORIES if head == "next_category" else 2
        batch[column] = torch.where(real, torch.randint(0, high, real.shape, generator=g), -1)
    return batch


@pytest.mark.parametrize("encoder", ["transformer", "gru", "dif_sr"])
def test_the_heads_read_the_current_step_and_never_the_next_ones_context(encoder):
    model = make_model(encoder=encoder)
    batch = intent_batch()
    queries, logits = model.query_states(batch, intent=True)
    assert logits["binary"].shape == (*batch["item_ids"].shape, 3)
    assert logits["category"].shape == (*batch["item_ids"].shape, CATEGORIES)
    real = batch["item_ids"] > 0
    # The next step's context (its device, hour, ... and above all its time gap, which tells whether the
    # session ends) moves the next-item queries but not the intent signals.
    later = dict(batch)
    for field in ("ctx_device_types", "ctx_hours", "ctx_gap_buckets", "ctx_referrers"):
        later[field] = (batch[field] % 3) + 1
    other_queries, other_logits = model.query_states(later, intent=True)
    assert not torch.allclose(other_queries[real], queries[real])
    torch.testing.assert_close(other_logits["binary"], logits["binary"])
    torch.testing.assert_close(other_logits["category"], logits["category"])
    # The current step's context does move them.
    now = dict(batch, now_device_types=(batch["now_device_types"] % 3) + 1)
    assert not torch.allclose(model.query_states(now, intent=True)[1]["binary"][real], logits["binary"][real])
    # Causal: a later step does not change an earlier step's signals.
    cut = {
        name: (values[:, :4] if values.dim() == 2 and name != "past_purchase_ids" else values)
        for name, values in batch.items()
    }
    torch.testing.assert_close(model.query_states(cut, intent=True)[1]["binary"], logits["binary"][:, :4])


def test_without_heads_or_without_intent_the_tower_returns_its_queries_alone():
    model = make_model()
    batch = intent_batch()
    torch.manual_seed(0)
    torch.randint(1, 4, (NUM_ITEMS + 1, 2))  # as make_model draws the codes first
    plain = TwoTower(
        dataclasses.replace(model.cfg, intent_heads=False),
        dataclasses.replace(VOCAB, num_categories=CATEGORIES),
        model.item_tower.feature_codes,
    ).eval()
    assert plain.intent is None and isinstance(plain.query_states(batch, intent=True), torch.Tensor)
    torch.testing.assert_close(model.query_states(batch), model.query_states(batch, intent=True)[0])
    # The heads are built last: the tower starts from the same weights with and without them.
    tower = {k: v for k, v in model.state_dict().items() if not k.startswith("intent.")}
    torch.testing.assert_close(tower, plain.state_dict())


def test_session_counters_count_within_the_session_up_to_each_step():
    add, remove, buy = (CART_EVENT_CODES[n] for n in ("add_to_cart", "remove_from_cart", "purchase"))
    view = enum_code(EVENT_TYPES, "view")
    batch = {  # session 1: view, add, add, remove, purchase; session 2: view, add; then padding
        "item_ids": torch.tensor([[1, 2, 3, 3, 2, 4, 5, 0]]),
        "event_types": torch.tensor([[view, add, add, remove, buy, view, add, 0]]),
        "new_session": torch.tensor([[1, 0, 0, 0, 0, 1, 0, 0]]),
        "gap_buckets": torch.tensor([[1, 7, 2, 2, 3, 18, 8, 0]]),  # 7: 48 s, 2: 1.5 s, 3: 3 s, 8: 96 s
    }
    counters = session_counters(batch, CART_EVENT_CODES)[0]
    steps = torch.expm1(counters[:, 0]).round()
    minutes = torch.expm1(counters[:, 1]) * 60
    cart = torch.expm1(counters[:, 2]).round()
    assert steps.tolist() == [1, 2, 3, 4, 5, 1, 2, 0]
    torch.testing.assert_close(minutes[:7], torch.tensor([0, 48, 49.5, 51, 54, 0, 96.0]))
    assert cart.tolist() == [0, 1, 2, 1, 0, 0, 1, 0]  # the purchase empties it; a new session starts empty
    assert counters[:, 3].tolist() == [0, 1, 1, 1, 0, 0, 1, 0]
    assert torch.expm1(counters[:, 4]).round().tolist() == [0, 0, 0, 0, 1, 0, 0, 0]


def test_each_gap_buckets_seconds_fall_in_that_bucket():
    from intentrec.data.features import GAP_BUCKET_SECONDS, NUM_GAP_BUCKETS, time_gap_buckets

    assert time_gap_buckets(GAP_BUCKET_SECONDS[2:]).tolist() == list(range(2, NUM_GAP_BUCKETS))
    assert GAP_BUCKET_SECONDS[:2].tolist() == [0, 0]  # unknown, and no gap


def test_the_loss_reads_labelled_positions_only_and_an_empty_head_adds_nothing():
    model = make_model()
    batch = intent_batch()
    _, logits = model.query_states(batch, intent=True)
    total, parts = intent_loss(logits, batch, ("purchase", "exit", "abandon", "next_category"))
    assert set(parts) == {"purchase", "exit", "abandon", "next_category"} and torch.isfinite(total)
    torch.testing.assert_close(total, sum(parts.values()))
    unlabelled = dict(batch, intent_exit=torch.full_like(batch["intent_exit"], -1))
    total, parts = intent_loss(logits, unlabelled, ("exit",))
    assert float(total) == 0.0 and float(parts["exit"]) == 0.0
    # A head that is off adds nothing, whatever its labels.
    only = intent_loss(logits, batch, ("purchase",))[0]
    torch.testing.assert_close(only, parts_of(logits, batch)["purchase"])


def parts_of(logits, batch):
    return intent_loss(logits, batch, ("purchase", "exit", "abandon", "next_category"))[1]


def test_the_heads_read_what_intent_inputs_gives_them():
    model = make_model()
    batch = intent_batch()
    _, logits = model.query_states(batch, intent=True)
    torch.testing.assert_close(model.intent(model.intent_inputs(batch))["binary"], logits["binary"])
    assert model.intent_inputs(batch).shape[-1] == model.intent.width


def test_a_bidirectional_encoder_cannot_carry_intent_heads():
    with pytest.raises(ValueError, match="bidirectional encoder"):
        TwoTowerConfig(encoder="bert4rec", intent_heads=True)
