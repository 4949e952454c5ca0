"""Item content from files, for every data format: an items table (CSV, TSV or Parquet) or an
`item -> [attribute ids]` JSON (the S3-Rec format of the public Amazon, Yelp and LastFM benchmarks).

    python -m data.prepare data=generic data.path=events.csv data.items.path=items.csv 'data.items.lists=[tags]'
    python -m data.prepare data=lastfm        # data.items.path=.../LastFM_item2attributes.json

Each attribute column becomes one item feature of the item tower (and of the ranker), by kind:

- *categorical*: a string or boolean column, or a numeric one named in `data.items.categorical`: one
  code per item.
- *multi-valued*: a Parquet list column, the lists of a JSON file, or a string column named in
  `data.items.lists` (values split at `data.items.list_sep`): a bag of codes, embedded as the mean of its
  values' embeddings (the first `data.items.max_values` distinct values of an item are kept).
- *numeric*: any other integer or float column: `data.items.num_buckets` quantile buckets.

Code 0 is "unknown" everywhere: an item without a row, a missing value, a value first seen after
preparation. Columns named `category_id`, `brand` and `price` keep their canonical meaning (category,
brand and price features) and replace what the events say. The same encoding rules serve items added
after training (`serving.bundle.add_items`): `encode_values` is the one place they live.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from intentrec.data.features import bucket_edges, value_buckets
from intentrec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CANONICAL = ("category_id", "brand", "price")
# Feature names the item table already uses (`<name>_idx` columns and their neighbours).
RESERVED = ("item", "category", "brand", "price", "price_bucket", "count", "train_count", "first_available")
KINDS = ("categorical", "multi", "numeric")
DEFAULTS = {
    "path": None,
    "item_id": None,
    "sep": ",",
    "columns": None,
    "lists": [],
    "list_sep": "|",
    "categorical": [],
    "num_buckets": 10,
    "max_values": 64,
    "json_name": "attributes",
}


def settings(cfg: Mapping) -> dict:
    """`data.items` with its defaults; unknown keys are an error naming them."""
    given = dict(cfg.get("items") or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"data.items has unknown key(s) {unknown}; expected keys from {sorted(DEFAULTS)}.")
    out = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None or k in ("path", "item_id", "columns")}}
    if int(out["num_buckets"]) < 1 or int(out["max_values"]) < 1:
        raise ConfigError(
            f"data.items.num_buckets={out['num_buckets']}, data.items.max_values={out['max_values']}; both must be >= 1."
        )
    return out


def read_items(cfg: Mapping) -> tuple[pa.Table, dict] | None:
    """The items file of `data.items.path` as a table: `item_id` (string) and one column per attribute,
    typed by kind (string: categorical, list<string>: multi-valued, float64: numeric). None without a file.
    Returns (table, report) where report holds the file, its digest-free counts and the kinds."""
    s = settings(cfg)
    if not s["path"]:
        return None
    path = Path(str(s["path"])).expanduser()
    if path.suffix.lower() == ".json":
        table = _read_attribute_json(path, s)
    else:
        table = _read_table(path, s)
    kinds = {name: kind_of(table.schema.field(name).type) for name in table.column_names if name != "item_id"}
    report = {"file": str(path), "rows": table.num_rows, "attributes": kinds}
    log.info("%s: %d items, attributes %s", path.name, table.num_rows, kinds or "none")
    return table, report


def kind_of(kind: pa.DataType) -> str | None:
    """categorical | multi | numeric for a column's Arrow type; None for a type no feature is made of."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return "multi"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return "numeric"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind):
        return "categorical"
    return None


