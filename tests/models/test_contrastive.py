"""The augmentations and loss of the contrastive variants (models/contrastive.py) on hand-made batches."""

from __future__ import annotations

import pytest
import torch

from intentrec.models.contrastive import (
    AUGMENTATIONS,
    ContrastiveObjective,
    augment,
    info_nce,
    same_target_partner,
)

SHARES = {"crop": 0.6, "mask": 0.3, "reorder": 0.6}
KEYS = ("item_ids", "event_types")


def batch_of(lengths, T=10):
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.arange(1, length + 1) + 100 * row
    return {
        "item_ids": ids,
        "event_types": ids % 7 + 1 * (ids > 0),
        "loyalty": torch.ones(len(lengths), dtype=torch.long),
    }


def rows(tensor):
    return [[int(v) for v in row if v > 0] for row in tensor]


def test_crop_keeps_a_contiguous_share_and_moves_every_step_field_together():
    batch = batch_of([10, 5, 1, 3])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        view, masked = augment(batch, KEYS, torch.zeros(4, dtype=torch.long), SHARES, generator)
        assert not masked.any()
        for original, cropped, length in zip(rows(batch["item_ids"]), rows(view["item_ids"]), (10, 5, 1, 3)):
            assert len(cropped) == max(1, int(length * 0.6))
            start = original.index(cropped[0])
            assert cropped == original[start : start + len(cropped)]
        assert torch.equal(view["event_types"], view["item_ids"] % 7 + 1 * (view["item_ids"] > 0))
        assert torch.equal(view["loyalty"], batch["loyalty"])  # per-sequence fields are left alone


def test_reorder_shuffles_one_window_and_nothing_else():
    batch = batch_of([10, 6])
    generator = torch.Generator().manual_seed(1)
    moved = 0
    for _ in range(20):
        view, _ = augment(batch, KEYS, torch.full((2,), 2, dtype=torch.long), SHARES, generator)
        for original, shuffled in zip(rows(batch["item_ids"]), rows(view["item_ids"])):
            assert sorted(shuffled) == original
            changed = [i for i, (a, b) in enumerate(zip(original, shuffled)) if a != b]
            if changed:
                moved += 1
                assert changed[-1] - changed[0] + 1 <= int(len(original) * 0.6)
        assert torch.equal(view["event_types"], view["item_ids"] % 7 + 1 * (view["item_ids"] > 0))
    assert moved > 20


def test_mask_marks_a_share_of_real_steps_and_never_a_whole_sequence():
    batch = batch_of([10, 2, 1])
    generator = torch.Generator().manual_seed(2)
    total = 0
    for _ in range(50):
        view, masked = augment(batch, KEYS, torch.ones(3, dtype=torch.long), SHARES, generator)
        assert torch.equal(view["item_ids"], batch["item_ids"])
        assert not (masked & (batch["item_ids"] == 0)).any()
        assert (masked.sum(dim=1) < (batch["item_ids"] > 0).sum(dim=1)).all()
        total += int(masked[0].sum())
    assert 0.2 < total / 500 < 0.4


def test_same_target_partner_and_info_nce():
    targets = torch.tensor([5, 7, 5, 0, 0, 9])
    partner = same_target_partner(targets, torch.Generator().manual_seed(0))
    assert partner.tolist() == [2, 1, 0, 3, 4, 5]
    views = torch.eye(4) * 10
    assert info_nce(views, views.clone(), 1.0) < 1e-3
    assert info_nce(views, views[[1, 2, 3, 0]], 1.0) > 5


@pytest.mark.parametrize("kind", ["cl4srec", "duorec"])
def test_objective_trains_the_query_tower_and_the_mask_vector(kind):
    from intentrec.training.module import STEP_ARRAYS
    from tests.models.test_two_tower import make_batch, make_model

    model = make_model().train()
    batch = make_batch(B=4, T=8, lengths=(8, 5, 3, 6))
    batch["targets"] = torch.roll(batch["item_ids"], -1, dims=1) * (batch["item_ids"] > 0)
    batch["targets"][1, 4] = batch["targets"][0, 7] = 9  # two rows with the same next item (duorec's positive)
    objective = ContrastiveObjective(16, kind=kind, weight=0.5)
    torch.manual_seed(0)
    loss = objective(model, batch, STEP_ARRAYS)
    loss.backward()
    assert loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.context.parameters())  # context is used
    if kind == "cl4srec":
        assert objective.mask_vector.grad is not None and objective.mask_vector.grad.abs().sum() > 0
    assert len(AUGMENTATIONS) == 3


def test_bad_contrastive_settings_name_the_key():
    with pytest.raises(ValueError, match=r"model\.contrastive\.kind='simclr'; expected one of \['cl4srec', 'duorec'\]"):
        ContrastiveObjective(16, kind="simclr")
    with pytest.raises(ValueError, match=r"model\.contrastive\.crop=1\.5; expected a share in \(0, 1\]"):
        ContrastiveObjective(16, crop=1.5)
