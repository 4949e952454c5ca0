"""The sequence-aware two-tower model: query tower over events + context, item tower over id + content.

    query (B, D) = fuse(encoder(step embeddings of recent events), context of now)
    item  (N, D) = id embedding + content embeddings
    score (B, N) = query . item          (similarity=dot)
                 = cos(query, item) / t   (similarity=cosine)

Training, export and the FAISS index read the same `similarity`, so what is trained is what is served.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from intentrec.data.features import PURCHASE_EVENTS, event_codes
from intentrec.data.schema import EVENT_TYPES
from intentrec.models.bert4rec import Bert4RecEncoder, slot_query
from intentrec.models.context import ContextEmbedding, ContextFusion
from intentrec.models.dif_sr import DifSrEncoder
from intentrec.models.filter_mix import FilterMixEncoder
from intentrec.models.intent import IntentHeads, now_context, session_counters
from intentrec.models.towers import ENCODERS as BASE_ENCODERS
from intentrec.models.towers import ItemTower, StepEmbedding
from intentrec.training.intent_labels import CART_EVENT_CODES

# Event-type codes (data.schema.EVENT_TYPES order, 1-based) of the purchases (data.features.PURCHASE_EVENTS).
PURCHASE_EVENT_CODES = tuple(event_codes(PURCHASE_EVENTS, ("", *EVENT_TYPES)).tolist())
SIMILARITIES = ("dot", "cosine")
# Query encoders by model.encoder (one module each: models/towers.py, models/filter_mix.py).
ENCODERS = {**BASE_ENCODERS, "filter_mix": FilterMixEncoder, "bert4rec": Bert4RecEncoder, "dif_sr": DifSrEncoder}
ITEM_FEATURES = ("id", "content", "id+content")


@dataclass
class TwoTowerConfig:
    """Model hyper-parameters (`conf/model/*.yaml` documents each)."""

    encoder: str = "transformer"
    embedding_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    max_seq_len: int = 50
    context: str = "concat"
    item_features: str = "id+content"
    id_dropout: float = 0.1
    similarity: str = "dot"
    temperature: float = 0.05
    filter_mix: float = 0.5  # filter_mix and dif_sr encoders: share of the filter branch in each block
    cloze_mask: float = 0.2  # bert4rec encoder: share of the steps masked and predicted in training
    attribute_loss: float = 0.0  # weight of the auxiliary attribute-prediction loss (DIF-SR's lambda; 0 = off)
    intent_heads: bool = False  # intent heads on the query tower (models/intent.py; intent.heads in conf/train.yaml)

    def __post_init__(self):
        for key, allowed in (
            ("encoder", tuple(ENCODERS)),
            ("similarity", SIMILARITIES),
            ("item_features", ITEM_FEATURES),
        ):
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.{key}={getattr(self, key)!r}; expected one of {list(allowed)}.")
        if not 0.0 < self.cloze_mask < 1.0:
            raise ValueError(f"model.cloze_mask={self.cloze_mask}; expected a share between 0 and 1.")
        if not self.attribute_loss >= 0.0:
            raise ValueError(f"model.attribute_loss={self.attribute_loss}; expected a weight >= 0 (0 turns it off).")
        if self.intent_heads and self.encoder == "bert4rec":
            raise ValueError(
                "intent heads read the state at each step, which a bidirectional encoder (bert4rec) does not have; "
                "use a causal encoder (transformer, gru, mean, filter_mix, dif_sr) or intent.heads=none."
            )
        if self.embedding_dim % self.num_heads:
            raise ValueError(
                f"model.embedding_dim={self.embedding_dim} must be divisible by model.num_heads={self.num_heads}."
            )


@dataclass
class Vocabulary:
    """Sizes the model's embedding tables need, read from the prepared data."""

    num_items: int
    num_event_types: int
    num_gap_buckets: int
    num_channels: int
    context_sizes: dict[str, int]
    feature_sizes: list[int]
    feature_widths: list[int] | None = None  # columns of each item feature's codes (bags); None = 1 each
    num_categories: int = 0  # category codes (0 = unknown) the next-category intent head predicts among


