"""The two exported networks and their ONNX export: the query encoder and the ranker.

Both read item *vectors* rather than item ids, so the catalogue lives in one served table
(`item_embeddings.npy`) and items added after training are read like any other:

    query_encoder(step_items (B,T,D), step_mask (B,T), event_types, gap_buckets, channels, new_session (B,T),
                  device_type, hour, day_of_week, referrer, region, gap_bucket, loyalty (B,),
                  past_items (B,P,D), past_mask (B,P)
                  [, step_attributes (B,T,A,D): attribute-fusion encoders only])    -> query (B,D)
    ranker(query (B,D), candidates (B,C,D), candidate_codes (B,C,F), context (B,K), retrieval_scores (B,C))
                                                                                   -> logits (B,C)

Codes are the prepared data's (`vocab.json`); B, T, P and C are dynamic axes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from intentrec.models.context import CONTEXT_FIELDS
from intentrec.models.intent import NOW_COLUMNS
from intentrec.serving.intent import OUTPUTS as INTENT_OUTPUTS

STEP_INPUTS = ("event_types", "gap_buckets", "channels", "new_session")
# Request context in CONTEXT_FIELDS order (device type, hour, day of week, referrer, region, gap), then loyalty.
CONTEXT_INPUTS = ("device_type", "hour", "day_of_week", "referrer", "region", "gap_bucket")
QUERY_INPUTS = ("step_items", "step_mask", *STEP_INPUTS, *CONTEXT_INPUTS, "loyalty", "past_items", "past_mask")
# Read after the others by an encoder with model.reads_attributes (dif_sr): each step's attribute vectors.
ATTRIBUTE_INPUT = "step_attributes"


def query_input_names(model) -> tuple[str, ...]:
    """The query encoder's inputs for this TwoTower, in order."""
    return (*QUERY_INPUTS, ATTRIBUTE_INPUT) if model.reads_attributes else QUERY_INPUTS


RANKER_INPUTS = ("query", "candidates", "candidate_codes", "context", "retrieval_scores")
OPSET = 17


def query_output_names(model) -> tuple[str, ...]:
    """The query encoder's outputs: the query, and the intent heads' logits when the model has them."""
    if model.intent is None:
        return ("query",)
    return ("query", *INTENT_OUTPUTS) if model.intent.category is not None else ("query", INTENT_OUTPUTS[0])


