"""Turn events into training-ready sequences and evaluation splits.

    python -m data.prepare                                   # the default synthetic shop
    python -m data.prepare data=synthetic data.num_events=1000000 data.seed=3
    python -m data.prepare data=diginetica                   # ../shared/data, read by path
    python -m data.prepare data=yoochoose
    python -m data.prepare data=amazon_video_games
    python -m data.prepare data=generic data.path=events.csv data.format=csv \
        data.columns.user_id=user data.columns.item_id=item data.columns.timestamp=ts
    python -m data.prepare data=diginetica data.split.type=temporal data.split.test_days=7
    python -m data.prepare data=generic data.path=events.csv explain=true   # what the load finds; writes nothing

Columns of a CSV or Parquet file named like a mapping key or its canonical name (`user_id`,
`customer_id`, `session_id`, `item_id`, `timestamp` or `event_time`, `event_type`, `category_id`,
`price`, ...; any case) are used without mapping; every column nothing maps is listed in a warning.

Writes `<artifacts_dir>/data/<data.name>/`:

- `train.parquet`, `val.parquet`, `test.parquet`: one row per sequence with per-step list columns
  (`item_ids`, `event_types`, `timestamps`, `time_gaps`, `hours`, `days_of_week`, `device_types`,
  `referrers`, `channels`, `regions`, `prices`, `quantities`, `new_session`) and `target_mask`, true
  at the steps that are targets in that split. Training uses every target of a train row (causal,
  all positions); a val/test row is the history up to and including its targets, ranked against
  the full catalogue. At a target step, the context columns (time, device, referrer, region, channel)
  describe the moment of the request, known at serving time; its item and event type are what is
  predicted and must not be fed to the model.
- `items.parquet`: item features by contiguous `item_idx` (1..num_items; 0 is padding).
- `item_map.parquet`, `sequence_map.parquet`: contiguous ids <-> raw ids, for serving.
- `vocab.json`: the code of every categorical value (0 = unknown/padding everywhere).
- `stats.json`: counts as loaded (`source`) and after filtering (`prepared`), split with cut-offs
  and sizes, filters and what each removed, SHA-256 of the source files, schema version, config
  hash and library versions; later stages check it before they run.
- `rejects.csv` when `data.strict=false` put bad rows aside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from intentrec.config import config_dict
from intentrec.data import item_content
from intentrec.data.canonical import SPLIT_COLUMN, LoadedData
from intentrec.data.features import (
    MS_PER_DAY,
    bucket_edges,
    day_codes,
    hour_codes,
    session_starts,
    step_gaps_seconds,
    value_buckets,
)
from intentrec.data.schema import CHANNELS, DEVICE_TYPES, EVENT_TYPES, REFERRERS, SCHEMA_VERSION
from intentrec.errors import ConfigError, DataError
from intentrec.hashing import settings_hash, sha256_file

log = logging.getLogger(__name__)

SPLIT_TYPES = ("leave_last_out", "temporal", "predefined")
SEQUENCE_KEYS = ("session", "customer")
# Version of the prepared files' layout; bump when columns change so older preparations are redone.
PREPARED_FORMAT_VERSION = 2


# Keys of the `data` config group read by training only: they do not change prepared data.
TRAINING_KEYS = frozenset(
    {
        "num_items",
        "max_seq_len",
        "batch_size",
        "eval_batch_size",
        "past_purchases",
        "num_workers",
        "bucket_by_length",
        "batch_targets",
        "min_steps_per_epoch",
        "batches_on_device",
    }
)


def preparation_config(cfg: Mapping) -> dict:
    return {k: v for k, v in dict(cfg).items() if k not in TRAINING_KEYS}


def drop_generator_keys(cfg) -> None:
    """Keys only the synthetic shop's generator reads (`data.num_events` from `debug=fast`, `data.seed`, ...)
    are removed from a data config of any other format (in place), so they neither change its hash nor travel
    into its records."""
    from dataclasses import fields

    from omegaconf import open_dict

    from intentrec.data.synthetic import ShopConfig

    if cfg.data.get("format") == "synthetic":
        return
    with open_dict(cfg):
        for field in fields(ShopConfig):
            if field.name in cfg.data:
                del cfg.data[field.name]


def config_hash(cfg: Mapping) -> str:
    """Hash of the keys that decide the prepared data (training-only keys left out)."""
    return settings_hash(preparation_config(cfg))


def library_versions() -> dict:
    import pandas

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "pandas": pandas.__version__,
    }


def _encode(column: pa.ChunkedArray | None, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes (-1 for null) and the distinct values, in order of first appearance."""
    if column is None:
        return np.full(length, -1, np.int64), np.array([], dtype=object)
    encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, np.asarray(encoded.dictionary.to_pylist(), dtype=object)