def _read_attribute_json(path: Path, s: dict) -> pa.Table:
    if not path.is_file():
        raise DataError(f"data.items.path={str(path)!r} does not exist or is not a file.")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} is not valid JSON ({error}); expected an object of item id -> list of attribute ids, "
            'e.g. {"1": [3, 17], "2": [5]}.'
        ) from None
    if not isinstance(content, dict):
        raise DataError(
            f"{path} holds a JSON {type(content).__name__}; expected an object of item id -> list of attribute ids, "
            'e.g. {"1": [3, 17], "2": [5]}.'
        )
    ids, values = [], []
    for item, attributes in content.items():
        if not isinstance(attributes, list):
            raise DataError(
                f"{path}: item {item!r} has {json.dumps(attributes)[:60]}; expected a list of attribute ids, e.g. [3, 17]."
            )
        for value in attributes:
            if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
                raise DataError(
                    f"{path}: item {item!r} has attribute {json.dumps(value)[:60]}; attribute ids are integers or "
                    "non-empty strings."
                )
        ids.append(str(item))
        values.append([str(v) for v in attributes])
    name = str(s["json_name"])
    _check_name(name, path, "data.items.json_name")
    return pa.table({"item_id": pa.array(ids, pa.string()), name: pa.array(values, pa.list_(pa.string()))})


def _read_table(path: Path, s: dict) -> pa.Table:
    from intentrec.data.errors import LINE_COLUMN
    from intentrec.data.loaders import read_delimited, read_parquet

    key = "data.items.path"
    if path.suffix.lower() == ".parquet":
        table = read_parquet(path, key)
        lines = np.arange(table.num_rows) + 1
        where = "row"
    else:
        sep = "\t" if path.suffix.lower() == ".tsv" and s["sep"] == "," else str(s["sep"])
        frame = read_delimited(path, sep, key=key)
        lines = frame[LINE_COLUMN].to_numpy()
        frame = frame.drop(columns=[c for c in frame.columns if c.startswith("_source_")])
        table = _typed(frame, path, set(s["categorical"]))
        where = "line"
    id_column = s["item_id"] or next((c for c in table.column_names if c.lower() == "item_id"), None)
    if id_column is None or id_column not in table.column_names:
        raise DataError(
            f"{path}: no item id column {'named ' + repr(s['item_id']) if s['item_id'] else 'item_id'}; columns are "
            f"{table.column_names}. Name it with data.items.item_id=<column>."
        )
    ids = table[id_column].cast(pa.string())
    empty = np.flatnonzero(
        pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids), ""), True).to_numpy(zero_copy_only=False)
    )
    if len(empty):
        raise DataError(f"{path}, {where} {lines[empty[0]]}: the item id ({id_column}) is empty; every row needs one.")
    id_values = ids.to_numpy(zero_copy_only=False).astype(str)
    unique, first, counts = np.unique(id_values, return_index=True, return_counts=True)
    if (counts > 1).any():
        item = str(unique[np.argmax(counts > 1)])
        at = [int(lines[i]) for i in np.flatnonzero(id_values == item)[:2]]
        raise DataError(
            f"{path}: item {item!r} has more than one row ({where}s {at[0]} and {at[1]}); one row per item "
            f"(a multi-valued attribute goes in one field, separated by data.items.list_sep={s['list_sep']!r})."
        )
    wanted = s["columns"]
    attributes = [c for c in table.column_names if c != id_column]
    if wanted is not None:
        missing = [c for c in wanted if c not in attributes]
        if missing:
            raise DataError(
                f"{path}: data.items.columns names {missing}, not in the file; its columns are {attributes}."
            )
        attributes = list(wanted)
    for column in s["lists"]:
        if column not in attributes:
            raise DataError(
                f"{path}: data.items.lists names {column!r}, not an attribute column; they are {attributes}."
            )
    out = {"item_id": ids}
    for column in attributes:
        name = "category_id" if column == "category" else column
        if column not in CANONICAL:
            _check_name(name, path, "column")
        values = table[column]
        if kind_of(values.type) is None and column not in s["lists"] + s["categorical"]:
            log.warning(
                "%s: column %r (%s) is not used; item attributes are strings, booleans, numbers or lists",
                path.name,
                column,
                values.type,
            )
            continue
        if column in s["lists"]:
            values = split_values(values.cast(pa.string()), str(s["list_sep"]))
        elif kind_of(values.type) == "multi":
            values = values.cast(pa.list_(pa.string()))
        elif column in s["categorical"] or pa.types.is_boolean(values.type) or kind_of(values.type) == "categorical":
            values = values.cast(pa.string())
        else:
            values = values.cast(pa.float64())
        if column in CANONICAL:
            wanted_kind = "numeric" if column == "price" else "categorical"
            if kind_of(values.type) != wanted_kind:
                raise DataError(
                    f"{path}: column {column!r} is {kind_of(values.type)}, but {column} is "
                    f"{'a number' if column == 'price' else 'one value'} per item."
                )
        out[name] = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return pa.table(out)


