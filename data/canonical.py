"""Turn a raw frame of strings (canonical column names, source line numbers) into canonical tables.

Every loader reads its format into such a frame and hands it here, so parsing and validation of ids,
times, event types, prices and enumerations is written once and reports problems the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from intentrec.data.errors import FILE_COLUMN, LINE_COLUMN, RejectBook
from intentrec.data.features import MAX_EVENT_TIME_MS
from intentrec.data.schema import (
    CUSTOMER_SCHEMA,
    ENUMS,
    EVENT_SCHEMA,
    EVENT_TYPES,
    ITEM_SCHEMA,
    MIN_SOURCE_TIME_MS,
    conform,
)
from intentrec.errors import DataError

TIME_UNITS = ("s", "ms", "us", "ns", "iso")
_UNIT_TO_MS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
SPLIT_COLUMN = "_split"  # predefined split of a source ('train' / 'val' / 'test'), when it has one

ITEM_FEATURE_COLUMNS = ("category_id", "brand")


@dataclass
class LoadedData:
    """What a loader returns: canonical tables plus provenance for `stats.json`."""

    events: pa.Table
    items: pa.Table | None
    customers: pa.Table | None
    source_files: list[Path]
    rejects: RejectBook
    notes: dict = field(default_factory=dict)


def _blank(values: pd.Series) -> np.ndarray:
    return (values.isna() | (values.astype("string").str.strip() == "")).to_numpy(dtype=bool)


def parse_ids(frame: pd.DataFrame, column: str, book: RejectBook, *, numeric: bool, required: bool) -> None:
    """Strip ids in place; reject blanks when required and non-integers when the format has numeric ids."""
    if column not in frame:
        return
    values = frame[column].astype("string").str.strip()
    blank = _blank(values)
    if required:
        book.check(
            frame,
            blank,
            column,
            "a non-empty id",
            "Fill in the id or remove the row.",
            values=frame[column],
        )
    if numeric:
        not_int = ~blank & ~values.str.fullmatch(r"\d+").fillna(False).to_numpy(dtype=bool)
        book.check(
            frame,
            not_int,
            column,
            "a non-negative integer id (this format has numeric ids)",
            "Fix the id, or load the file with data=generic, which accepts any string id.",
        )
    frame[column] = values.where(~blank, None)


def parse_time(frame: pd.DataFrame, book: RejectBook, *, unit: str) -> None:
    """Parse `event_time` in place to int64 milliseconds since the epoch (UTC), or drop the column."""
    if "event_time" not in frame:
        return
    if unit not in TIME_UNITS:
        raise DataError(
            f"data.time_unit={unit!r} is not one of {list(TIME_UNITS)}; set it to the unit of the timestamp column."
        )
    raw = frame["event_time"]
    blank = _blank(raw)
    if unit == "iso":
        parsed = pd.to_datetime(raw.where(~blank, None), errors="coerce", utc=True, format="ISO8601")
        bad = ~blank & parsed.isna().to_numpy()
        ms = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).fillna(0).to_numpy(dtype="int64")
        expected = "an ISO-8601 date-time such as 2016-05-09T10:15:00Z"
    else:
        number = pd.to_numeric(raw.where(~blank, None), errors="coerce")
        bad = ~blank & number.isna().to_numpy()
        ms = np.round(number.fillna(0).to_numpy(dtype="float64") * _UNIT_TO_MS[unit]).astype("int64")
        expected = f"a number of {unit} since 1970-01-01 UTC (data.time_unit={unit})"
    book.check(frame, bad, "event_time", expected, "Fix the timestamp, or set data.time_unit to the column's unit.")
    book.check(
        frame,
        ~blank & ~bad & (ms < 0),
        "event_time",
        f"a time after 1970-01-01 (read as {unit} since then)",
        "Fix the value, or set data.time_unit to the column's unit.",
        values=raw,
    )
    flag_times(
        book,
        np.where(~blank & ~bad, ms, -1),
        lambda i: (
            frame[FILE_COLUMN].iloc[i],
            f"{book.row_label} {frame[LINE_COLUMN].iloc[i]}, column {book.column_text('event_time')}: "
            f"{raw.iloc[i]!r} read as {unit}",
        ),
        "if that is a unit mistake (seconds read as ms land in 1970), set data.time_unit to the column's unit.",
    )
    if blank.all():
        frame.drop(columns="event_time", inplace=True)
        return
    book.check(
        frame,
        blank & ~bad,
        "event_time",
        "a timestamp (other rows of this dataset have one)",
        "Fill in the time, or drop the column mapping to use file order as time order.",
        values=raw,
    )
    frame["event_time"] = ms


def flag_times(book: RejectBook, ms: np.ndarray, describe, fix: str) -> None:
    """Warn about, and keep, times (ms; negative = none) from 1970 on but before 1990 or from 2100: most
    likely a unit mistake. `describe(i)` gives (file, row i and its value) for the message."""
    outside = (ms >= 0) & ((ms < MIN_SOURCE_TIME_MS) | (ms >= MAX_EVENT_TIME_MS))
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        source, detail = describe(first)
        book.warn(
            f"{source}: {int(outside.sum())} time(s) before 1990 or after 2100, e.g. {detail} is "
            f"{np.datetime64(int(ms[first]), 'ms')}Z. Kept; {fix}"
        )


def parse_enum(
    frame: pd.DataFrame,
    column: str,
    book: RejectBook,
    *,
    mapping: dict | None = None,
    default: str | None = None,
) -> None:
    """Map and check a categorical column against its canonical enumeration."""
    allowed = ENUMS[column]
    if column not in frame:
        if default is not None:
            frame[column] = default
        return
    values = frame[column].astype("string").str.strip()
    if mapping:
        values = values.replace({str(k): str(v) for k, v in mapping.items()})
    blank = _blank(values)
    if default is not None:
        values = values.where(~blank, default)
        blank = np.zeros(len(values), dtype=bool)
    unknown = ~blank & ~values.isin(allowed).to_numpy(dtype=bool)
    hint = (
        "Map source values with data.event_type_map (e.g. {click: view, buy: purchase})."
        if column == "event_type"
        else f"Map or fix the value; {column} may also be left empty."
    )
    book.check(frame, unknown, column, f"one of {list(allowed)}", hint, values=frame[column])
    frame[column] = values.where(~blank, None)


def parse_number(frame: pd.DataFrame, column: str, book: RejectBook, *, minimum: float, integer: bool = False) -> None:
    if column not in frame:
        return
    raw = frame[column]
    blank = _blank(raw)
    number = pd.to_numeric(raw.where(~blank, None), errors="coerce")
    kind = "an integer" if integer else "a number"
    book.check(frame, ~blank & number.isna().to_numpy(), column, kind, "Fix the value or leave it empty.")
    too_small = (number < minimum).fillna(False).to_numpy(dtype=bool)
    if integer:
        too_small = too_small | ((number % 1) != 0).fillna(False).to_numpy(dtype=bool)
    book.check(frame, too_small, column, f"{kind} >= {minimum:g}", "Fix the value or leave it empty.")
    frame[column] = number


def canonicalize(
    frame: pd.DataFrame,
    book: RejectBook,
    *,
    numeric_ids: bool = False,
    time_unit: str = "s",
    event_type_map: dict | None = None,
    default_event_type: str = "view",
) -> pd.DataFrame:
    """Parse and validate a raw frame of strings; returns the good rows with canonical dtypes.

    The frame must have `FILE_COLUMN`, `LINE_COLUMN`, `item_id` and `session_id` or `customer_id`;
    `event_time` may be pre-parsed int64 milliseconds (then `time_unit='ms'`).
    """
    source = frame[FILE_COLUMN].iloc[0] if len(frame) else "<empty>"
    if "item_id" not in frame:
        raise DataError(
            f"{source}: no item id column; columns found: {sorted(c for c in frame if not c.startswith('_'))}. Map it with data.columns.item_id."
        )
    if "session_id" not in frame and "customer_id" not in frame:
        raise DataError(
            f"{source}: needs a session or user column to group events into sequences; columns found: "
            f"{sorted(c for c in frame if not c.startswith('_'))}. Map one with data.columns.session_id or data.columns.user_id."
        )
    if default_event_type not in EVENT_TYPES:
        raise DataError(f"data.default_event_type={default_event_type!r} is not one of {list(EVENT_TYPES)}.")
    parse_ids(frame, "item_id", book, numeric=numeric_ids, required=True)
    for column in ("session_id", "customer_id"):
        parse_ids(frame, column, book, numeric=numeric_ids, required=False)
    for column in ("device_id", "category_id", "brand", "region", "event_id"):
        parse_ids(frame, column, book, numeric=False, required=False)
    if "session_id" in frame and "customer_id" in frame:
        neither = frame["session_id"].isna().to_numpy() & frame["customer_id"].isna().to_numpy()
        book.check(frame, neither, "session_id", "a session id or a user id", "Fill in one of them.")
    elif "session_id" in frame:
        parse_ids(frame, "session_id", book, numeric=False, required=True)
    else:
        parse_ids(frame, "customer_id", book, numeric=False, required=True)
    parse_time(frame, book, unit=time_unit)
    parse_enum(frame, "event_type", book, mapping=event_type_map, default=default_event_type)
    for column in ("channel", "device_type", "referrer"):
        parse_enum(frame, column, book)
    parse_number(frame, "price", book, minimum=0.0)
    parse_number(frame, "quantity", book, minimum=1, integer=True)
    frame = book.apply(frame)
    if "event_id" not in frame or frame["event_id"].isna().any():
        generated = (
            frame[FILE_COLUMN].map(lambda p: Path(str(p)).name).astype(str) + ":" + frame[LINE_COLUMN].astype(str)
        )
        frame["event_id"] = frame["event_id"].fillna(generated) if "event_id" in frame else generated
    return frame


def events_table(frame: pd.DataFrame) -> pa.Table:
    """Canonical Arrow events table from a frame returned by `canonicalize` (keeps `_split` if present)."""
    columns = {}
    for f in EVENT_SCHEMA:
        if f.name not in frame:
            continue
        if f.name == "event_time":
            columns[f.name] = pa.array(frame[f.name].to_numpy(dtype="int64"), pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            )
        elif f.name == "quantity":
            columns[f.name] = pa.array(frame[f.name].astype("Int32"), f.type, from_pandas=True)
        else:
            columns[f.name] = pa.array(frame[f.name], f.type, from_pandas=True)
    if SPLIT_COLUMN in frame:
        columns[SPLIT_COLUMN] = pa.array(frame[SPLIT_COLUMN].astype(str), pa.string())
    return conform(pa.table(columns), EVENT_SCHEMA)


def items_from_events(frame: pd.DataFrame, extra: pd.DataFrame | None = None) -> pa.Table | None:
    """Item table from per-event features (first non-empty category/brand, median price per item).

    `extra` (item_id + features, e.g. Diginetica's category map) takes precedence where it has a value.
    """
    present = [c for c in ITEM_FEATURE_COLUMNS if c in frame]
    has_price = "price" in frame
    if not present and not has_price and extra is None:
        return None
    grouped = frame.groupby("item_id", sort=True)
    items = pd.DataFrame(index=grouped.size().index)
    for column in present:
        items[column] = grouped[column].first()
    if has_price:
        items["price"] = grouped["price"].median()
    if extra is not None:
        extra = extra.drop_duplicates("item_id").set_index("item_id")
        for column in extra.columns:
            known = extra[column].reindex(items.index)
            items[column] = known.combine_first(items[column]) if column in items else known
    items = items.reset_index()
    return conform(pa.Table.from_pandas(items, preserve_index=False), ITEM_SCHEMA)


def customers_table(frame: pd.DataFrame) -> pa.Table:
    return conform(pa.Table.from_pandas(frame, preserve_index=False), CUSTOMER_SCHEMA)
