"""Second stage: train the ranker on the retrieval model's candidates, and evaluate the re-ranked lists.

Candidates are the top `ranker.num_candidates` items of the trained (frozen) two-tower for examples
of the training split; an example whose target is not among them teaches the ranker nothing and is
left out (never injected: the ranker would learn to spot the odd one). The ranker is trained with a
softmax over each example's candidates. In evaluation the ranker re-orders the top candidates; the
rest of the catalogue keeps its retrieval order below them, so metrics stay full-catalogue.
"""

from __future__ import annotations

import logging
from dataclasses import fields

import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from intentrec import progress
from intentrec.models.context import CONTEXT_FIELDS
from intentrec.models.ranker import Ranker, RankerConfig
from intentrec.training.datamodule import ArrayDataset, BatchIndexSampler, evaluation_examples, read_split
from intentrec.training.metrics import make_accumulator, mask_scores

log = logging.getLogger(__name__)


def last_step(batch: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """(B, T) -> (B,) value at each row's last real step (its context is the request's)."""
    last = (batch["item_ids"] > 0).sum(dim=1).clamp(min=1) - 1
    return batch[name][torch.arange(len(last)), last]


def context_codes(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, K) context of the request: the CONTEXT_FIELDS at the last step, then loyalty."""
    return torch.stack([last_step(batch, name) for name in CONTEXT_FIELDS] + [batch["loyalty"]], dim=1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: value.to(device, non_blocking=True) for name, value in batch.items()}


@torch.no_grad()
def retrieve(
    model, arrays: dict[str, np.ndarray], num_candidates: int, batch_size: int = 512, device: torch.device | None = None
) -> dict[str, np.ndarray]:
    """Top candidates of the two-tower for every example: queries, candidates, scores, context codes.

    Runs on `device` (default: where the model is); the results stay there until the last batch and
    come to the host once."""
    device = device or next(model.parameters()).device
    model.eval().to(device)
    items = model.item_embeddings()
    scale = model.logit_scale()
    dataset = ArrayDataset(arrays, trim=True)
    out = {"query": [], "candidates": [], "scores": [], "context": []}
    for start in progress.bar(range(0, len(dataset), batch_size), desc="ranker candidates"):
        batch = to_device(dataset[np.arange(start, min(start + batch_size, len(dataset)))], device)
        query = model.query(batch)
        scores = query @ items.T * scale
        scores[:, 0] = float("-inf")
        top = torch.topk(scores, num_candidates, dim=1)
        out["query"].append(query)
        out["candidates"].append(top.indices)
        out["scores"].append(top.values)
        out["context"].append(context_codes(batch))
    return {name: torch.cat(parts).cpu().numpy() for name, parts in out.items()}


class RankerTask(pl.LightningModule):
    """Listwise training of the ranker over frozen retrieval candidates.

    Args:
        ranker: RankerConfig fields.
        embedding_dim: D of the retrieval towers.
        context_sizes: sizes of the K context fields (CONTEXT_FIELDS then loyalty).
        feature_sizes: sizes of the item features.
        item_vectors: (N, D) frozen retrieval item embeddings (what the index stores).
        feature_codes: (N, F) item feature codes (F = the sum of feature_widths).
        lr: learning rate.
        feature_widths: columns of each item feature (more than 1: a bag of codes); default 1 each.
    """

    def __init__(
        self,
        ranker: dict,
        embedding_dim: int,
        context_sizes: list[int],
        feature_sizes: list[int],
        item_vectors: torch.Tensor,
        feature_codes: torch.Tensor,
        lr: float = 1e-3,
        feature_widths: list[int] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["item_vectors", "feature_codes"])
        self.ranker = Ranker(RankerConfig(**ranker), embedding_dim, context_sizes, feature_sizes, feature_widths)
        self.register_buffer("item_vectors", item_vectors.detach().clone())
        self.register_buffer("feature_codes", feature_codes.long().clone())

    def forward(self, query, candidates, retrieval_scores, context):
        """query (B, D), candidates (B, C) ids, retrieval_scores (B, C), context (B, K) -> logits (B, C)."""
        relative = (retrieval_scores - retrieval_scores[:, :1]).float()  # scale-free: the best candidate is 0
        return self.ranker(query, self.item_vectors[candidates], self.feature_codes[candidates], context, relative)

    def training_step(self, batch, batch_index):
        logits = self(batch["query"], batch["candidates"], batch["scores"], batch["context"])
        loss = F.cross_entropy(logits, batch["label"])
        self.log("ranker/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.ranker.parameters(), lr=self.hparams.lr, weight_decay=0.01)


def train_ranker(
    retrieval, datamodule, cfg: dict, seed: int, run_dir, device: torch.device | None = None
) -> tuple[RankerTask, dict]:
    """Fit the ranker on candidates of training examples, on `device` (the CPU by default; the
    retrieval run's GPU when it had one); returns the task (on the CPU) and a summary."""
    device = torch.device(device or "cpu")
    model = retrieval.model
    train = read_split(datamodule.data.directory / "train.parquet")
    arrays, _, _ = evaluation_examples(
        train,
        datamodule.max_seq_len,
        datamodule.past_purchases,
        datamodule.data.padded("category_idx"),
        datamodule.train_counts,
        5,
    )
    rng = np.random.default_rng(seed)
    size = len(arrays["target"])
    chosen = np.sort(rng.choice(size, min(size, int(cfg["max_train_examples"])), replace=False))
    arrays = {name: values[chosen] for name, values in arrays.items()}
    retrieved = retrieve(model, arrays, int(cfg["num_candidates"]), device=device)
    hit = retrieved["candidates"] == arrays["target"][:, None]
    usable = hit.any(axis=1)
    examples = {
        "query": retrieved["query"][usable].astype(np.float32),
        "candidates": retrieved["candidates"][usable].astype(np.int64),
        "scores": retrieved["scores"][usable].astype(np.float32),
        "context": retrieved["context"][usable].astype(np.int64),
        "label": hit[usable].argmax(axis=1).astype(np.int64),
    }
    with torch.no_grad():
        item_vectors = model.item_embeddings()
    vocab = retrieval.vocab
    context_sizes = [vocab.context_sizes[name] for name in CONTEXT_FIELDS] + [3]
    codes = (
        model.item_tower.feature_codes
        if model.item_tower.feature_codes is not None
        else torch.zeros(vocab.num_items + 1, 0)
    )
    ranker_fields = {f.name for f in fields(RankerConfig)}
    task = RankerTask(
        {k: v for k, v in cfg.items() if k in ranker_fields},
        model.cfg.embedding_dim,
        context_sizes,
        [e.num_embeddings for e in model.item_tower.feature_embeddings],
        item_vectors,
        codes,
        lr=float(cfg["lr"]),
        feature_widths=list(model.item_tower.feature_widths) if model.item_tower.feature_codes is not None else [],
    )
    # The same batch-at-a-time loading as retrieval training: one fancy index per batch.
    sampler = BatchIndexSampler(len(examples["label"]), int(cfg["batch_size"]), shuffle=True, seed=seed)
    loader = torch.utils.data.DataLoader(ArrayDataset(examples), batch_size=None, sampler=sampler)
    trainer = pl.Trainer(
        max_epochs=int(cfg["epochs"]),
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress.enabled(),
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )
    trainer.fit(task, loader)
    trainer.save_checkpoint(str(run_dir / "checkpoints" / "ranker.ckpt"))
    summary = {
        "train_examples": int(usable.sum()),
        "candidate_recall": float(usable.mean()),
        "num_candidates": int(cfg["num_candidates"]),
    }
    log.info(
        "ranker: %d training examples (target among the top %d candidates for %.1f%%)",
        summary["train_examples"],
        summary["num_candidates"],
        100 * summary["candidate_recall"],
    )
    model.cpu()
    return task.eval().cpu(), summary


@torch.no_grad()
def evaluate_reranked(
    retrieval,
    ranker: RankerTask,
    datamodule,
    split: str,
    evaluation: dict,
    num_candidates: int,
    ranks: dict | None = None,
    device: torch.device | None = None,
) -> dict:
    """Full-catalogue metrics of retrieval -> ranker: the top candidates in ranker order, then the rest.
    `ranks[f"rerank_{split}"]` receives each example's rank counts when a dict is given. Runs on
    `device` (the CPU by default) without bringing anything to the host per batch."""
    device = torch.device(device or "cpu")
    model = retrieval.model.eval().to(device)
    ranker = ranker.to(device)
    batch_arrays, slices, seen = datamodule.eval_sets[split]
    items = model.item_embeddings()
    scale = model.logit_scale()
    accumulator = make_accumulator(evaluation, model.item_tower.num_items, datamodule.train_counts, seen)
    dataset = ArrayDataset({**batch_arrays, "example_index": np.arange(len(batch_arrays["target"]))}, trim=True)
    exclude = bool(evaluation.get("exclude_seen", False))
    for start in progress.bar(range(0, len(dataset), 512), desc=f"rerank {split}"):
        batch = dataset[np.arange(start, min(start + 512, len(dataset)))]
        index = batch["example_index"].numpy()
        batch = to_device(batch, device)
        query = model.query(batch)
        scores = mask_scores((query @ items.T * scale).double(), index, seen, exclude)
        top = torch.topk(scores, num_candidates, dim=1)
        logits = ranker(query, top.indices, top.values, context_codes(batch)).double()
        logits = torch.where(torch.isfinite(top.values), logits, torch.full_like(logits, float("-inf")))
        # Above every retrieval score, in ranker order; excluded items stay at -inf.
        scores.scatter_(1, top.indices, torch.where(torch.isfinite(logits), 1e6 + logits, logits))
        accumulator.add(scores, batch["target"], {name: mask[index] for name, mask in slices.items()}, index)
    if ranks is not None:
        ranks[f"rerank_{split}"] = accumulator.ranks()
    result = accumulator.result(f"rerank_{split}")
    model.cpu()
    ranker.cpu()
    return result