def _typed(frame: pd.DataFrame, path: Path, categorical: set[str]) -> pa.Table:
    """CSV columns read as strings: those whose every value is a number become float64."""
    columns = {}
    for column in frame.columns:
        values = frame[column]
        if column not in categorical and values.notna().any():
            numbers = pd.to_numeric(values, errors="coerce")
            if numbers.notna().sum() == values.notna().sum():
                columns[column] = pa.array(numbers.to_numpy(dtype=float), pa.float64(), from_pandas=True)
                continue
        columns[column] = pa.array(values.to_numpy(dtype=object), pa.string(), from_pandas=True)
    return pa.table(columns)


def split_values(values: pa.ChunkedArray | pa.Array, sep: str) -> pa.Array:
    """Delimited strings -> lists of their non-empty, stripped values (null stays null)."""
    rows = [None if v is None else [p.strip() for p in v.split(sep) if p.strip()] for v in values.to_pylist()]
    return pa.array(rows, pa.list_(pa.string()))


def _check_name(name: str, path: Path, what: str) -> None:
    bare = name.removesuffix("_id") if name.endswith("_id") else name
    if bare in RESERVED or name in ("item_id", "item_idx"):
        raise DataError(
            f"{path}: {what} {name!r} clashes with a built-in item feature ({', '.join(RESERVED)}); rename it in the "
            "file, or leave it out with data.items.columns=[...]."
        )


def attach(items: pa.Table | None, catalogue: pa.Table) -> pa.Table:
    """The loader's item table (from the events) with the file's attributes joined by item id; the file's
    value wins where both have one. Items only in the file are kept (prepare keeps items with events)."""
    if items is None:
        return catalogue
    ids = pc.unique(
        pa.concat_arrays([items["item_id"].combine_chunks().cast(pa.string()), catalogue["item_id"].combine_chunks()])
    )
    out = {"item_id": ids}
    left = pc.index_in(ids, value_set=items["item_id"].combine_chunks().cast(pa.string()))
    right = pc.index_in(ids, value_set=catalogue["item_id"].combine_chunks())
    for name in dict.fromkeys([*items.column_names, *catalogue.column_names]):
        if name == "item_id":
            continue
        a = items[name].combine_chunks().take(left) if name in items.column_names else None
        b = catalogue[name].combine_chunks().take(right) if name in catalogue.column_names else None
        if a is not None and b is not None:
            out[name] = pc.if_else(pc.is_null(b), a.cast(b.type), b)
        else:
            out[name] = a if a is not None else b
    return pa.table(out)


def encode_values(values: pa.Array, kind: str, vocabulary: list[str] | None, edges: list[float] | None, width: int):
    """Codes of one attribute column with a trained vocabulary (`["<unknown>", v1, ...]`) or bucket edges.

    categorical -> (M,) int64; numeric -> (M,) int64 buckets 1..len(edges)+1; multi -> (M, width) int64
    (distinct known values in order, 0-padded). Unknown and missing values are 0."""
    if kind == "numeric":
        return value_buckets(values.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), edges)
    lookup = {value: code for code, value in enumerate(vocabulary or []) if code > 0}
    if kind == "categorical":
        return np.asarray([lookup.get(v, 0) for v in values.cast(pa.string()).to_pylist()], np.int64)
    out = np.zeros((len(values), width), np.int64)
    for row, bag in enumerate(values.to_pylist()):
        codes = [c for c in dict.fromkeys(lookup.get(str(v), 0) for v in bag or []) if c][:width]
        out[row, : len(codes)] = codes
    return out


