"""The bidirectional masked-item encoder (models/bert4rec.py): no leak of a masked step, padding does not
change a query, the served query is the appended slot's, and training examples are what the paper asks."""

from __future__ import annotations

import pytest
import torch

from intentrec.models.bert4rec import cloze_examples, cloze_states
from tests.models.test_two_tower import NUM_ITEMS, make_batch, make_model


def model():
    return make_model(encoder="bert4rec")


def masked_slots(masked):
    return torch.nn.functional.pad(masked, (0, 1))  # (B, T + 1): cloze_states appends the slot column


def test_a_masked_step_does_not_leak_into_the_query_that_predicts_it():
    m, batch = model(), make_batch()
    masked = torch.zeros_like(batch["item_ids"], dtype=torch.bool)
    masked[0, 3] = masked[1, 2] = True
    changed = {k: v.clone() for k, v in batch.items()}
    for row, step in ((0, 3), (1, 2)):
        changed["item_ids"][row, step] = changed["item_ids"][row, step] % NUM_ITEMS + 1
        changed["event_types"][row, step] = changed["event_types"][row, step] % 7 + 1
    with torch.no_grad():
        before, after = cloze_states(m, batch, masked), cloze_states(m, changed, masked)
        # the queries that predict the masked steps (later positions may read a masked purchase in their context)
        assert torch.allclose(before[masked_slots(masked)], after[masked_slots(masked)], atol=1e-6)
        # unmasked, the same change is seen by every step (both directions)
        plain_before, plain_after = cloze_states(m, batch, None), cloze_states(m, changed, None)
    assert (plain_before[0, :3] - plain_after[0, :3]).abs().max() > 1e-4  # earlier steps see a later one


def test_the_query_is_the_slot_after_the_last_step_and_padding_changes_nothing():
    m, batch = model(), make_batch(T=8, lengths=(8, 5, 1))
    padded = {k: torch.nn.functional.pad(v, (0, 4)) if v.shape[1:] == (8,) else v for k, v in batch.items()}
    with torch.no_grad():
        query, query_padded = m.query(batch), m.query(padded)
        states = cloze_states(m, batch, None)
    assert torch.allclose(query, query_padded, atol=1e-5)
    assert torch.allclose(query[1], states[1, 5], atol=1e-6) and torch.allclose(query[0], states[0, 8], atol=1e-6)
    with pytest.raises(ValueError, match=r"bidirectional encoder \(bert4rec\) has no causal per-position queries"):
        m.query_states(batch)


def test_training_examples_are_the_masked_steps_and_the_next_item():
    m, batch = model().train(), make_batch(T=8, lengths=(8, 5, 1))
    batch["targets"] = torch.roll(batch["item_ids"], -1, dims=1) * (batch["item_ids"] > 0)
    batch["targets"][0, 7], batch["targets"][1, 4], batch["targets"][2, 0] = 11, 12, 13  # the next items
    generator = torch.Generator().manual_seed(0)
    masked_total = 0
    for _ in range(30):
        queries, targets = cloze_examples(m, batch, 0.2, generator)
        assert queries.shape == (len(targets), 16)
        assert {11, 12, 13} <= set(targets.tolist())
        masked_total += len(targets) - 3
        # every masked target is an item of its row (the masked step's own item)
        assert set(targets.tolist()) - {11, 12, 13} <= set(batch["item_ids"][:2].flatten().tolist())
    assert 2 * 30 <= masked_total <= 0.45 * 13 * 30  # at least one per row of 2+ steps; about 20% of 13 steps
    (queries.sum()).backward()
    assert m.encoder.mask_step.grad is not None and m.encoder.mask_step.grad.abs().sum() > 0
