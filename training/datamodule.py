"""From prepared splits to padded tensors: training windows and evaluation examples.

Every array is built once, vectorised, at setup; a batch is a fancy-index into them (no per-example
Python in the loop). Layout (right-padded, T = max_seq_len):

- inputs (B, T): `item_ids`, `event_types`, `gap_buckets`, `channels`, `new_session` of the steps
  the model reads; position 0 is the oldest step of the window.
- context (B, T): `ctx_*` of the step being predicted at each position (its device, hour, day of
  week, referrer, region and the time-gap bucket since the previous step), known at request time.
- `loyalty` (B,), `past_purchase_ids` (B, P): purchases of the sequence before the window.
- training: `targets` (B, T), the item predicted at each position (0 = not a target).
- evaluation: `target` (B,), the item after the last input step, plus slice labels.

Training windows cover every target of every train row: a row of L steps gives ceil((L - 1) / T)
windows ending at L - 1, L - 1 - T, ...
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch

from intentrec.data.features import NUM_GAP_BUCKETS, purchases_before, time_gap_buckets, window_starts
from intentrec.data.item_content import code_matrix, pad_column, table_arrays
from intentrec.models.intent import LABEL_ARRAYS, NOW_COLUMNS
from intentrec.models.two_tower import PURCHASE_EVENT_CODES, Vocabulary

log = logging.getLogger(__name__)

STEP_INPUTS = ("item_ids", "event_types", "channels", "new_session")
CONTEXT_COLUMNS = {  # batch name -> prepared step column
    "ctx_device_types": "device_types",
    "ctx_hours": "hours",
    "ctx_days_of_week": "days_of_week",
    "ctx_referrers": "referrers",
    "ctx_regions": "regions",
}
# (B, T) arrays of a batch, cut together when a batch is trimmed to its longest sequence.
SEQUENCE_ARRAYS = frozenset(
    {*STEP_INPUTS, "gap_buckets", *CONTEXT_COLUMNS, "ctx_gap_buckets", "targets"}
    | {*LABEL_ARRAYS.values(), *NOW_COLUMNS.values(), "step_index"}  # intent windows (models/intent.py)
)
DEVICE_NAMES = ("unknown", "desktop", "mobile", "tablet")


@dataclass
class Split:
    """A prepared split as flat step arrays plus row offsets."""

    offsets: np.ndarray  # (R + 1,) int64
    steps: dict[str, np.ndarray]  # name -> (S,) flat values
    customer_known: np.ndarray  # (R,) bool
    loyalty: np.ndarray  # (R,) int8

    @property
    def row_of_step(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))


def read_split(path: Path) -> Split:
    table = pq.read_table(path)
    first = table["item_ids"].combine_chunks()
    offsets = first.offsets.to_numpy().astype(np.int64)
    steps = {}
    for name in table.column_names:
        if pa.types.is_list(table.schema.field(name).type):
            column = table[name].combine_chunks()
            steps[name] = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    steps["gap_buckets"] = time_gap_buckets(steps["time_gaps"])
    return Split(
        offsets=offsets - offsets[0],
        steps=steps,
        customer_known=table["customer_known"].to_numpy(),
        loyalty=table["loyalty"].to_numpy().astype(np.int64),
    )


def _gather(values: np.ndarray, index: np.ndarray, valid: np.ndarray, fill=0) -> np.ndarray:
    return np.where(valid, values[np.clip(index, 0, len(values) - 1)], fill)


def _inputs(
    split: Split, row: np.ndarray, start: np.ndarray, length: np.ndarray, T: int, past: int
) -> dict[str, np.ndarray]:
    """Padded inputs and next-step context for windows [start, start + length) of the flat arrays."""
    position = np.arange(T)[None, :]
    index = start[:, None] + position  # (W, T) flat step index
    valid = position < length[:, None]
    batch = {name: _gather(split.steps[name], index, valid) for name in STEP_INPUTS}
    batch["gap_buckets"] = _gather(split.steps["gap_buckets"], index, valid)
    # Context at each position is the one of the step it predicts (index + 1).
    for name, column in CONTEXT_COLUMNS.items():
        batch[name] = _gather(split.steps[column], index + 1, valid)
    batch["ctx_gap_buckets"] = _gather(split.steps["gap_buckets"], index + 1, valid)
    batch["loyalty"] = split.loyalty[row]
    steps = split.steps
    batch["past_purchase_ids"] = purchases_before(
        steps["item_ids"], steps["event_types"], split.offsets, row, start, past, PURCHASE_EVENT_CODES
    )
    return batch


def training_windows(
    split: Split, T: int, past: int, intent: dict[str, np.ndarray] | None = None, every_window: bool = False
) -> dict[str, np.ndarray]:
    """Windows over every train row, with `targets` (W, T) at the positions whose next step is a target.

    With `intent` (per-step labels of the split: training.intent_labels.intent_labels) the windows read every
    step, a row's last one too (it has no next step to predict, but its intent labels: the session ends
    there), and carry the labels (`intent_*`, -1 where none), the current step's context (`now_*`) and
    each position's flat step index (`step_index`, -1 for padding): models/intent.py. A window without a
    next-item target is left out (a training batch of them would have no next-item loss) unless
    `every_window` (the intent evaluation of val and test, which reads every step)."""
    lengths = np.diff(split.offsets)
    # steps that can be predicted (all but the first); with intent, one slot more: past the last step
    slots = np.maximum(lengths - 1, 0) if intent is None else lengths
    per_row = -(-slots // T)  # ceil
    row = np.repeat(np.arange(len(lengths)), per_row)
    k = np.arange(per_row.sum()) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    last_slot = slots[row] - k * T  # last predicted step of the window, relative to the row start
    first_input = window_starts(last_slot, T)
    length = last_slot - first_input
    start = split.offsets[row] + first_input
    batch = _inputs(split, row, start, length, T, past)
    index = start[:, None] + np.arange(T)[None, :] + 1
    valid = np.arange(T)[None, :] < length[:, None]
    valid_next = valid & (index < split.offsets[row + 1][:, None])  # the next step is in the same row
    is_target = _gather(split.steps["target_mask"], index, valid_next, False).astype(bool)
    batch["targets"] = np.where(is_target, _gather(split.steps["item_ids"], index, valid_next), 0)
    keep = batch["targets"].any(axis=1)
    if intent is not None:
        for head, column in LABEL_ARRAYS.items():
            if head in intent:
                batch[column] = _gather(intent[head].astype(np.int64), index - 1, valid, -1)
        for field, column in NOW_COLUMNS.items():
            batch[column] = _gather(split.steps[CONTEXT_COLUMNS[field]], index - 1, valid)
        batch["step_index"] = np.where(valid, index - 1, -1)
    if every_window:
        keep = valid.any(axis=1)
    return {name: values[keep] for name, values in batch.items()}


def evaluation_examples(
    split: Split,
    T: int,
    past: int,
    item_categories: np.ndarray,
    train_counts: np.ndarray,
    rare_max_count: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One example per target step of val/test rows: inputs, slice masks, and each example's history.

    Returns (batch arrays, slices {name: (E,) bool}, seen {"offsets": (E+1,), "items": (H,), "targets": (E,)})
    where seen lists every item of the row before the target (for `exclude_seen` and sampled negatives).
    """
    targets = np.flatnonzero(split.steps["target_mask"])
    row = split.row_of_step[targets]
    position = targets - split.offsets[row]
    keep = position >= 1
    targets, row, position = targets[keep], row[keep], position[keep]
    first_input = window_starts(position, T)
    start = split.offsets[row] + first_input
    batch = _inputs(split, row, start, position - first_input, T, past)
    # _inputs puts the context of step start + length at the last position + 1; the query reads the
    # last real position, whose "next step" is the target: same arrays, nothing more to shift.
    batch["target"] = split.steps["item_ids"][targets]
    item_ids = split.steps["item_ids"]
    device = split.steps["device_types"][targets]
    slices = {"all": np.ones(len(targets), bool)}
    slices["intent_shift"] = _intent_shift(split, targets, item_categories)
    # First step of a new visit: the sequence cannot know the new intent yet, context can.
    slices["session_start"] = split.steps["new_session"][targets].astype(bool)
    slices["cold"] = train_counts[batch["target"]] == 0
    slices["rare"] = (train_counts[batch["target"]] > 0) & (train_counts[batch["target"]] <= rare_max_count)
    for code, name in enumerate(DEVICE_NAMES):
        if code and (device == code).any():
            slices[f"device_{name}"] = device == code
    slices["anonymous"] = ~split.customer_known[row]
    slices["known_customer"] = split.customer_known[row]
    # History before each target (the whole row, not only the window) for exclude_seen.
    seen_lengths = position
    seen_offsets = np.concatenate([[0], np.cumsum(seen_lengths)])
    seen_index = np.repeat(split.offsets[row] - seen_offsets[:-1], seen_lengths) + np.arange(seen_offsets[-1])
    seen = {
        "offsets": seen_offsets,
        "items": item_ids[seen_index],
        "targets": batch["target"],
        "replay": session_replay(split, targets),
    }
    return batch, slices, seen