def fit(values: pa.Array, kind: str, num_buckets: int, max_values: int) -> dict:
    """The vocabulary (sorted values, code 0 unknown), bucket edges or bag width of one column."""
    if kind == "numeric":
        x = values.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        return {"kind": kind, "edges": bucket_edges(x, num_buckets)}
    if kind == "multi":
        flat = pc.list_flatten(values)
        vocabulary = ["<unknown>", *sorted(set(flat.cast(pa.string()).to_pylist()) - {None})]
        lengths = [len(dict.fromkeys(bag)) for bag in values.to_pylist() if bag]
        longest = max(lengths, default=1)
        if longest > max_values:
            cut = sum(n > max_values for n in lengths)
            log.warning(
                "item attribute: %d item(s) have more than data.items.max_values=%d values (up to %d); the first %d kept",
                cut,
                max_values,
                longest,
                max_values,
            )
        return {"kind": kind, "values": vocabulary, "width": max(1, min(longest, max_values))}
    uniques = sorted(set(values.cast(pa.string()).to_pylist()) - {None})
    return {"kind": kind, "values": ["<unknown>", *uniques]}


def code_matrix(columns: list[np.ndarray], widths: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """(N, sum of widths) int64 codes of item feature columns, and each column's width: a column of
    codes takes one column; a column of bags (arrays of codes) as many as `widths` says (default its
    longest bag), 0-padded."""
    if not columns:
        return np.zeros((0, 0), np.int64), []
    n = len(columns[0])
    blocks, out_widths = [], []
    for j, column in enumerate(columns):
        if column.dtype != object:
            blocks.append(np.asarray(column, np.int64).reshape(n, 1))
            out_widths.append(1)
            continue
        width = widths[j] if widths is not None else max(1, max((len(b) for b in column if b is not None), default=1))
        block = np.zeros((n, width), np.int64)
        for row, bag in enumerate(column):
            if bag is not None and len(bag):
                codes = np.asarray(bag, np.int64)[:width]
                block[row, : len(codes)] = codes
        blocks.append(block)
        out_widths.append(width)
    return np.concatenate(blocks, axis=1), out_widths


def table_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """Columns of a table as numpy arrays; a list column becomes an object array of int64 arrays."""
    out = {}
    for name in table.column_names:
        column = table[name]
        if kind_of(column.type) == "multi":
            array = np.empty(len(column), object)
            if pa.types.is_integer(column.type.value_type):  # bags of codes
                array[:] = [np.asarray(v if v is not None else [], np.int64) for v in column.to_pylist()]
            else:
                array[:] = column.to_pylist()
            out[name] = array
        else:
            out[name] = np.asarray(column.to_pylist())
    return out


def pad_column(values: np.ndarray, fill=0) -> np.ndarray:
    """(len + 1,) per-item column with row 0 = padding (`fill`; an empty bag for a column of bags)."""
    if values.dtype == object:
        out = np.empty(len(values) + 1, object)
        bags = len(values) > 0 and isinstance(values[0], np.ndarray)
        out[0] = np.zeros(0, np.int64) if bags else fill
        out[1:] = values
        return out
    return np.concatenate([[fill], values]).astype(values.dtype)


def list_column(values: np.ndarray):
    """An items column for Arrow: a column of bags as list<int64>, any other as it is."""
    if values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
        return pa.array([bag.tolist() for bag in values], pa.list_(pa.int64()))
    return values