def _enum_codes(column: pa.ChunkedArray | None, values: tuple[str, ...], length: int) -> np.ndarray:
    """Codes 1..len(values) for enumeration columns (0 = unknown); values were validated upstream."""
    if column is None:
        return np.zeros(length, np.int8)
    index = pc.index_in(column, value_set=pa.array(values))
    return (index.fill_null(-1).to_numpy(zero_copy_only=False) + 1).astype(np.int8)


@dataclass
class Flat:
    """Events as parallel numpy arrays, sorted by (sequence, time, source order)."""

    seq: np.ndarray  # (E,) int64 sequence code
    item: np.ndarray  # (E,) int64 raw-item code
    event_type: np.ndarray  # (E,) int8, 1-based EVENT_TYPES code
    time_ms: np.ndarray | None  # (E,) int64, None when the source has no time
    device_type: np.ndarray
    referrer: np.ndarray
    channel: np.ndarray
    region: np.ndarray  # (E,) int16 region code (0 unknown)
    price: np.ndarray  # (E,) float32, NaN unknown
    quantity: np.ndarray  # (E,) int16, 0 unknown
    split: np.ndarray | None  # (E,) int8 predefined split 0/1/2, or None
    session: np.ndarray  # (E,) int64 session code, -1 when the source has no session id

    def take(self, index: np.ndarray) -> Flat:
        return Flat(**{k: (None if v is None else v[index]) for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return len(self.seq)


def sequence_keys(events: pa.Table, key: str, stitch: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-event sequence codes, the raw key of each code, whether it is a known customer, session codes.

    `customer`: the customer id when known; with `stitch`, an anonymous event takes the customer
    seen elsewhere in its session, else on its device (the shopper logged in later), else the
    sequence is the device, else the session.
    """
    E = events.num_rows
    col = lambda name: events[name] if name in events.column_names else None  # noqa: E731
    session, session_values = _encode(col("session_id"), E)
    customer, customer_values = _encode(col("customer_id"), E)
    if key == "session" and col("session_id") is not None:
        missing = session < 0
        codes = np.where(missing, len(session_values) + np.maximum(customer, 0), session)
        raw = np.concatenate(
            [session_values.astype(str), np.char.add("customer:", customer_values.astype(str))]
        ).astype(object)
        return (*_compact(codes, raw, np.zeros(len(raw), bool)), session)
    device, device_values = _encode(col("device_id"), E)
    who = customer.copy()
    if stitch:
        for group in (session, device):
            known = (who >= 0) & (group >= 0)
            if not known.any():
                continue
            owner = np.full(int(group.max()) + 1, -1, np.int64)
            owner[group[known]] = who[known]
            fill = (who < 0) & (group >= 0)
            who[fill] = owner[group[fill]]
    U, D = len(customer_values), len(device_values)
    codes = np.where(who >= 0, who, np.where(device >= 0, U + device, U + D + np.maximum(session, 0)))
    raw = np.concatenate(
        [
            customer_values.astype(str),
            np.char.add("device:", device_values.astype(str)) if D else np.array([], dtype=str),
            np.char.add("session:", session_values.astype(str)) if len(session_values) else np.array([], dtype=str),
        ]
    ).astype(object)
    is_customer = np.arange(len(raw)) < U
    return (*_compact(codes, raw, is_customer), session)


def _compact(codes, raw, is_customer):
    used, compact = np.unique(codes, return_inverse=True)
    return compact.astype(np.int64), raw[used], is_customer[used]


def build_flat(events: pa.Table, cfg: Mapping) -> tuple[Flat, dict]:
    E = events.num_rows
    col = lambda name: events[name] if name in events.column_names else None  # noqa: E731
    seq, seq_raw, seq_is_customer, session = sequence_keys(
        events, cfg["sequence_key"], bool(cfg.get("stitch_identities", True))
    )
    item, item_values = _encode(events["item_id"], E)
    region, region_values = _encode(col("region"), E)
    time_ms = None
    if col("event_time") is not None and events["event_time"].null_count < E:
        time_ms = pc.cast(events["event_time"], pa.int64()).to_numpy().astype(np.int64)
    split = None
    if col(SPLIT_COLUMN) is not None:
        split = (
            pc.index_in(events[SPLIT_COLUMN], value_set=pa.array(["train", "val", "test"]))
            .to_numpy(zero_copy_only=False)
            .astype(np.int8)
        )
    price = col("price")
    quantity = col("quantity")
    flat = Flat(
        seq=seq,
        item=item,
        event_type=_enum_codes(col("event_type"), EVENT_TYPES, E),
        time_ms=time_ms,
        device_type=_enum_codes(col("device_type"), DEVICE_TYPES, E),
        referrer=_enum_codes(col("referrer"), REFERRERS, E),
        channel=_enum_codes(col("channel"), CHANNELS, E),
        region=(region + 1).astype(np.int16),
        price=(price.to_numpy().astype(np.float32) if price is not None else np.full(E, np.nan, np.float32)),
        quantity=(
            pc.fill_null(quantity, 0).to_numpy().astype(np.int16) if quantity is not None else np.zeros(E, np.int16)
        ),
        split=split,
        session=session,
    )
    # Stable order: sequence, then time, then source order (file order is time order without timestamps).
    order = np.lexsort((np.arange(E), flat.time_ms if flat.time_ms is not None else np.zeros(E, np.int64), flat.seq))
    flat = flat.take(order)
    meta = {
        "seq_raw": seq_raw,
        "seq_is_customer": seq_is_customer,
        "item_values": item_values,
        "region_values": region_values,
    }
    return flat, meta


def _counts(flat: Flat) -> dict:
    # Codes are dense non-negative integers: counting non-empty bins avoids a sort.
    return {
        "events": int(len(flat)),
        "items": int(np.count_nonzero(np.bincount(flat.item))) if len(flat) else 0,
        "sequences": int(np.count_nonzero(np.bincount(flat.seq))) if len(flat) else 0,
    }


def apply_filters(flat: Flat, cfg: Mapping, name: str) -> tuple[Flat, list[dict]]:
    """Event-type filter, minimum item support, minimum sequence length, optional k-core.

    Raises a `DataError` naming the filter that emptied the dataset.
    """
    filters = cfg.get("filters") or {}
    report = []

    def step(flat, keep, key, value):
        removed = int((~keep).sum())
        report.append({"filter": key, "value": value, "removed_events": removed})
        if removed == len(flat):
            raise DataError(
                f"data.{key}={value} removed all {len(flat):,} remaining events of {name}; nothing is left to prepare. "
                f"Relax data.{key} (see stats of the source: {_counts(flat)})."
            )
        return flat.take(np.flatnonzero(keep)) if removed else flat

    keep_types = cfg.get("event_types")
    if keep_types:
        unknown = sorted(set(keep_types) - set(EVENT_TYPES))
        if unknown:
            raise ConfigError(
                f"data.event_types has unknown value(s) {unknown}; expected values from {list(EVENT_TYPES)}."
            )
        codes = np.array([EVENT_TYPES.index(t) + 1 for t in keep_types])
        flat = step(flat, np.isin(flat.event_type, codes), "event_types", list(keep_types))
    if filters.get("dedupe_consecutive"):
        same = np.zeros(len(flat), bool)
        same[1:] = (
            (flat.seq[1:] == flat.seq[:-1])
            & (flat.item[1:] == flat.item[:-1])
            & (flat.event_type[1:] == flat.event_type[:-1])
        )
        flat = step(flat, ~same, "filters.dedupe_consecutive", True)
    min_item = int(filters.get("min_item_support", 1))
    min_len = int(filters.get("min_seq_len", 1))
    kcore = bool(filters.get("kcore", False))
    for _ in range(100 if kcore else 1):
        before = len(flat)
        if min_item > 1:
            support = np.bincount(flat.item)
            flat = step(flat, support[flat.item] >= min_item, "filters.min_item_support", min_item)
        if min_len > 1:
            length = np.bincount(flat.seq)
            flat = step(flat, length[flat.seq] >= min_len, "filters.min_seq_len", min_len)
        if len(flat) == before:
            break
    return flat, report


def _row_lists(
    flat: Flat, starts: np.ndarray, ends: np.ndarray, target: np.ndarray, item_index: np.ndarray
) -> pa.Table:
    """List columns for rows that are the slices [start, end) of the flat arrays."""
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    rows = flat.take(index)
    first = np.zeros(len(index), bool)
    first[offsets[:-1][lengths > 0]] = True
    new_session = session_starts(first, rows.session, rows.session >= 0, rows.time_ms)
    if rows.time_ms is not None:
        time_gaps = step_gaps_seconds(rows.time_ms, first).astype(np.int32)
        timestamps = rows.time_ms
        hours = hour_codes(rows.time_ms).astype(np.int8)
        days = day_codes(rows.time_ms).astype(np.int8)
    else:
        time_gaps = np.full(len(index), -1, np.int32)
        timestamps = np.zeros(len(index), np.int64)
        hours = days = np.zeros(len(index), np.int8)
    values = {
        "item_ids": item_index[rows.item].astype(np.int32),
        "event_types": rows.event_type,
        "timestamps": timestamps,
        "time_gaps": time_gaps,
        "hours": hours,
        "days_of_week": days,
        "device_types": rows.device_type,
        "referrers": rows.referrer,
        "channels": rows.channel,
        "regions": rows.region,
        "prices": rows.price,
        "quantities": rows.quantity,
        "new_session": new_session,
        "target_mask": target[index],
    }
    offsets_array = pa.array(offsets, pa.int32())
    return pa.table({name: pa.ListArray.from_arrays(offsets_array, pa.array(v)) for name, v in values.items()})


def make_splits(flat: Flat, cfg: Mapping, name: str) -> tuple[dict[str, tuple], dict]:
    """Row slices and target masks of train/val/test. Returns ({split: (seq, start, end, target)}, info)."""
    split_cfg = cfg.get("split") or {}
    kind = split_cfg.get("type", "leave_last_out")
    if kind not in SPLIT_TYPES:
        raise ConfigError(f"data.split.type={kind!r}; expected one of {list(SPLIT_TYPES)}.")
    target_types = cfg.get("target_event_types") or list(EVENT_TYPES)
    unknown = sorted(set(target_types) - set(EVENT_TYPES))
    if unknown:
        raise ConfigError(
            f"data.target_event_types has unknown value(s) {unknown}; expected values from {list(EVENT_TYPES)}."
        )
    E = len(flat)
    boundaries = np.flatnonzero(np.diff(flat.seq)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [E]])
    seq_ids = flat.seq[starts]
    row_of = np.repeat(np.arange(len(starts)), ends - starts)
    position = np.arange(E) - starts[row_of]
    eligible = np.isin(flat.event_type, [EVENT_TYPES.index(t) + 1 for t in target_types]) & (position >= 1)
    info: dict = {"type": kind, "target_event_types": list(target_types)}

    def rows(mask_rows, row_end, target):
        chosen = np.flatnonzero(mask_rows)
        return seq_ids[chosen], starts[chosen], row_end[chosen], target

    if kind == "leave_last_out":
        last = _last_true(eligible, row_of, len(starts))
        eligible_before_last = eligible & (np.arange(E) < np.where(last[row_of] >= 0, last[row_of], E))
        second = _last_true(eligible_before_last, row_of, len(starts))
        test_t = np.zeros(E, bool)
        test_t[last[last >= 0]] = True
        val_t = np.zeros(E, bool)
        val_t[second[second >= 0]] = True
        train_end = np.where(second >= 0, second, np.where(last >= 0, last, ends))
        out = {
            "test": rows(last >= 0, last + 1, test_t),
            "val": rows(second >= 0, second + 1, val_t),
            "train": rows(train_end - starts >= 2, train_end, eligible),
        }
        info["protocol"] = "leave-last-out: last target of each sequence is test, second-last is validation"
    elif kind == "temporal":
        if flat.time_ms is None:
            raise ConfigError(
                f"data.split.type=temporal but {name} has no timestamps; use data.split.type=leave_last_out."
            )
        test_days = float(split_cfg.get("test_days", 7))
        val_days = float(split_cfg.get("val_days", test_days))
        cut_test = int(flat.time_ms.max() - test_days * MS_PER_DAY)
        cut_val = int(cut_test - val_days * MS_PER_DAY)
        first_only = split_cfg.get("temporal_targets", "all") == "first"
        test_t = eligible & (flat.time_ms >= cut_test)
        val_t = eligible & (flat.time_ms >= cut_val) & (flat.time_ms < cut_test)
        if first_only:
            test_t = _first_only(test_t, row_of)
            val_t = _first_only(val_t, row_of)
        # Rows are prefixes: events before a cut-off (sorted by time within each sequence).
        before_test = starts + np.bincount(row_of, weights=flat.time_ms < cut_test, minlength=len(starts)).astype(
            np.int64
        )
        before_val = starts + np.bincount(row_of, weights=flat.time_ms < cut_val, minlength=len(starts)).astype(
            np.int64
        )
        has_test = np.bincount(row_of, weights=test_t, minlength=len(starts)) > 0
        has_val = np.bincount(row_of, weights=val_t, minlength=len(starts)) > 0
        last_test = _last_true(test_t, row_of, len(starts)) + 1
        last_val = _last_true(val_t, row_of, len(starts)) + 1
        out = {
            "test": rows(has_test, last_test, test_t),
            "val": rows(has_val, np.minimum(last_val, before_test), val_t),
            "train": rows(before_val - starts >= 2, before_val, eligible),
        }
        info.update(
            test_days=test_days,
            val_days=val_days,
            test_cutoff_ms=cut_test,
            val_cutoff_ms=cut_val,
            test_cutoff=str(np.datetime64(cut_test, "ms")) + "Z",
            val_cutoff=str(np.datetime64(cut_val, "ms")) + "Z",
            temporal_targets="first" if first_only else "all",
            protocol="temporal: targets at or after the test cut-off are test, the val_days before it validation; "
            "train is every sequence's events before the validation cut-off",
        )
    else:
        if flat.split is None:
            raise ConfigError(
                f"data.split.type=predefined but {name} has no predefined split; use leave_last_out or temporal."
            )
        row_split = flat.split[ends - 1]
        out = {
            name_: rows((row_split == code) & (ends - starts >= 2), ends, eligible)
            for code, name_ in enumerate(("train", "val", "test"))
        }
        info["protocol"] = "predefined: the source's own files; every target step of a val/test sequence is evaluated"
    return out, info


def _last_true(mask: np.ndarray, row_of: np.ndarray, num_rows: int) -> np.ndarray:
    """Index of the last true element per row, -1 where a row has none."""
    last = np.full(num_rows, -1, np.int64)
    index = np.flatnonzero(mask)
    last[row_of[index]] = index  # later indices overwrite earlier ones
    return last


def _first_only(mask: np.ndarray, row_of: np.ndarray) -> np.ndarray:
    index = np.flatnonzero(mask)
    first = np.ones(len(index), bool)
    first[1:] = row_of[index[1:]] != row_of[index[:-1]]
    out = np.zeros_like(mask)
    out[index[first]] = True
    return out


ITEM_CORE_COLUMNS = ("item_id", "category_id", "brand", "price", "first_available")


def item_features(
    flat: Flat, meta: dict, items: pa.Table | None, train_counts: np.ndarray, num_price_buckets: int, content: dict
):
    """Contiguous item ids by descending frequency, with category/brand/price and attribute features
    (`content`: data.items settings, see data.item_content)."""
    from intentrec.data.item_content import encode_values, fit, kind_of

    counts = np.bincount(flat.item, minlength=len(meta["item_values"]))
    present = np.flatnonzero(counts)
    raw_ids = meta["item_values"][present]
    order = np.lexsort((raw_ids.astype(str), -counts[present]))
    item_index = np.zeros(len(meta["item_values"]), np.int64)
    item_index[present[order]] = np.arange(1, len(present) + 1)
    table = {
        "item_idx": np.arange(1, len(present) + 1, dtype=np.int32),
        "item_id": raw_ids[order].astype(str),
        "count": counts[present][order].astype(np.int64),
        "train_count": train_counts[present][order].astype(np.int64),
    }
    vocab: dict = {}
    lookup = np.full(len(present), -1, np.int64)
    if items is not None:
        lookup = (
            pc.index_in(pa.array(table["item_id"]), value_set=items["item_id"].combine_chunks())
            .fill_null(-1)
            .to_numpy(zero_copy_only=False)
            .astype(np.int64)
        )
    found = lookup >= 0

    def item_column(column: str) -> pa.Array:
        if items is None or column not in items.column_names:
            return pa.nulls(len(present), pa.string())
        return pc.if_else(pa.array(found), items[column].combine_chunks().take(pa.array(np.maximum(lookup, 0))), None)

    # Item features: category, brand, and every other attribute of the items table by its kind
    # (data.item_content): categorical codes follow the sorted values, so they are stable across runs.
    others = [f for f in (items.schema if items is not None else []) if f.name not in ITEM_CORE_COLUMNS]
    skipped = [f"{f.name} ({f.type})" for f in others if kind_of(f.type) is None]
    if skipped:
        log.warning(
            "items table: attribute column(s) %s are not used; item attributes are strings, booleans, numbers or lists",
            skipped,
        )
    vocab.update(attributes={}, attribute_kinds={}, attribute_edges={})
    for column, kind in [
        ("category_id", "categorical"),
        ("brand", "categorical"),
        *((f.name, kind_of(f.type)) for f in others if kind_of(f.type) is not None),
    ]:
        values = item_column(column)
        if kind == "categorical":
            values = values.cast(pa.string())
        fitted = fit(values, kind, num_buckets=int(content["num_buckets"]), max_values=int(content["max_values"]))
        codes = encode_values(values, kind, fitted.get("values"), fitted.get("edges"), fitted.get("width", 1))
        name = column.removesuffix("_id")
        table[column] = values
        if kind == "multi":
            table[f"{name}_idx"] = pa.array([row[row > 0].tolist() for row in codes], pa.list_(pa.int32()))
        else:
            table[f"{name}_idx"] = codes.astype(np.int32)
        if column in ("category_id", "brand"):
            vocab[name] = fitted["values"][1:]
            continue
        vocab["attribute_kinds"][name] = kind
        if kind == "numeric":
            vocab["attribute_edges"][name] = fitted["edges"]
            vocab["attributes"][name] = ["<unknown>", *(f"bucket {b}" for b in range(1, len(fitted["edges"]) + 2))]
        else:
            vocab["attributes"][name] = fitted["values"]
    price = (
        item_column("price").cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        if (items is not None and "price" in items.column_names)
        else np.full(len(present), np.nan)
    )
    missing = np.isnan(price)
    if missing.any() and not np.isnan(flat.price).all():
        # Items without a catalogue price take the median price seen on their events.
        medians = pd.Series(flat.price).groupby(flat.item).median()
        event_price = medians.reindex(present[order]).to_numpy(dtype=float)
        price = np.where(missing, event_price, price)
    table["price"] = price
    edges = []
    bucket = np.zeros(len(present), np.int8)
    if not np.isnan(price).all():
        edges = bucket_edges(price, num_price_buckets)
        bucket = value_buckets(price, edges).astype(np.int8)
    table["price_bucket"] = bucket
    vocab["price_bucket_edges"] = edges
    return pa.table(table), item_index, vocab


def prepare(loaded: LoadedData, cfg: Mapping, out_dir: Path, *, name: str, extra_stats: dict | None = None) -> dict:
    """Filter, remap, split and write a loaded dataset; returns the content of `stats.json`."""
    started = time.perf_counter()
    sequence_key = cfg.get("sequence_key", "customer")
    if sequence_key not in SEQUENCE_KEYS:
        raise ConfigError(f"data.sequence_key={sequence_key!r}; expected one of {list(SEQUENCE_KEYS)}.")
    events = loaded.events
    flat, meta = build_flat(events, cfg)
    source = _counts(flat)
    flat, filter_report = apply_filters(flat, cfg, name)
    prepared_counts = _counts(flat)
    splits, split_info = make_splits(flat, cfg, name)

    # Train counts per raw item (popularity as the model may see it) = items on train rows.
    _, train_start, train_end, _ = splits["train"]
    in_train = _slice_mask(train_start, train_end, len(flat))
    train_counts = np.bincount(flat.item[in_train], minlength=len(meta["item_values"]))
    items_table, item_index, item_vocab = item_features(
        flat, meta, loaded.items, train_counts, int(cfg.get("num_price_buckets", 10)), item_content.settings(cfg)
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("train.parquet", "val.parquet", "test.parquet", "rejects.csv", "stats.json"):
        (out_dir / stale).unlink(missing_ok=True)
    loyalty = _sequence_loyalty(meta, loaded.customers)
    split_stats = {}
    for split_name, (seq, start, end, target) in splits.items():
        table = _row_lists(flat, start, end, target, item_index)
        table = table.add_column(0, "seq_idx", pa.array(seq.astype(np.int32)))
        table = table.add_column(1, "customer_known", pa.array(meta["seq_is_customer"][seq]))
        table = table.add_column(2, "loyalty", pa.array(loyalty[seq]))
        pq.write_table(table, out_dir / f"{split_name}.parquet")
        split_stats[split_name] = {
            "rows": int(len(seq)),
            "targets": int(target[_slice_mask(start, end, len(flat))].sum()),
            "steps": int((end - start).sum()),
        }
    pq.write_table(items_table, out_dir / "items.parquet")
    pq.write_table(
        pa.table({"item_idx": items_table["item_idx"], "item_id": items_table["item_id"]}),
        out_dir / "item_map.parquet",
    )
    used_seq = np.unique(flat.seq)
    pq.write_table(
        pa.table(
            {
                "seq_idx": pa.array(used_seq.astype(np.int32)),
                "sequence_key": pa.array(meta["seq_raw"][used_seq].astype(str)),
                "customer_known": pa.array(meta["seq_is_customer"][used_seq]),
            }
        ),
        out_dir / "sequence_map.parquet",
    )
    vocab = {
        "padding_id": 0,
        "event_types": ["<pad>", *EVENT_TYPES],
        "device_types": ["<unknown>", *DEVICE_TYPES],
        "referrers": ["<unknown>", *REFERRERS],
        "channels": ["<unknown>", *CHANNELS],
        "regions": ["<unknown>", *meta["region_values"].astype(str).tolist()],
        "hours": "hour of day (UTC) + 1; 0 = unknown",
        "days_of_week": "1 = Monday ... 7 = Sunday; 0 = unknown",
        "time_gaps": "seconds since the previous step of the sequence; 0 for the first step; -1 = no timestamps",
        "loyalty": ["<unknown>", "no", "yes"],
        "categories": ["<unknown>", *item_vocab["category"]],
        "brands": ["<unknown>", *item_vocab["brand"]],
        "price_bucket_edges": item_vocab["price_bucket_edges"],
        "item_attributes": item_vocab["attributes"],
        "item_attribute_kinds": item_vocab["attribute_kinds"],
        "item_attribute_edges": item_vocab["attribute_edges"],
        "item_list_sep": item_content.settings(cfg)["list_sep"],
    }
    (out_dir / "vocab.json").write_text(json.dumps(vocab, indent=1))
    if loaded.rejects.count:
        loaded.rejects.write(out_dir / "rejects.csv")
    stats = {
        "name": name,
        "schema_version": SCHEMA_VERSION,
        "prepared_format": PREPARED_FORMAT_VERSION,
        "source": source,
        "prepared": prepared_counts,
        "num_items": int(len(items_table)),
        "padding_id": 0,
        "sequence_key": sequence_key,
        "has_timestamps": flat.time_ms is not None,
        "split": {**split_info, **split_stats},
        "filters": filter_report,
        "rejects": {**loaded.rejects.summary(), "file": "rejects.csv" if loaded.rejects.count else None},
        "warnings": list(loaded.rejects.warnings),
        "source_files": [
            {"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size} for p in loaded.source_files
        ],
        "notes": loaded.notes,
        "vocab_sizes": {k: len(v) for k, v in vocab.items() if isinstance(v, list)},
        "time_range": (
            [
                str(np.datetime64(int(flat.time_ms.min()), "ms")) + "Z",
                str(np.datetime64(int(flat.time_ms.max()), "ms")) + "Z",
            ]
            if flat.time_ms is not None
            else None
        ),
        "config_hash": config_hash(dict(cfg)),
        "config": preparation_config(cfg),
        "library_versions": library_versions(),
        **(extra_stats or {}),
    }
    stats["data_hash"] = hashlib.sha256(
        "".join(f["sha256"] for f in stats["source_files"]).encode() + stats["config_hash"].encode()
    ).hexdigest()[:16]
    stats["seconds"] = round(time.perf_counter() - started, 3)
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, default=str))
    return stats


def _slice_mask(starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    marks = np.zeros(length + 1, np.int64)
    np.add.at(marks, starts, 1)
    np.add.at(marks, ends, -1)
    return np.cumsum(marks)[:-1] > 0


def _sequence_loyalty(meta: dict, customers: pa.Table | None) -> np.ndarray:
    """Loyalty code per sequence: 0 unknown, 1 no, 2 yes (from the customers table)."""
    codes = np.zeros(len(meta["seq_raw"]), np.int8)
    if customers is None or "loyalty_member" not in customers.column_names:
        return codes
    row = pc.index_in(pa.array(meta["seq_raw"].astype(str)), value_set=customers["customer_id"].combine_chunks())
    row = row.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    loyal = customers["loyalty_member"].combine_chunks().fill_null(False).to_numpy(zero_copy_only=False)
    has_flag = customers["loyalty_member"].combine_chunks().is_valid().to_numpy(zero_copy_only=False)
    usable = (row >= 0) & meta["seq_is_customer"]
    usable[usable] = has_flag[row[usable]]
    codes[usable] = np.where(loyal[row[usable]], 2, 1)
    return codes


def load_source(data_cfg: dict, artifacts: Path) -> tuple[LoadedData, dict]:
    """The events (and items) of a data config: the synthetic shop generated (or reused) or the
    format's loader, with the item content of `data.items.path` joined in. Returns (loaded, stats extras)."""
    from intentrec.data.loaders import load, load_canonical
    from intentrec.data.synthetic import generate, shop_config, shop_dir_for

    extra: dict = {}
    if data_cfg.get("format") == "synthetic":
        shop = shop_config(data_cfg)
        shop_dir = shop_dir_for(artifacts, shop)
        started = time.perf_counter()
        manifest = generate(shop, shop_dir)
        loaded = load_canonical(shop_dir)
        loaded.notes["truth_dir"] = str(shop_dir / "truth")
        extra["shop"] = {
            "dir": str(shop_dir),
            "fingerprint": manifest["fingerprint"],
            "counts": manifest["counts"],
            "generate_seconds": round(time.perf_counter() - started, 3),
        }
    else:
        loaded = load(data_cfg)
    catalogue = item_content.read_items(data_cfg)
    if catalogue is not None:
        table, report = catalogue
        loaded.items = item_content.attach(loaded.items, table)
        loaded.source_files = [*loaded.source_files, Path(report["file"])]
        extra["items_file"] = report
    return loaded, extra


def run(cfg, out_dir: Path | None = None) -> dict:
    """Prepare the dataset of a composed `prepare` config into `out_dir` (default
    `<artifacts_dir>/data/<data.name>`); returns `stats.json` content.

    Plain function so tests and other stages call it with a composed config; `main` wraps it.
    """

    drop_generator_keys(cfg)
    data_cfg = config_dict(cfg, "data")
    artifacts = Path(cfg.artifacts_dir)
    name = data_cfg["name"]
    loaded, extra = load_source(data_cfg, artifacts)
    event_type_counts = (
        pc.value_counts(loaded.events["event_type"]).to_pylist() if "event_type" in loaded.events.column_names else []
    )
    extra["event_type_counts"] = {d["values"]: int(d["counts"]) for d in event_type_counts}
    out_dir = Path(out_dir) if out_dir is not None else artifacts / "data" / name
    stats = prepare(loaded, data_cfg, out_dir, name=name, extra_stats=extra)
    if data_cfg.get("format") not in ("synthetic", "canonical"):
        # The source as canonical Parquet, so any later tool (or data.format=canonical) reads one format.
        canonical = out_dir / "canonical"
        canonical.mkdir(exist_ok=True)
        events = loaded.events.drop_columns([c for c in loaded.events.column_names if c.startswith("_")])
        pq.write_table(events, canonical / "events.parquet")
        for table_name, table in (("items", loaded.items), ("customers", loaded.customers)):
            if table is not None:
                pq.write_table(table, canonical / f"{table_name}.parquet")
    return stats


def format_stats(stats: dict, out_dir: Path) -> str:
    s, p, split = stats["source"], stats["prepared"], stats["split"]
    lines = [
        f"dataset {stats['name']} -> {out_dir}",
        f"  {'':10}{'events':>12}{'items':>10}{'sequences':>12}",
        f"  {'source':10}{s['events']:>12,}{s['items']:>10,}{s['sequences']:>12,}",
        f"  {'prepared':10}{p['events']:>12,}{p['items']:>10,}{p['sequences']:>12,}",
        f"  split: {split['type']} (targets: {', '.join(split['target_event_types'])})",
    ]
    for name in ("train", "val", "test"):
        lines.append(
            f"    {name:6}{split[name]['rows']:>10,} rows {split[name]['targets']:>10,} targets {split[name]['steps']:>12,} steps"
        )
    if stats.get("event_type_counts"):
        lines.append(
            "  event types: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(stats["event_type_counts"].items(), key=lambda kv: -kv[1]))
        )
    if stats.get("time_range"):
        lines.append(f"  time range: {stats['time_range'][0]} .. {stats['time_range'][1]}")
    if stats["rejects"]["problems"]:
        lines.append(f"  rejects: {stats['rejects']['rows']:,} rows -> {out_dir / 'rejects.csv'}")
    for warning in stats.get("warnings", []):
        lines.append(f"  warning: {warning}")
    if "shop" in stats:
        lines.append(
            f"  synthetic shop: {stats['shop']['dir']} (generated/reused in {stats['shop']['generate_seconds']}s; ground truth in truth/)"
        )
    lines.append(f"  prepared in {stats['seconds']}s")
    return "\n".join(lines)


def explain(cfg, rows: int = 5) -> str:
    """What a load of `cfg.data` finds, without writing anything: the column mapping (given, found by
    name, not used), the event types, counts, warnings and the first events as the model will see them."""

    data_cfg = config_dict(cfg, "data")
    loaded, _ = load_source(data_cfg, Path(cfg.artifacts_dir))
    events = loaded.events.drop_columns([c for c in loaded.events.column_names if c.startswith("_")])
    notes = loaded.notes
    lines = [f"data={data_cfg['name']} (format {data_cfg.get('format')}): {', '.join(map(str, loaded.source_files))}"]
    if "columns" in notes:
        found = set(notes.get("columns_found_by_name", []))
        lines.append("  columns (file -> canonical):")
        for source, canonical in notes["columns"].items():
            how = "by its name" if source in found else "data.columns"
            lines.append(f"    {source:<24} -> {canonical:<14} ({how})")
        if notes.get("columns_not_used"):
            lines.append(f"  not used: {notes['columns_not_used']} (map with data.columns.<key>=<column>)")
    else:
        lines.append(f"  columns: {events.column_names}")
    if "event_type" in events.column_names:
        counts = pc.value_counts(events["event_type"]).to_pylist()
        lines.append(
            "  event types: "
            + ", ".join(f"{d['values']} {d['counts']:,}" for d in sorted(counts, key=lambda d: -d["counts"]))
        )
    if notes.get("feedback_events_skipped"):
        lines.append(
            f"  {notes['feedback_events_skipped']:,} impression/click events set aside (feedback on served lists, "
            "read by attribution; not shopper intent)"
        )
    lines.append(
        f"  {events.num_rows:,} events, {len(pc.unique(events['item_id'])):,} items"
        + (f"; {loaded.rejects.count:,} problems set aside (data.strict=false)" if loaded.rejects.count else "")
    )
    if loaded.items is not None:
        lines.append(f"  item attributes: {', '.join(describe_attributes(loaded.items)) or 'none'}")
    lines += [f"  warning: {w}" for w in loaded.rejects.warnings]
    lines.append(f"  first {min(rows, events.num_rows)} events as the model will see them:")
    shown = [c for c in events.column_names if pc.any(pc.is_valid(events[c])).as_py()]
    head = events.select(shown).slice(0, rows).to_pandas()
    lines += ["    " + line for line in head.to_string(index=False).splitlines()]
    lines.append("  nothing was written (explain=true); run without it to prepare.")
    return "\n".join(lines)


def describe_attributes(items: pa.Table) -> list[str]:
    """`name (kind, N values)` of each item attribute column holding any value."""
    from intentrec.data.item_content import kind_of

    out = []
    for name in items.column_names:
        column = items[name]
        if name == "item_id" or not pc.any(pc.is_valid(column)).as_py():
            continue
        kind = kind_of(column.type)
        values = pc.list_flatten(column) if kind == "multi" else column
        out.append(f"{name} ({kind}, {len(pc.unique(values.drop_null()))} values)")
    return out


def _cli(cfg) -> None:
    if cfg.get("explain"):
        print(explain(cfg))
        return
    stats = run(cfg)
    print(format_stats(stats, Path(cfg.artifacts_dir) / "data" / stats["name"]))


if __name__ == "__main__":
    from intentrec.config import hydra_main

    hydra_main("prepare", _cli)