class QueryEncoder(nn.Module):
    """The query tower of a trained TwoTower with the item vectors given as inputs; with intent heads, also
    their logits at the request's moment (the request's context is the shopper's current one)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, step_items, step_mask, event_types, gap_buckets, channels, new_session, *rest):
        step_attributes = None
        if self.model.reads_attributes:
            *rest, step_attributes = rest
        *context, loyalty, past_items, past_mask = rest
        T = step_mask.shape[1]
        batch = {
            "item_ids": step_mask,
            "event_types": event_types,
            "gap_buckets": gap_buckets,
            "channels": channels,
            "new_session": new_session,
            "loyalty": loyalty,
            "past_purchase_ids": past_mask,
        }
        # The request's context is the context of the step being predicted: the same at every position
        # (only the last real position is read, and the encoder is causal).
        for name, value in zip(CONTEXT_FIELDS, context):
            batch[name] = value.unsqueeze(1).expand(-1, T)
        if self.model.intent is None:
            return self.model.query(batch, step_items, past_items, step_attributes)
        for field, column in NOW_COLUMNS.items():
            batch[column] = batch[field]
        query, logits = self.model.query(batch, step_items, past_items, step_attributes, intent=True)
        return (query, logits["binary"], logits["category"]) if "category" in logits else (query, logits["binary"])


class RankerScorer(nn.Module):
    """The ranker of a RankerTask, reading candidate vectors and feature codes as inputs."""

    def __init__(self, ranker):
        super().__init__()
        self.ranker = ranker.eval()

    def forward(self, query, candidates, candidate_codes, context, retrieval_scores):
        relative = retrieval_scores - retrieval_scores[:, :1]  # as in training: the best candidate is 0
        return self.ranker(query, candidates, candidate_codes, context, relative)


def example_query_inputs(
    B: int, T: int, P: int, D: int, sizes: dict[str, int], generator=None, attributes: int | None = None
) -> tuple:
    """Random, right-padded query-encoder inputs (for export tracing and the equality tests); with
    `attributes` = A (not None), step_attributes (B, T, A, D) last."""
    g = generator or torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    past_lengths = torch.randint(0, P + 1, (B,), generator=g)
    past_mask = (torch.arange(P)[None, :] < past_lengths[:, None]).long()

    def codes(size, shape):  # real codes start at 1; a vocabulary of size 1 has only 0 (unknown)
        return torch.randint(min(1, size - 1), max(size, 1), shape, generator=g)

    steps = [codes(sizes[name], (B, T)) * mask for name in ("event_types", "gap_buckets", "channels")]
    steps.append(torch.randint(0, 2, (B, T), generator=g) * mask)
    context = [codes(sizes[name], (B,)) for name in CONTEXT_FIELDS]
    inputs = (
        torch.randn(B, T, D, generator=g) * mask.unsqueeze(-1),
        mask,
        *steps,
        *context,
        codes(3, (B,)),
        torch.randn(B, P, D, generator=g) * past_mask.unsqueeze(-1),
        past_mask,
    )
    if attributes is None:
        return inputs
    return (*inputs, torch.randn(B, T, attributes, D, generator=g) * mask[..., None, None])


def export_query_encoder(model, path: Path, sizes: dict[str, int], max_seq_len: int, past: int) -> None:
    encoder = QueryEncoder(model)
    attributes = model.encoder.num_attributes if model.reads_attributes else None
    inputs = example_query_inputs(2, max_seq_len, max(past, 1), model.cfg.embedding_dim, sizes, attributes=attributes)
    axes = {"step_items": {0: "B", 1: "T"}, "past_items": {0: "B", 1: "P"}, "past_mask": {0: "B", 1: "P"}}
    axes[ATTRIBUTE_INPUT] = {0: "B", 1: "T"}
    axes.update({name: {0: "B", 1: "T"} for name in ("step_mask", *STEP_INPUTS)})
    axes.update({name: {0: "B"} for name in (*CONTEXT_INPUTS, "loyalty")})
    outputs = query_output_names(model)
    axes.update({name: {0: "B"} for name in outputs})
    names = query_input_names(model)
    _export(encoder, inputs, path, names, outputs, {k: v for k, v in axes.items() if k in names or k in outputs})


def _export(module, inputs: tuple, path: Path, input_names, output, axes: dict) -> None:
    """TorchScript-based ONNX export (opset OPSET) with the given dynamic axes; `output`: a name or names."""
    with torch.no_grad():
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(input_names),
            output_names=[output] if isinstance(output, str) else list(output),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def example_ranker_inputs(
    B: int,
    C: int,
    D: int,
    feature_sizes: list[int],
    context_sizes: list[int],
    generator=None,
    feature_widths: list[int] | None = None,
):
    g = generator or torch.Generator().manual_seed(1)
    widths = list(feature_widths) if feature_widths else [1] * len(feature_sizes)
    codes = torch.zeros(B, C, sum(widths), dtype=torch.long)
    start = 0
    for size, width in zip(feature_sizes, widths):
        codes[:, :, start : start + width] = torch.randint(0, max(size, 1), (B, C, width), generator=g)
        start += width
    context = torch.zeros(B, len(context_sizes), dtype=torch.long)
    for f, size in enumerate(context_sizes):
        context[:, f] = torch.randint(0, max(size, 1), (B,), generator=g)
    scores = torch.sort(torch.randn(B, C, generator=g), dim=1, descending=True).values
    return torch.randn(B, D, generator=g), torch.randn(B, C, D, generator=g), codes, context, scores


def export_ranker(
    ranker,
    path: Path,
    embedding_dim: int,
    feature_sizes: list[int],
    context_sizes: list[int],
    feature_widths: list[int] | None = None,
) -> None:
    scorer = RankerScorer(ranker)
    inputs = example_ranker_inputs(2, 8, embedding_dim, feature_sizes, context_sizes, feature_widths=feature_widths)
    axes = {
        "query": {0: "B"},
        "candidates": {0: "B", 1: "C"},
        "candidate_codes": {0: "B", 1: "C"},
        "context": {0: "B"},
        "retrieval_scores": {0: "B", 1: "C"},
        "logits": {0: "B", 1: "C"},
    }
    _export(scorer, inputs, path, RANKER_INPUTS, "logits", axes)