class TwoTower(nn.Module):
    """Query tower + item tower. Batch tensors are right-padded (B, T); see `training.datamodule`."""

    def __init__(self, cfg: TwoTowerConfig, vocab: Vocabulary, feature_codes: torch.Tensor | None):
        super().__init__()
        self.cfg = cfg
        use_content = (
            cfg.item_features in ("content", "id+content") and feature_codes is not None and feature_codes.shape[1] > 0
        )
        self.item_tower = ItemTower(
            vocab.num_items,
            cfg.embedding_dim,
            feature_codes if use_content else None,
            vocab.feature_sizes if use_content else [],
            use_id=cfg.item_features != "content",
            id_dropout=cfg.id_dropout,
            feature_widths=vocab.feature_widths if use_content else None,
        )
        self.steps = StepEmbedding(cfg.embedding_dim, vocab.num_event_types, vocab.num_gap_buckets, vocab.num_channels)
        self.encoder = ENCODERS[cfg.encoder](
            embedding_dim=cfg.embedding_dim,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            dropout=cfg.dropout,
            max_seq_len=cfg.max_seq_len,
            filter_mix=cfg.filter_mix,
            num_attributes=len(self.item_tower.feature_embeddings),
        )
        # A bidirectional encoder has no state per position that predicts the next step: its queries come
        # from [mask] slots (models/bert4rec.py), and query_states does not apply.
        self.bidirectional = getattr(self.encoder, "bidirectional", False)
        # An attribute-fusion encoder (dif_sr) reads each step's attribute vectors beside its step vector.
        self.reads_attributes = getattr(self.encoder, "reads_attributes", False)
        self.context = ContextEmbedding(cfg.embedding_dim, vocab.context_sizes) if cfg.context != "none" else None
        self.fusion = ContextFusion(cfg.context, cfg.embedding_dim, cfg.dropout)
        # Built last, from a side copy of the random state: the tower's initial weights and every later draw
        # (dropout, augmentations) are the same with and without heads.
        self.intent = None
        if cfg.intent_heads:
            with torch.random.fork_rng(devices=[]):
                self.intent = IntentHeads(cfg.embedding_dim, vocab.num_categories, self.context is not None)

    def purchase_summary(
        self, batch: dict[str, torch.Tensor], step_items: torch.Tensor, past_items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean embedding of purchases before the window and in it up to each step: (B, T, D)."""
        past_ids = batch["past_purchase_ids"]  # (B, P), 0 = none
        past_items = self.item_embeddings(past_ids) if past_items is None else past_items * (past_ids > 0).unsqueeze(-1)
        past = past_items.sum(dim=1, keepdim=True)  # (B, 1, D)
        past_count = (past_ids > 0).sum(dim=1, keepdim=True).unsqueeze(-1)  # (B, 1, 1)
        bought = torch.zeros_like(batch["event_types"], dtype=torch.bool)
        for code in PURCHASE_EVENT_CODES:
            bought = bought | (batch["event_types"] == code)  # not in place: exported to ONNX
        running = torch.cumsum(step_items * bought.unsqueeze(-1), dim=1)  # (B, T, D)
        count = torch.cumsum(bought.long(), dim=1).unsqueeze(-1) + past_count
        return (past + running) / count.clamp(min=1)

    def query_states(
        self,
        batch: dict[str, torch.Tensor],
        step_items: torch.Tensor | None = None,
        past_items: torch.Tensor | None = None,
        step_attributes: torch.Tensor | None = None,
        intent: bool = False,
    ):
        """Queries at every position (B, T, D): position t predicts the step after t.

        Serving passes the item vectors itself (`step_items` (B, T, D), `past_items` (B, P, D)) from
        the served embedding table, so items added after training are read like any other; training
        reads the same vectors (`item_embeddings`: normalized for cosine, as the table is); then
        only `item_ids > 0` and `past_purchase_ids > 0` (which steps are real) are used from the batch.
        An encoder that reads attributes takes them the same way (`step_attributes` (B, T, A, D)).

        With `intent` and intent heads, returns (queries, the intent logits at every position:
        `models.intent.IntentHeads`); the batch then carries the current step's context (`now_*`,
        models.intent.NOW_COLUMNS).
        """
        if self.bidirectional:
            raise ValueError("a bidirectional encoder (bert4rec) has no causal per-position queries; use query()")
        states, summary = self._sequence_states(batch, step_items, past_items, step_attributes)
        context = self.context(batch, summary) if self.context is not None else None
        queries = self.fusion(states, context)
        queries = F.normalize(queries, dim=-1) if self.cfg.similarity == "cosine" else queries
        if not intent or self.intent is None:
            return queries
        return queries, self.intent(self._intent_inputs(batch, states, summary))

    def intent_inputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the intent heads read at every position (B, T, width): the encoder's state, the context of
        the current step and the session counters (models.intent)."""
        states, summary = self._sequence_states(batch, None, None, None)
        return self._intent_inputs(batch, states, summary)

    def _intent_inputs(self, batch, states, summary) -> torch.Tensor:
        now = self.context(now_context(batch), summary) if self.context is not None else None
        return self.intent.inputs(states, now, session_counters(batch, CART_EVENT_CODES))

    def _sequence_states(self, batch, step_items, past_items, step_attributes):
        """The encoder's states (B, T, D) and the purchase summary (B, T, D) (None without context)."""
        mask = batch["item_ids"] > 0
        if step_items is None:
            step_items = self.item_embeddings(batch["item_ids"])  # (B, T, D); the served table's vectors
        steps = self.steps(batch, step_items)
        if self.reads_attributes:
            if step_attributes is None:
                step_attributes = self.item_tower.attribute_vectors(batch["item_ids"])  # (B, T, A, D)
            states = self.encoder(steps, mask, step_attributes)
        else:
            states = self.encoder(steps, mask)  # (B, T, D)
        summary = self.purchase_summary(batch, step_items, past_items) if self.context is not None else None
        return states, summary

    def query(
        self,
        batch: dict[str, torch.Tensor],
        step_items: torch.Tensor | None = None,
        past_items: torch.Tensor | None = None,
        step_attributes: torch.Tensor | None = None,
        intent: bool = False,
    ):
        """The query of each sequence's last real step: (B, D) (bert4rec: of the [mask] slot after it).
        With `intent` (and intent heads): (query, the intent logits at that step: {"binary": (B, 3), ...})."""
        if self.bidirectional:
            return slot_query(self, batch, step_items, past_items)
        states = self.query_states(batch, step_items, past_items, step_attributes, intent=intent)
        last = (batch["item_ids"] > 0).sum(dim=1).clamp(min=1) - 1  # (B,)
        rows = torch.arange(last.shape[0], device=last.device)
        if intent and self.intent is not None:
            states, logits = states
            return states[rows, last], {name: values[rows, last] for name, values in logits.items()}
        return states[rows, last]

    def item_embeddings(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Item-side vectors (N, D) for all items, or (..., D) for the given ids; normalized for cosine."""
        items = self.item_tower.all_items() if item_ids is None else self.item_tower(item_ids)
        return F.normalize(items, dim=-1) if self.cfg.similarity == "cosine" else items

    def logit_scale(self) -> float:
        """Multiply query . item by this to get logits (1/temperature for cosine)."""
        return 1.0 / self.cfg.temperature if self.cfg.similarity == "cosine" else 1.0