def session_replay(split: Split, targets: np.ndarray) -> dict[str, np.ndarray]:
    """What each evaluated session did from its first evaluated step to its end (for business metrics).

    Sessions are the runs of steps that `new_session` starts (a row start always starts one). Returns
    example_session/example_step (E,) for the examples (targets) and event_session, event_step,
    event_item, event_type, event_value (price x quantity, 0 when unknown) (F,) for the steps.
    """
    steps = len(split.steps["item_ids"])
    new = split.steps["new_session"].astype(bool).copy()
    starts = split.offsets[:-1]
    new[starts[starts < steps]] = True
    session_of_step = np.cumsum(new) - 1
    session_end = np.append(np.flatnonzero(new)[1:], steps)  # end (exclusive) of each session
    sessions, example_session = np.unique(session_of_step[targets], return_inverse=True)
    first = np.full(len(sessions), steps, np.int64)
    np.minimum.at(first, example_session, targets)
    lengths = session_end[sessions] - first
    event_step = np.repeat(first - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    prices = np.nan_to_num(split.steps["prices"][event_step].astype(np.float64)) if "prices" in split.steps else 0.0
    quantities = (
        np.maximum(split.steps["quantities"][event_step].astype(np.float64), 1) if "quantities" in split.steps else 1.0
    )
    return {
        "num_sessions": np.int64(len(sessions)),
        "example_session": example_session.astype(np.int64),
        "example_step": targets.astype(np.int64),
        "event_session": np.repeat(np.arange(len(sessions)), lengths),
        "event_step": event_step.astype(np.int64),
        "event_item": split.steps["item_ids"][event_step].astype(np.int64),
        "event_type": split.steps["event_types"][event_step].astype(np.int64),
        "event_value": np.zeros(len(event_step)) + prices * quantities,
    }


def _intent_shift(split: Split, targets: np.ndarray, item_categories: np.ndarray) -> np.ndarray:
    """Target category differs from the dominant category of earlier steps of the same session."""
    category = item_categories[split.steps["item_ids"]]
    starts = np.where(split.steps["new_session"].astype(bool), np.arange(len(category)), 0)
    session_start = np.maximum.accumulate(starts)
    out = np.zeros(len(targets), bool)
    for i, t in enumerate(targets):  # eval set only (thousands), never in a training step
        earlier = category[session_start[t] : t]
        earlier = earlier[earlier > 0]
        if len(earlier) and category[t] > 0:
            out[i] = np.bincount(earlier).argmax() != category[t]
    return out


class BatchIndexSampler(torch.utils.data.Sampler):
    """Yields index arrays of one batch each; shuffles per epoch; shards batches across DDP ranks.

    With `lengths`, batches hold examples of similar length so that `ArrayDataset` can trim the
    padding: training shuffles, sorts each pool of `pool_batches` batches by length, cuts it into
    batches and shuffles the batch order; evaluation (no shuffle) simply goes in order of length.

    With `targets` (training targets per example) and `batch_targets` as well, a training batch is
    cut when it would exceed `batch_targets` targets rather than after `batch_size` examples (it
    always holds at least one). Every optimizer step then averages its loss over about the same
    number of targets, as random batches do on average; fixed-size batches of similar length would
    instead give each target of a short-sequence batch a larger share of its step. Budget cuts give
    a different number of batches in each shuffle, while Lightning reads `len()` once and validates
    after that many batches (an epoch one batch short would skip its validation): every epoch is
    therefore brought to epoch 0's count, splitting the batch with the most targets or merging the
    adjacent pair with the fewest, so `len()` holds for every epoch.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        lengths: np.ndarray | None = None,
        pool_batches: int = 50,
        targets: np.ndarray | None = None,
        batch_targets: int | None = None,
    ):
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.lengths, self.pool = lengths, batch_size * pool_batches
        self.targets = targets if lengths is not None and batch_targets else None
        self.batch_targets = int(batch_targets) if self.targets is not None else None
        self._cached: tuple[int, list[np.ndarray]] | None = None
        self._budget_count: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _budget_batches(self, order: np.ndarray) -> list[np.ndarray]:
        """`order` cut into consecutive batches of at most `batch_targets` targets (at least one example each)."""
        counts = self.targets[order]
        batches, start, total = [], 0, 0
        for position, count in enumerate(counts.tolist()):
            if position > start and total + count > self.batch_targets:
                batches.append(order[start:position])
                start, total = position, 0
            total += count
        batches.append(order[start:])
        return batches

    def _fixed_count(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """`batches` (in length order) split or merged to epoch 0's number of budget batches."""
        if self._budget_count is None:  # epoch 0's batches are these when this is epoch 0
            first = (
                batches if self.epoch == 0 else self._budget_batches(self._order(np.random.default_rng([self.seed, 0])))
            )
            self._budget_count = len(first)
        if len(batches) == self._budget_count:  # most epochs: nothing to split or merge
            return batches
        totals = [int(self.targets[b].sum()) for b in batches]
        while len(batches) < self._budget_count:  # split the fullest batch that has two examples
            i = max((j for j in range(len(batches)) if len(batches[j]) > 1), key=totals.__getitem__)
            half = len(batches[i]) // 2
            batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
            totals[i : i + 1] = [int(self.targets[b].sum()) for b in batches[i : i + 2]]
        while len(batches) > self._budget_count:  # merge the adjacent pair with the fewest targets
            i = min(range(len(batches) - 1), key=lambda j: totals[j] + totals[j + 1])
            batches[i : i + 2] = [np.concatenate(batches[i : i + 2])]
            totals[i : i + 2] = [totals[i] + totals[i + 1]]
        return batches

    def _batches(self) -> list[np.ndarray]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        batches = self._make_batches()
        self._cached = (self.epoch, batches)
        return batches

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch's example order: shuffled (training), then sorted by length within each pool."""
        order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
        if self.lengths is not None and self.shuffle:
            pools = [order[i : i + self.pool] for i in range(0, self.size, self.pool)]
            order = np.concatenate([pool[np.argsort(self.lengths[pool], kind="stable")] for pool in pools])
        elif self.lengths is not None:
            order = np.argsort(self.lengths, kind="stable")
        return order

    def _make_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self._order(rng)
        if self.batch_targets is not None and self.shuffle:
            batches = self._fixed_count(self._budget_batches(order))
        else:
            batches = [order[i : i + self.batch_size] for i in range(0, self.size, self.batch_size)]
        if self.lengths is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world_size > 1 and self.shuffle:
            # Training: every rank takes the same number of batches (DDP steps in lockstep); the
            # last few batches are repeated on ranks that would otherwise run short.
            per_rank = -(-len(batches) // self.world_size)
            batches = [batches[(self.rank + i * self.world_size) % len(batches)] for i in range(per_rank)]
        elif self.world_size > 1:
            # Evaluation: an exact partition, so every example is counted once when ranks add up.
            batches = batches[self.rank :: self.world_size]
        return batches

    def skip(self, epoch: int, batches: int) -> None:
        """The next iteration of `epoch` starts after its first `batches` batches (a resumed mid-epoch run)."""
        self._skip = (int(epoch), int(batches))

    def __iter__(self):
        batches = self._batches()
        skip = getattr(self, "_skip", None)
        if skip is not None and skip[0] == self.epoch:
            self._skip = None
            return iter(batches[skip[1] :])
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())


class ResumableLoader(torch.utils.data.DataLoader):
    """The training DataLoader, checkpointed by Lightning: its epoch and how many of the epoch's batches
    were trained (`consumed`, kept current by `training.train.TrainedBatches`). A run resumed from a
    checkpoint written mid-epoch goes on with the batches of that epoch it had not trained, instead of
    starting the epoch's order again (the order is a function of seed and epoch, so it is the same)."""

    consumed = 0

    def state_dict(self) -> dict:
        return {"epoch": int(self.sampler.epoch), "consumed": int(self.consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.skip(state["epoch"], state["consumed"])


class ArrayDataset(torch.utils.data.Dataset):
    """`dataset[index_array]` -> a batch dict of tensors (int64 for ids/codes; floats keep their dtype).

    With `trim` (the default), the (B, T) step arrays are cut after the batch's longest sequence:
    steps are right padded and the encoders are causal, so the outputs of real steps do not change,
    while a random batch of short sessions skips most of the padding (on YOOCHOOSE the longest of 128
    random windows averages 23 of 50 steps).
    """

    def __init__(self, arrays: dict[str, np.ndarray], trim: bool = True):
        self.arrays = arrays
        self.size = len(next(iter(arrays.values())))
        self.trim = trim and "item_ids" in arrays

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        width = None
        if self.trim:
            width = max(1, int((self.arrays["item_ids"][index] > 0).sum(axis=1).max(initial=1)))
        return {
            name: torch.from_numpy(
                np.ascontiguousarray(
                    values[index, :width] if width and name in SEQUENCE_ARRAYS else values[index]
                ).astype(values.dtype if values.dtype.kind == "f" else np.int64)
            )
            for name, values in self.arrays.items()
        }


class IndexDataset(torch.utils.data.Dataset):
    """`dataset[index_array]` -> {"index": (B,) int64, "width": ()}: a batch left to be assembled on the
    device (`DeviceArrays`) from the split held there. The width (the batch's longest window, as
    `ArrayDataset` trims) comes from lengths kept on the host, so assembling never waits on the device."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.lengths = (arrays["item_ids"] > 0).sum(axis=1)
        self.size = len(self.lengths)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        width = max(1, int(self.lengths[index].max(initial=1)))
        return {"index": torch.from_numpy(np.asarray(index, dtype=np.int64)), "width": torch.tensor(width)}


class DeviceArrays:
    """A split's arrays as tensors on one device; `batch(index, width)` gathers a batch there, equal to
    `ArrayDataset(arrays)[index]` (same keys, values, dtypes and trimming): one small copy of the
    indexes a step instead of a copy of every batch tensor."""

    def __init__(self, arrays: dict[str, np.ndarray], device: torch.device):
        self.device = device
        self.tensors = {
            name: torch.from_numpy(np.ascontiguousarray(values).astype(values.dtype if values.dtype.kind == "f" else np.int64)).to(device)
            for name, values in arrays.items()
        }  # fmt: skip

    def batch(self, index: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
        index = index.to(self.device, non_blocking=True)
        return {
            name: (values.index_select(0, index)[:, :width] if name in SEQUENCE_ARRAYS else values.index_select(0, index))
            for name, values in self.tensors.items()
        }  # fmt: skip


def _largest_code(column: np.ndarray) -> int:
    """The largest code of an items.parquet code column (codes, or bags of codes)."""
    if column.dtype == object:
        return max((int(bag.max()) for bag in column if len(bag)), default=0)
    return int(np.max(column, initial=0))


@dataclass
class PreparedData:
    """Everything the model and evaluation need from `<artifacts>/data/<name>/`."""

    directory: Path
    stats: dict
    vocab_json: dict
    items: dict[str, np.ndarray]

    @classmethod
    def load(cls, directory: Path) -> PreparedData:
        directory = Path(directory)
        stats = json.loads((directory / "stats.json").read_text())
        vocab = json.loads((directory / "vocab.json").read_text())
        items = table_arrays(pq.read_table(directory / "items.parquet"))
        return cls(directory, stats, vocab, items)

    @property
    def num_items(self) -> int:
        return int(self.stats["num_items"])

    def padded(self, column: str, fill=0) -> np.ndarray:
        """(num_items + 1,) per-item array with row 0 = padding."""
        return pad_column(self.items[column], fill)

    def feature_codes(self) -> tuple[np.ndarray, list[int], list[int]]:
        """(N + 1, F) item content codes (row 0 padding), each feature's vocabulary size and its width
        (columns: 1, or a multi-valued attribute's bag; see data.item_content.code_matrix)."""
        columns = self.feature_columns()
        if not columns:
            return np.zeros((self.num_items + 1, 0), np.int64), [], []
        codes, widths = code_matrix([self.padded(c) for c in columns])
        sizes = [max(_largest_code(self.items[c]), 0) + 1 for c in columns]
        return codes, sizes, widths

    def feature_columns(self) -> list[str]:
        """The items.parquet code columns that are content features; those unknown everywhere are left out."""
        columns = [c for c in self.items if c.endswith("_idx") and c != "item_idx"] + ["price_bucket"]
        return [c for c in columns if _largest_code(self.items[c]) > 0]

    def vocabulary(self) -> Vocabulary:
        _, sizes, widths = self.feature_codes()
        v = self.vocab_json
        return Vocabulary(
            num_items=self.num_items,
            num_event_types=len(v["event_types"]),
            num_gap_buckets=NUM_GAP_BUCKETS,
            num_channels=len(v["channels"]),
            context_sizes={
                "ctx_device_types": len(v["device_types"]),
                "ctx_hours": 25,
                "ctx_days_of_week": 8,
                "ctx_referrers": len(v["referrers"]),
                "ctx_regions": len(v["regions"]),
                "ctx_gap_buckets": NUM_GAP_BUCKETS,
            },
            feature_sizes=sizes,
            feature_widths=widths,
            num_categories=int(self.padded("category_idx").max(initial=0)) + 1 if "category_idx" in self.items else 0,
        )


class SequenceDataModule(pl.LightningDataModule):
    """Training windows and val/test examples of one prepared dataset.

    Args:
        data: the prepared dataset.
        max_seq_len: T, steps the model reads.
        batch_size: training batch size (evaluation uses `eval_batch_size`).
        past_purchases: P, purchases before the window given to the context.
        rare_max_count: targets with 1..rare_max_count training events form the `rare` slice.
        bucket_by_length: batch training windows of similar length (less padding, so less work).
            Every batch is trimmed to its longest window either way; evaluation results are identical.
        batch_targets: with bucket_by_length, cut training batches by target count instead of
            window count; None = batch_size x the mean number of targets per training window.
        min_steps_per_epoch: > 0: lower batch_size (not below min_batch_size) so that an epoch has at
            least this many steps: large batches where the data is large, the reference batch where it
            is small (a few steps an epoch leave too few updates to learn from).
    """

    def __init__(
        self,
        data: PreparedData,
        max_seq_len: int,
        batch_size: int,
        eval_batch_size: int = 256,
        past_purchases: int = 20,
        rare_max_count: int = 5,
        seed: int = 0,
        num_workers: int = 0,
        bucket_by_length: bool = False,
        batch_targets: int | None = None,
        min_steps_per_epoch: int = 0,
        min_batch_size: int = 128,
        batches_on_device: bool | str = "auto",
        intent: str = "none",
    ):
        super().__init__()
        self.intent = intent
        self.intent_heads: dict[str, str | None] = {}  # head -> None (learns) or why it cannot (intent only)
        self.intent_sets: dict[str, tuple] = {}  # val/test: (windows, labels, split) (intent only)
        self.intent_train: tuple | None = None  # (train split, labels of the heads that learn) (intent only)
        self.batches_on_device = batches_on_device
        self._device_arrays: DeviceArrays | None = None
        self.bucket_by_length, self.batch_targets = bucket_by_length, batch_targets
        self.min_steps_per_epoch, self.min_batch_size = min_steps_per_epoch, min_batch_size
        self.data = data
        self.max_seq_len, self.batch_size, self.eval_batch_size = max_seq_len, batch_size, eval_batch_size
        self.past_purchases, self.rare_max_count, self.seed, self.num_workers = (
            past_purchases,
            rare_max_count,
            seed,
            num_workers,
        )
        self.train_arrays: dict[str, np.ndarray] | None = None
        self.eval_sets: dict[str, tuple] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_arrays is None:
            train = read_split(self.data.directory / "train.parquet")
            labels = None
            if self.intent != "none":
                from intentrec.training.intent_labels import available_heads, own_steps

                own_steps(train, "train", self.data.stats["split"])  # a split that cuts sessions fails here
                labels = self.intent_labels(train)
                self.intent_heads = available_heads(labels)
                for head, reason in self.intent_heads.items():
                    if reason:
                        log.warning("intent head %s is off: %s", head, reason)
                labels = {head: values for head, values in labels.items() if not self.intent_heads[head]}
                self.intent_train = (train, labels)
            # Heads trained with the tower read the labels in its windows; a second stage reads its own.
            joint = labels if self.intent == "joint" else None
            self.train_arrays = training_windows(train, self.max_seq_len, self.past_purchases, joint)
            windows = len(self.train_arrays["targets"])
            log.info("train: %d windows, %d targets", windows, int((self.train_arrays["targets"] > 0).sum()))
            if self.min_steps_per_epoch > 0:
                cap = max(self.min_batch_size, windows // self.min_steps_per_epoch)
                if self.batch_size > cap:
                    log.info(
                        "data.batch_size %d -> %d: at least data.min_steps_per_epoch=%d steps an epoch over %d windows",
                        self.batch_size, cap, self.min_steps_per_epoch, windows,
                    )  # fmt: skip
                    self.batch_size = cap
        for name in ("val", "test"):
            if name not in self.eval_sets:
                split = read_split(self.data.directory / f"{name}.parquet")
                self.eval_sets[name] = evaluation_examples(
                    split,
                    self.max_seq_len,
                    self.past_purchases,
                    self.data.padded("category_idx"),
                    self.data.padded("train_count"),
                    self.rare_max_count,
                )

        for name in ("val", "test") if self.intent != "none" else ():
            if name not in self.intent_sets:
                split = read_split(self.data.directory / f"{name}.parquet")
                from intentrec.errors import DataError
                from intentrec.training.intent_labels import own_steps

                if not own_steps(split, name, self.data.stats["split"]).any():
                    raise DataError(
                        f"the intent heads cannot be measured: {self.data.directory / name}.parquet has no steps of "
                        f"its own (data.split: {self.data.stats['split'].get('protocol')}); give the split more days "
                        "(data.split.val_days, data.split.test_days) or data covering them"
                    )
                labels = self.intent_labels(split)
                windows = training_windows(split, self.max_seq_len, self.past_purchases, labels, every_window=True)
                self.intent_sets[name] = (windows, labels, split)

    def intent_train_windows(self) -> dict[str, np.ndarray]:
        """Windows over every step of train with the labels of the heads that can learn (a second stage's data)."""
        train, labels = self.intent_train
        return training_windows(train, self.max_seq_len, self.past_purchases, labels, every_window=True)

    def intent_labels(self, split: Split) -> dict[str, np.ndarray]:
        """training.intent_labels.intent_labels of a split of this data (categories when the items have any)."""
        from intentrec.training.intent_labels import intent_labels, item_categories

        return intent_labels(split, self.data.vocab_json["event_types"], item_categories(self.data))

    @property
    def train_counts(self) -> np.ndarray:
        return self.data.padded("train_count").astype(np.int64)

    def _loader(self, arrays: dict[str, np.ndarray], batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        lengths = targets = budget = None
        if self.bucket_by_length:
            lengths = (arrays["item_ids"] > 0).sum(axis=1)
            if shuffle:
                targets = (arrays["targets"] > 0).sum(axis=1)
                budget = self.batch_targets or max(1, round(batch_size * float(targets.mean())))
        sampler = BatchIndexSampler(
            len(next(iter(arrays.values()))),
            batch_size,
            shuffle,
            self.seed,
            rank,
            world,
            lengths=lengths,
            targets=targets,
            batch_targets=budget,
        )
        on_device = shuffle and self._assemble_on_device()
        return (ResumableLoader if shuffle else torch.utils.data.DataLoader)(
            IndexDataset(arrays) if on_device else ArrayDataset(arrays),
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
        )

    def _assemble_on_device(self) -> bool:
        """Whether training batches are assembled on the device (`data.batches_on_device`; auto: on a GPU)."""
        if self.batches_on_device == "auto":
            return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return bool(self.batches_on_device)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Lightning's hook: an index batch (`IndexDataset`) is gathered from the split held on `device`."""
        if isinstance(batch, dict) and batch.keys() == {"index", "width"}:
            if self._device_arrays is None or self._device_arrays.device != device:
                self._device_arrays = DeviceArrays(self.train_arrays, device)
            return self._device_arrays.batch(batch["index"], int(batch["width"]))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self):
        loader = self._loader(self.train_arrays, self.batch_size, shuffle=True)
        if self.trainer is not None:
            loader.sampler.set_epoch(self.trainer.current_epoch)
        return loader

    def eval_loader(self, name: str) -> torch.utils.data.DataLoader:
        """Batches of the `name` split's examples in order (sharded across DDP ranks)."""
        return self._loader(self.eval_arrays(name), self.eval_batch_size, shuffle=False)

    def eval_arrays(self, name: str) -> dict[str, np.ndarray]:
        batch, slices, _ = self.eval_sets[name]
        return {**batch, "example_index": np.arange(len(batch["target"]))}

    def val_dataloader(self):
        return self.eval_loader("val")

    def test_dataloader(self):
        return self.eval_loader("test")
