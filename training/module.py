"""The training task: a LightningModule around `models.TwoTower` with its loss and full-ranking evaluation."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytorch_lightning as pl
import torch

from intentrec.models.bert4rec import cloze_examples
from intentrec.models.contrastive import ContrastiveObjective
from intentrec.models.intent import LABEL_ARRAYS, intent_loss
from intentrec.models.losses import (
    GBCE,
    SampledSoftmax,
    attribute_prediction_loss,
    causal_history,
    chunked_softmax,
    full_softmax,
)
from intentrec.models.two_tower import TwoTower, TwoTowerConfig, Vocabulary
from intentrec.training.datamodule import SEQUENCE_ARRAYS
from intentrec.training.metrics import RankingAccumulator, make_accumulator, mask_scores

log = logging.getLogger(__name__)

# the (B, T) inputs an augmented view re-orders together (not the targets, intent labels and step indexes)
STEP_ARRAYS = SEQUENCE_ARRAYS - {"targets", "step_index", *LABEL_ARRAYS.values()}


def scaled_lr_and_warmup(optim: dict) -> tuple[float, int]:
    """Peak learning rate and warm-up steps for the batch size (`optim.batch_scaling`).

    With `sqrt` (the rule for Adam-type optimizers: the gradient noise falls with the square root of
    the batch) or `linear` (Goyal et al., 2017), lr grows with data.batch_size / reference_batch_size,
    and the warm-up covers the same number of training windows as `warmup_steps` batches of the
    reference size (so fewer, larger steps), at least one step. `none` keeps both as given."""
    lr, warmup = float(optim["lr"]), int(optim.get("warmup_steps", 0))
    rule = optim.get("batch_scaling", "none")
    if rule not in ("none", "sqrt", "linear"):
        raise ValueError(f"optim.batch_scaling={rule!r}; expected one of ['none', 'sqrt', 'linear'].")
    if rule == "none":
        return lr, warmup
    reference, batch = int(optim.get("reference_batch_size", 128)), int(optim.get("batch_size", 128))
    if reference < 1 or batch < 1:
        raise ValueError(f"optim.reference_batch_size={reference} and data.batch_size={batch} must be positive.")
    ratio = batch / reference
    lr *= ratio**0.5 if rule == "sqrt" else ratio
    return lr, max(1, round(warmup / ratio)) if warmup else 0


class RetrievalTask(pl.LightningModule):
    """Trains every position of every window (causal) and evaluates by ranking the whole catalogue.

    Args:
        model: TwoTowerConfig fields.
        vocab: Vocabulary fields.
        feature_codes: (N, F) item content codes (saved in the checkpoint as a buffer).
        train_counts: (N,) training events per item (cold items and popularity negatives).
        loss: {name: auto|full|sampled|gbce, num_negatives, full_softmax_max_items, gbce_t}.
        optim: {lr, weight_decay, warmup_steps, schedule: cosine|constant}.
        evaluation: {ks, exclude_seen, monitor}.
        data_fingerprint: {name, num_items, data_hash} of the prepared data, checked on reload.
        variant: the model config's name (e.g. transformer_no_context), kept for reports.
        settings: what evaluate and export take over from the checkpoint (training.run_settings.record).
        contrastive: `model.contrastive` (models.contrastive.ContrastiveObjective arguments) or None: a
            contrastive term beside the next-item loss (CL4SRec / DuoRec style), training only.
        intent: {mode: joint|second_stage, weight, heads: [the heads that learn]} with intent heads
            (model.intent_heads). joint: their loss (models.intent.intent_loss) x weight beside the next-item
            loss; second_stage: trained after the tower (training.intent.train_heads), not here.
    """

    def __init__(
        self,
        model: dict,
        vocab: dict,
        feature_codes: np.ndarray | None,
        train_counts: np.ndarray,
        loss: dict,
        optim: dict,
        evaluation: dict,
        data_fingerprint: dict,
        variant: str = "two_tower",
        settings: dict | None = None,
        contrastive: dict | None = None,
        intent: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["feature_codes", "train_counts"])
        scaled_lr_and_warmup(optim)  # a bad optim.batch_scaling fails here, before any training
        self.model_cfg = TwoTowerConfig(**model)
        self.vocab = Vocabulary(**vocab)
        codes = (
            torch.from_numpy(np.asarray(feature_codes))
            if feature_codes is not None
            else torch.zeros(
                vocab["num_items"] + 1,
                sum(vocab.get("feature_widths") or [1] * len(vocab["feature_sizes"])),
                dtype=torch.long,
            )
        )
        self.model = TwoTower(self.model_cfg, self.vocab, codes)
        counts = (
            torch.as_tensor(np.asarray(train_counts), dtype=torch.float32)
            if train_counts is not None
            else torch.ones(vocab["num_items"] + 1)
        )
        self.register_buffer("train_counts", counts, persistent=True)
        self.model.item_tower.set_cold_items(self.train_counts)
        self.loss_name = self._choose_loss(loss)
        # DIF-SR's auxiliary term: its weight, or 0 when no item has an attribute to predict.
        tower_codes = self.model.item_tower.feature_codes
        has_attributes = tower_codes is not None and bool(tower_codes.any())
        self.attribute_loss = self.model_cfg.attribute_loss if has_attributes else 0.0
        if self.model_cfg.attribute_loss > 0 and not has_attributes:
            log.warning(
                "model.attribute_loss=%s is ignored: the items have no content features to predict "
                "(no category, brand, price or attribute columns in the item file).",
                self.model_cfg.attribute_loss,
            )
        self.contrastive = ContrastiveObjective(self.model_cfg.embedding_dim, **contrastive) if contrastive else None
        self.intent_mode = intent["mode"] if intent and self.model.intent is not None else None
        self.intent_weight = float(intent["weight"]) if self.intent_mode else 0.0
        self.intent_heads = tuple(intent["heads"]) if self.intent_mode else ()
        if self.intent_mode == "joint" and not self.intent_weight > 0:
            raise ValueError(
                f"intent.weight={self.intent_weight}; expected a weight > 0 (intent.heads=none turns the heads off)."
            )
        self.eval_cfg = evaluation
        self.seen: dict[str, dict] = {}
        self.slices: dict[str, dict] = {}
        self._accumulator: RankingAccumulator | None = None
        self._all_items: torch.Tensor | None = None

    def _choose_loss(self, loss: dict) -> str:
        name = loss.get("name", "auto")
        if name == "auto":
            name = "full" if self.vocab.num_items <= int(loss.get("full_softmax_max_items", 100_000)) else "sampled"
        if name == "sampled":
            probs = self.train_counts.clone()
            probs[0] = 0
            self.sampled = SampledSoftmax(probs / probs.sum(), int(loss.get("num_negatives", 256)))
        elif name == "gbce":
            self.gbce = GBCE(self.vocab.num_items, int(loss.get("num_negatives", 256)), float(loss.get("gbce_t", 0.75)))
        elif name != "full":
            raise ValueError(f"loss.name={name!r}; expected one of ['auto', 'full', 'sampled', 'gbce'].")
        chunk = loss.get("chunk_targets", "auto")
        if chunk != "auto" and not (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0):
            raise ValueError(f"loss.chunk_targets={chunk!r}; expected auto, 0 (no chunks) or a positive whole number.")
        self.chunk_targets = chunk
        self.loss_exclude_seen = bool(loss.get("exclude_seen", False))
        if self.loss_exclude_seen and self.model.bidirectional:
            raise ValueError(
                "loss.exclude_seen=true needs a causal encoder (each target's history is the steps before it); "
                "model.encoder=bert4rec predicts masked steps from both sides. Set loss.exclude_seen=false."
            )
        if self.loss_exclude_seen and name != "full":
            raise ValueError(
                f"loss.exclude_seen=true works with the full softmax only; loss.name resolved to {name!r}. "
                "Set loss.name=full or loss.exclude_seen=false."
            )
        return name

    def loss_chunk(self, device: torch.device) -> int:
        """Targets per chunk of the full softmax (`loss.chunk_targets`; 0: the unchunked loss)."""
        if self.chunk_targets != "auto":
            return int(self.chunk_targets)
        if device.type == "cpu":
            return 128
        return max(256, 2**26 // max(self.vocab.num_items, 1))

    # --- training ---------------------------------------------------------------------------

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.query(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        mask = batch["targets"] > 0
        intent_logits = None
        if self.model.bidirectional:  # bert4rec: masked steps and the slot after the last (models/bert4rec.py)
            queries, targets = cloze_examples(self.model, batch, self.model_cfg.cloze_mask)
        else:
            read = {}
            if self.loss_name == "full":
                # One item-tower pass a step: the catalogue's vectors feed the softmax, and the steps and past
                # purchases read their rows (as serving reads the served table's rows).
                all_items = self.model.item_embeddings()
                read = {"step_items": all_items[batch["item_ids"]], "past_items": all_items[batch["past_purchase_ids"]]}
            joint = self.intent_mode == "joint"
            states = self.model.query_states(batch, intent=joint, **read)  # (B, T, D)
            if joint:
                states, intent_logits = states  # and the intent heads' logits at every position
            queries, targets = states[mask], batch["targets"][mask]  # (M, D), (M,)
        scale = self.model.logit_scale()
        if self.loss_name == "full":
            all_items = self.model.item_embeddings() if self.model.bidirectional else all_items
            seen = causal_history(batch["item_ids"], mask) if self.loss_exclude_seen else None
            chunk = self.loss_chunk(queries.device)
            if chunk:
                loss = chunked_softmax(queries, targets, all_items, scale, seen, chunk)
            else:
                loss = full_softmax(queries, targets, all_items, scale, seen)
        elif self.loss_name == "sampled":
            loss = self.sampled(queries, targets, self.model.item_embeddings, scale)
        else:
            loss = self.gbce(queries, targets, self.model.item_embeddings, scale)
        # Logged without a host synchronisation: weights by windows (known on the host), the target
        # count as a tensor summed on the device.
        windows = len(batch["targets"])
        if self.attribute_loss > 0:
            attribute = attribute_prediction_loss(self.model.item_tower, queries, targets)
            self.log("train/attribute", attribute, batch_size=windows)
            loss = loss + self.attribute_loss * attribute
        if intent_logits is not None:
            intent, parts = intent_loss(intent_logits, batch, self.intent_heads)
            for head, value in parts.items():
                self.log(f"train/intent_{head}", value, batch_size=windows)
            loss = loss + self.intent_weight * intent
        if self.contrastive is not None:
            contrastive = self.contrastive(self.model, batch, STEP_ARRAYS)
            self.log("train/contrastive", contrastive, batch_size=windows)
            loss = loss + contrastive
        self.log("train/loss", loss, prog_bar=True, batch_size=windows)
        self.log("train/targets", mask.sum().float(), reduce_fx="sum", on_step=False, on_epoch=True, batch_size=windows)
        return loss

    def build_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """AdamW over three groups: weight matrices (optim.weight_decay), embedding tables
        (optim.embedding_weight_decay), norms and biases (no decay)."""
        cfg = self.hparams.optim
        decay, embeddings, no_decay = [], [], []
        for name, parameter in self.named_parameters():
            if parameter.ndim < 2 or "norm" in name:
                no_decay.append(parameter)
            elif "embedding" in name:
                embeddings.append(parameter)
            else:
                decay.append(parameter)
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg["weight_decay"]},
                {"params": embeddings, "weight_decay": cfg.get("embedding_weight_decay", 0.0)},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=lr,
            # One fused kernel per step over every tensor (CPU and CUDA): 6.4 -> 1.3 ms a step for a
            # 12k-item model on 2 cores, against a loop of small ops per parameter.
            fused=all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in self.parameters()),
        )

    def configure_optimizers(self):
        cfg = self.hparams.optim
        lr, warmup_steps = scaled_lr_and_warmup(cfg)
        optimizer = self.build_optimizer(lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(warmup_steps, total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if cfg.get("schedule", "cosine") == "constant":
                return 1.0
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- evaluation -------------------------------------------------------------------------

    def set_eval_sets(self, eval_sets: dict[str, tuple]) -> None:
        """Slice masks and histories of each evaluation split (from the DataModule)."""
        for name, (_, slices, seen) in eval_sets.items():
            self.slices[name] = slices
            self.seen[name] = seen

    def _start(self, split: str) -> None:
        self._accumulator = make_accumulator(
            self.eval_cfg, self.vocab.num_items, self.train_counts.cpu().numpy(), self.seen.get(split)
        )
        with torch.no_grad():
            self._all_items = self.model.item_embeddings()

    def catalogue_scores(self, batch: dict[str, torch.Tensor], items: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N + 1) the model's score of every catalogue item for each query (what evaluation ranks and
        serving's retrieval returns): query . item * logit scale."""
        items = self.model.item_embeddings() if items is None else items
        return self.model.query(batch) @ items.T * self.model.logit_scale()

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Evaluation batches keep a host copy of their example indexes (slices and masks are looked up
        with it), so scoring on a GPU never copies them back."""
        if isinstance(batch, dict) and "example_index" in batch:
            batch["example_index_host"] = batch["example_index"].numpy()
        return batch

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        with torch.no_grad():
            scores = self.catalogue_scores(batch, self._all_items)
        index = batch.get("example_index_host")
        index = batch["example_index"].cpu().numpy() if index is None else index
        scores = mask_scores(
            scores.float(), index, self.seen.get(split), bool(self.eval_cfg.get("exclude_seen", False))
        )
        slices = {name: mask[index] for name, mask in self.slices[split].items()}
        self._accumulator.add(scores, batch["target"], slices, index)

    def _end(self, split: str) -> dict[str, float]:
        accumulator = self._accumulator
        if self.trainer is not None and self.trainer.world_size > 1:
            # Each rank scored a shard of the examples: add the sums of every rank.
            states = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, accumulator.state())
            accumulator = make_accumulator(
                self.eval_cfg, self.vocab.num_items, self.train_counts.cpu().numpy(), self.seen.get(split)
            )
            for state in states:
                accumulator.merge(state)
        result = accumulator.result(split)
        for key, value in result.items():
            self.log(key, float(value), rank_zero_only=False, sync_dist=False)
        self.last_results = getattr(self, "last_results", {})
        self.last_results.update(result)
        self.last_ranks = getattr(self, "last_ranks", {})
        self.last_ranks[split] = accumulator.ranks()  # per-example, for significance tests (ranks.npz)
        return result

    def on_validation_epoch_start(self) -> None:
        self._start("val")

    def validation_step(self, batch, batch_index):
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._end("val")

    def on_test_epoch_start(self) -> None:
        self._start("test")

    def test_step(self, batch, batch_index):
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._end("test")
