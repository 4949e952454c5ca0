"""Loaders for public e-commerce formats. They never download: every path comes from config.

Each loader reads its files into a frame of strings with canonical column names and source line
numbers, then `data.canonical.canonicalize` parses and validates it. Formats:

- `diginetica`: CIKM Cup 2016 item views + purchases + product categories, joined into one event set.
- `yoochoose`: RecSys Challenge 2015 click files (session-rec layout), keeping the given train/test
  files as a predefined temporal split.
- `sasrec_lines`: `user item` per line, file order = time order (SASRec's preprocessed Amazon data).
- `sequence_lines`: `user item1 item2 ...` per line.
- `recbole`: RecBole atomic `.inter` files (`field:type` headers, tab-separated).
- `csv` / `parquet`: any table, with a column mapping in config.
- `canonical`: a folder with `events.parquet` (+ `items.parquet`, `customers.parquet`) in the
  canonical schema, as the synthetic shop and the event collector write it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from intentrec.data.canonical import (
    SPLIT_COLUMN,
    LoadedData,
    canonicalize,
    events_table,
    flag_times,
    items_from_events,
)
from intentrec.data.errors import FILE_COLUMN, LINE_COLUMN, RejectBook
from intentrec.data.schema import (
    CUSTOMER_SCHEMA,
    ENUMS,
    EVENT_SCHEMA,
    EVENT_TYPES,
    FEEDBACK_TYPES,
    ITEM_SCHEMA,
    RECOMMENDATION_COLUMNS,
    conform,
)
from intentrec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

NA_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")

# Generic mapping keys (config names) -> canonical column names.
GENERIC_KEYS = {
    "user_id": "customer_id",
    "customer_id": "customer_id",
    "session_id": "session_id",
    "item_id": "item_id",
    "timestamp": "event_time",
    "event_type": "event_type",
    "category_id": "category_id",
    "brand": "brand",
    "price": "price",
    "quantity": "quantity",
    "device_id": "device_id",
    "device_type": "device_type",
    "channel": "channel",
    "referrer": "referrer",
    "region": "region",
    "event_id": "event_id",
}


def _require_file(path: Path, key: str) -> Path:
    if not path.is_file():
        raise DataError(
            f"{key}={str(path)!r} does not exist or is not a file. Point {key} at the file "
            f"(relative paths are resolved from the current directory)."
        )
    return path


def read_delimited(
    path: Path, sep: str, *, key: str, header: bool = True, names: list[str] | None = None
) -> pd.DataFrame:
    """Read a delimited text file as strings, with `_source_file` and 1-based `_source_line`.

    An empty, binary or ragged file is a DataError that says what was found and what to do."""
    _require_file(path, key)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); point {key} at the file that holds the events.")
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith(b"PAR1"):
        raise DataError(f"{path} is a Parquet file, not delimited text; set data.format=parquet.")
    if b"\x00" in head:
        raise DataError(
            f"{path} is not a text file (it holds NUL bytes: binary or UTF-16 data); export it as UTF-8 "
            "CSV, or set data.format to the file's format."
        )
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            names=names,
            dtype=str,
            keep_default_na=False,
            na_values=list(NA_VALUES),
            skip_blank_lines=False,
            engine="c" if len(sep) == 1 or sep == r"\s+" else "python",
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} has no header or rows; point {key} at the file that holds the events.") from None
    except pd.errors.ParserError as error:
        raise DataError(
            f"{path}: {_parser_message(error)}; every line needs the header's number of fields "
            f"(data.sep={sep!r}: is that the file's separator? A field with the separator in it must be quoted)."
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: byte {error.start} is not UTF-8 ({error.reason}); re-export the file as UTF-8."
        ) from None
    frame[FILE_COLUMN] = str(path)
    frame[LINE_COLUMN] = np.arange(len(frame), dtype=np.int64) + (2 if header else 1)
    return frame


def _parser_message(error: Exception) -> str:
    """pandas' tokenizer message ("Error tokenizing data. C error: Expected 3 fields in line 5, saw 4")
    without its implementation prefix."""
    text = str(error).strip()
    return text.split("C error: ", 1)[-1].rstrip(". \n") if "C error: " in text else text.splitlines()[0]


def read_parquet(path: Path, key: str) -> pa.Table:
    """A Parquet file as an Arrow table; an empty, truncated or non-Parquet file is a DataError."""
    _require_file(path, key)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); point {key} at the Parquet file that holds the data.")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"PAR1":
        hint = "it looks like text: set data.format=csv" if magic.isascii() else "it is not a Parquet file"
        raise DataError(f"{path} does not start with Parquet's magic bytes ({hint}).")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(
            f"{path} is not a readable Parquet file ({str(error).splitlines()[0]}); it may be truncated: write it again."
        ) from None


def _rename(frame: pd.DataFrame, mapping: Mapping[str, str | None], path: Path, key_prefix: str) -> pd.DataFrame:
    """Rename source columns to canonical names; a mapped column that is missing is an error."""
    renames = {}
    for key, source_column in mapping.items():
        if source_column is None:
            continue
        if source_column not in frame.columns:
            found = [c for c in frame.columns if not c.startswith("_")]
            raise DataError(
                f"{path}: has no column {source_column!r} ({key_prefix}.{key}); columns found: {found}. "
                f"Fix {key_prefix}.{key} or the file's header."
            )
        renames[source_column] = GENERIC_KEYS.get(key, key)
    keep = list(renames) + [FILE_COLUMN, LINE_COLUMN] + ([SPLIT_COLUMN] if SPLIT_COLUMN in frame else [])
    return frame[keep].rename(columns=renames)


def _finish(
    frames: list[pd.DataFrame], files: list[Path], book: RejectBook, *, items_extra=None, notes=None, **parse
) -> LoadedData:
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    frame = canonicalize(frame, book, **parse)
    if frame.empty:
        raise DataError(
            f"{', '.join(map(str, files))}: no valid events left after parsing ({book.count} problems; see rejects.csv)."
        )
    return LoadedData(
        events=events_table(frame),
        items=items_from_events(frame, items_extra),
        customers=None,
        source_files=files,
        rejects=book,
        notes=notes or {},
    )


def load_diginetica(cfg: Mapping, book: RejectBook) -> LoadedData:
    """Item views sample + purchases + categories. Sessions are the sequences (RecBole's protocol).

    Time is `eventdate` (UTC midnight) plus `timeframe` milliseconds. `purchases: all` joins every
    purchase row; `in_view_sessions` keeps purchases of sessions that also have views; `none` skips them.
    """
    root = Path(cfg["path"]).resolve()
    views_path = root / cfg.get("views_file", "sample_train-item-views.csv")
    frame = read_delimited(views_path, ";", key="data.path (views file)")
    frames = [
        _diginetica_frame(
            frame,
            views_path,
            "data.views_file",
            "view",
            {
                "session_id": "session_id",
                "user_id": "user_id",
                "item_id": "item_id",
                "timeframe": "timeframe",
                "eventdate": "eventdate",
            },
            book,
        )
    ]
    files = [views_path]
    mode = cfg.get("purchases", "all")
    if mode not in ("all", "in_view_sessions", "none"):
        raise ConfigError(f"data.purchases={mode!r}; expected one of ['all', 'in_view_sessions', 'none'].")
    notes = {}
    if mode != "none":
        purchases_path = root / cfg.get("purchases_file", "train-purchases.csv")
        raw = read_delimited(purchases_path, ";", key="data.path (purchases file)")
        purchases = _diginetica_frame(
            raw,
            purchases_path,
            "data.purchases_file",
            "purchase",
            {
                "session_id": "sessionId",
                "user_id": "userId",
                "item_id": "itemId",
                "timeframe": "timeframe",
                "eventdate": "eventdate",
            },
            book,
        )
        notes["purchase_rows_in_file"] = int(len(purchases))
        notes["purchase_exact_duplicate_rows_kept"] = int(raw.drop(columns=[LINE_COLUMN]).duplicated().sum())
        if mode == "in_view_sessions":
            purchases = purchases[purchases["session_id"].isin(frames[0]["session_id"])]
        frames.append(purchases)
        files.append(purchases_path)
    extra = None
    categories_file = cfg.get("categories_file", "product-categories.csv")
    if categories_file:
        categories_path = root / categories_file
        categories = read_delimited(categories_path, ";", key="data.path (categories file)")
        categories = _rename(
            categories,
            {"item_id": "itemId", "category_id": "categoryId"},
            categories_path,
            "data.categories_file",
        )
        extra = categories[["item_id", "category_id"]].astype("string")
        extra["item_id"] = extra["item_id"].str.strip()
        files.append(categories_path)
    # `timeframe` counts from the session's first event, and `eventdate` is the event's own date (in
    # the purchases file one session spans up to 40 dates). Time = the session's first date +
    # timeframe: exact order within a session, and the right date for 87% of purchase rows (the rest
    # are within a few days).
    joined = pd.concat(frames, ignore_index=True)
    session_start = joined.groupby("session_id")["_date_ms"].transform("min")
    joined["event_time"] = (session_start + joined["_offset_ms"]).astype("string")
    notes["time"] = "session's first eventdate (UTC midnight) + timeframe (ms)"
    return _finish(
        [joined.drop(columns=["_date_ms", "_offset_ms"])],
        files,
        book,
        items_extra=extra,
        notes=notes,
        numeric_ids=True,
        time_unit="ms",
    )


def _diginetica_frame(frame, path, key, event_type, columns, book):
    frame = frame.copy()
    missing = [c for c in columns.values() if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing} ({key}); columns found: {[c for c in frame.columns if not c.startswith('_')]}."
        )
    date = pd.to_datetime(frame[columns["eventdate"]], errors="coerce", format="%Y-%m-%d", utc=True)
    offset = pd.to_numeric(frame[columns["timeframe"]], errors="coerce")
    book.check(
        frame,
        date.isna().to_numpy(),
        "eventdate",
        "a date YYYY-MM-DD",
        "Fix the date.",
        values=frame[columns["eventdate"]],
    )
    book.check(
        frame,
        (offset.isna() | (offset < 0)).to_numpy(),
        "timeframe",
        "a non-negative integer (ms within the session)",
        "Fix the offset.",
        values=frame[columns["timeframe"]],
    )
    epoch_ms = ((date - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).fillna(0).astype("int64")
    out = pd.DataFrame(
        {
            "session_id": frame[columns["session_id"]],
            "customer_id": frame[columns["user_id"]],
            "item_id": frame[columns["item_id"]],
            "_date_ms": epoch_ms,
            "_offset_ms": offset.fillna(0).astype("int64"),
            "event_type": event_type,
            FILE_COLUMN: frame[FILE_COLUMN],
            LINE_COLUMN: frame[LINE_COLUMN],
        }
    )
    if "_rejected" in frame:
        out["_rejected"] = frame["_rejected"].to_numpy()
    return out


def load_yoochoose(cfg: Mapping, book: RejectBook) -> LoadedData:
    """`train_full` + `test` click files; sessions in `train_valid` become the validation split."""
    root = Path(cfg["path"]).resolve()
    train_path = root / cfg.get("train_file", "yoochoose-clicks-100k_train_full.txt")
    test_path = root / cfg.get("test_file", "yoochoose-clicks-100k_test.txt")
    mapping = {"session_id": "SessionId", "item_id": "ItemId", "timestamp": "Time"}
    train = _rename(read_delimited(train_path, "\t", key="data.train_file"), mapping, train_path, "data.train_file")
    test = _rename(read_delimited(test_path, "\t", key="data.test_file"), mapping, test_path, "data.test_file")
    train[SPLIT_COLUMN] = "train"
    test[SPLIT_COLUMN] = "test"
    files = [train_path, test_path]
    valid_file = cfg.get("valid_file")
    if valid_file:
        valid_path = root / valid_file
        valid = read_delimited(valid_path, "\t", key="data.valid_file")
        valid_sessions = set(valid["SessionId"].dropna().str.strip())
        train.loc[train["session_id"].str.strip().isin(valid_sessions).to_numpy(), SPLIT_COLUMN] = "val"
        files.append(valid_path)
    return _finish([train, test], files, book, numeric_ids=True, time_unit="s")


def load_sasrec_lines(cfg: Mapping, book: RejectBook) -> LoadedData:
    """`user item` per line (space-separated, no header); file order is time order."""
    path = Path(cfg["path"]).resolve()
    frame = read_delimited(path, r"\s+" if cfg.get("sep") is None else cfg["sep"], key="data.path", header=False)
    if frame.shape[1] - 2 != 2:
        raise DataError(
            f"{path}: expected 2 fields per line ('user item'), found {frame.shape[1] - 2}. Use data.format=sequence_lines for 'user item1 item2 ...'."
        )
    frame.columns = ["customer_id", "item_id", FILE_COLUMN, LINE_COLUMN]
    return _finish(
        [frame],
        [path],
        book,
        numeric_ids=bool(cfg.get("numeric_ids", True)),
        default_event_type=cfg.get("default_event_type", "view"),
    )


def load_sequence_lines(cfg: Mapping, book: RejectBook) -> LoadedData:
    """`user item1 item2 ...` per line; items in line order are the user's events in time order."""
    path = _require_file(Path(cfg["path"]).resolve(), "data.path")
    lines = pd.Series(path.read_text().splitlines(), dtype="string")
    tokens = lines.str.split()
    count = tokens.str.len().fillna(0).astype(int)
    frame = pd.DataFrame({"tokens": tokens, LINE_COLUMN: np.arange(1, len(lines) + 1)})
    frame[FILE_COLUMN] = str(path)
    short = (count < 2).to_numpy()
    book.check(
        frame,
        short,
        "line",
        "'user item1 [item2 ...]' (at least a user and one item)",
        "Fix or remove the line.",
        values=lines,
    )
    frame = book.apply(frame)
    frame["customer_id"] = frame["tokens"].str[0]
    frame["tokens"] = frame["tokens"].str[1:]
    frame = frame.explode("tokens", ignore_index=True).rename(columns={"tokens": "item_id"})
    return _finish(
        [frame],
        [path],
        book,
        numeric_ids=bool(cfg.get("numeric_ids", False)),
        default_event_type=cfg.get("default_event_type", "view"),
    )


def load_recbole(cfg: Mapping, book: RejectBook) -> LoadedData:
    """RecBole atomic `.inter`: tab-separated, header `name:type`; user/session, item, optional timestamp."""
    path = Path(cfg["path"]).resolve()
    frame = read_delimited(path, "\t", key="data.path")
    frame.columns = [c.split(":", 1)[0] if not c.startswith("_") else c for c in frame.columns]
    mapping = dict(cfg.get("columns") or {})
    if not any(v for v in mapping.values()):
        mapping = {
            "user_id": "user_id" if "user_id" in frame else None,
            "session_id": "session_id" if "session_id" in frame else None,
            "item_id": "item_id",
            "timestamp": "timestamp" if "timestamp" in frame else None,
        }
    frame = _rename(frame, mapping, path, "data.columns")
    return _finish(
        [frame],
        [path],
        book,
        numeric_ids=False,
        time_unit=cfg.get("time_unit", "s"),
        default_event_type=cfg.get("default_event_type", "view"),
    )


def resolve_columns(columns: list[str], mapping: Mapping[str, str | None]) -> tuple[dict, dict, list[str]]:
    """(mapping, found, unused): the mapping with every unset key that the file names itself filled in
    (a column called like the key or its canonical name, in any case: `timestamp` or `event_time`,
    `user_id` or `customer_id`), the keys found that way, and the file's columns nothing maps."""
    mapping = {key: mapping.get(key) for key in GENERIC_KEYS}
    by_name = {}
    for column in columns:
        by_name.setdefault(column.lower(), column)
    taken = {v for v in mapping.values() if v}
    targets = {GENERIC_KEYS[k] for k, v in mapping.items() if v}
    found = {}
    for key, value in mapping.items():
        if value or GENERIC_KEYS[key] in targets:
            continue
        for name in dict.fromkeys((key, GENERIC_KEYS[key])):
            column = by_name.get(name)
            if column is not None and column not in taken:
                mapping[key] = found[key] = column
                taken.add(column)
                targets.add(GENERIC_KEYS[key])
                break
    unused = [c for c in columns if c not in taken]
    return mapping, found, unused


def load_table(cfg: Mapping, book: RejectBook) -> LoadedData:
    """Generic CSV or Parquet. Columns named like a mapping key or its canonical name are used without
    mapping; others are mapped with `data.columns.<key>: <source column>`; the rest are listed in a
    warning. No timestamp = file order."""
    path = Path(cfg["path"]).resolve()
    if cfg["format"] == "csv":
        frame = read_delimited(path, cfg.get("sep", ","), key="data.path")
    else:
        frame = read_parquet(path, "data.path").to_pandas().astype("string")
        frame[FILE_COLUMN] = str(path)
        frame[LINE_COLUMN] = np.arange(1, len(frame) + 1, dtype=np.int64)  # 1-based row number
        book.row_label = "row"
    given = {k: v for k, v in (cfg.get("columns") or {}).items()}
    unknown = sorted(set(given) - set(GENERIC_KEYS))
    if unknown:
        raise ConfigError(f"data.columns has unknown key(s) {unknown}; expected keys from {sorted(GENERIC_KEYS)}.")
    source_columns = [c for c in frame.columns if c not in (FILE_COLUMN, LINE_COLUMN)]
    mapping, found, unused = resolve_columns(source_columns, given)
    if not mapping.get("item_id"):
        raise ConfigError(
            f"data.columns.item_id is not set and {path.name} has no column named item_id; name the file's item "
            f"id column, e.g. data.columns.item_id=sku (columns found: {source_columns})."
        )
    if found:
        log.info("%s: columns used by their names: %s", path.name, ", ".join(f"{c} -> {k}" for k, c in found.items()))
    if unused:
        book.warn(
            f"{path.name}: column(s) {unused} are not used. Map one with data.columns.<key>=<column> (keys: "
            f"{', '.join(sorted(GENERIC_KEYS))}); python -m data.prepare ... explain=true shows the mapping "
            "without writing anything."
        )
    frame = _rename(frame, mapping, path, "data.columns")
    book.source_names = {GENERIC_KEYS[k]: v for k, v in mapping.items() if v}
    return _finish(
        [frame],
        [path],
        book,
        notes={
            "columns": {v: GENERIC_KEYS[k] for k, v in mapping.items() if v},
            "columns_found_by_name": sorted(found.values()),
            "columns_not_used": unused,
        },
        numeric_ids=bool(cfg.get("numeric_ids", False)),
        time_unit=cfg.get("time_unit", "s"),
        event_type_map=dict(cfg.get("event_type_map") or {}),
        default_event_type=cfg.get("default_event_type", "view"),
    )


def load_canonical(folder: Path, book: RejectBook | None = None) -> LoadedData:
    """A folder in the canonical layout: `events.parquet` (+ optional `items.parquet`, `customers.parquet`).

    This is what the synthetic shop writes and what the event collector exports. Types are cast to
    the canonical schema; values are checked row by row like any other source.
    """
    folder = Path(folder).resolve()
    book = book or RejectBook(strict=True)
    events_path = _require_file(folder / "events.parquet", "data.path (events.parquet in the folder)")
    events = validate_canonical(
        _cast(read_parquet(events_path, "data.path"), EVENT_SCHEMA, events_path), str(events_path), book
    )
    events, feedback = actions_only(events)
    files = [events_path]
    tables = {}
    for name, schema in (("items", ITEM_SCHEMA), ("customers", CUSTOMER_SCHEMA)):
        path = folder / f"{name}.parquet"
        tables[name] = _cast(read_parquet(path, "data.path"), schema, path) if path.is_file() else None
        if tables[name] is not None:
            files.append(path)
    return LoadedData(
        events=events,
        items=tables["items"],
        customers=tables["customers"],
        source_files=files,
        rejects=book,
        notes={"canonical_dir": str(folder), **({"feedback_events_skipped": feedback} if feedback else {})},
    )


def actions_only(events: pa.Table) -> tuple[pa.Table, int]:
    """The shopper actions of a canonical events table, without the feedback on served lists
    (FEEDBACK_TYPES rows and the RECOMMENDATION_COLUMNS: what attribution reads, not what a model
    learns intent from); and how many feedback rows were set aside. A version-1 table passes unchanged."""
    feedback = 0
    if "event_type" in events.column_names:
        mask = pc.fill_null(pc.is_in(events["event_type"], value_set=pa.array(FEEDBACK_TYPES)), False)
        feedback = int(pc.sum(mask).as_py() or 0)
        if feedback:
            events = events.filter(pc.invert(mask))
    return events.drop_columns([c for c in RECOMMENDATION_COLUMNS if c in events.column_names]), feedback


def _cast(table: pa.Table, schema: pa.Schema, path: Path) -> pa.Table:
    for field in schema:
        if field.name in table.column_names and not table.schema.field(field.name).type.equals(field.type):
            try:
                table[field.name].cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise DataError(
                    f"{path}: column '{field.name}' has type {table.schema.field(field.name).type}, which does not "
                    f"convert to the canonical {field.type} ({error}). Write it as {field.type}."
                ) from None
    return conform(table, schema)


def validate_canonical(events: pa.Table, source: str, book: RejectBook | None = None) -> pa.Table:
    """Row checks on a canonical table: required ids, enumerations, prices, quantities, times (before 1970
    refused; before 1990 or from 2100 flagged in `book`)."""
    names = events.column_names
    if "item_id" not in names:
        raise DataError(f"{source}: has no 'item_id' column; columns found: {names}.")
    if "session_id" not in names and "customer_id" not in names:
        raise DataError(f"{source}: needs a session_id or customer_id column; columns found: {names}.")
    checks = [("item_id", pc.is_null(events["item_id"]), "a non-empty item id")]
    group = [events[c] for c in ("session_id", "customer_id") if c in names]
    checks.append(
        (
            "session_id" if "session_id" in names else "customer_id",
            pc.and_(pc.is_null(group[0]), pc.is_null(group[-1])),
            "a session id or a customer id",
        )
    )
    # Feedback rows (impressions, clicks) are valid canonical rows; the loader sets them aside afterwards.
    for column, allowed in {**ENUMS, "event_type": EVENT_TYPES + FEEDBACK_TYPES}.items():
        if column in names:
            unknown = pc.and_(
                pc.is_valid(events[column]), pc.invert(pc.is_in(events[column], value_set=pa.array(allowed)))
            )
            checks.append((column, unknown, f"one of {list(allowed)}"))
    if "event_type" in names:
        checks.append(("event_type", pc.is_null(events["event_type"]), f"one of {list(EVENT_TYPES)}"))
    if "price" in names:
        checks.append(("price", pc.fill_null(pc.less(events["price"], 0), False), "a number >= 0"))
    if "quantity" in names:
        checks.append(("quantity", pc.fill_null(pc.less(events["quantity"], 1), False), "an integer >= 1"))
    if "event_time" in names:
        ms = pc.cast(events["event_time"], pa.int64())
        checks.append(("event_time", pc.fill_null(pc.less(ms, 0), False), "a time after 1970-01-01"))
    for column, bad, expected in checks:
        if pc.any(bad).as_py():
            row = int(pc.index(bad, True).as_py())
            value = events[column][row].as_py()
            raise DataError(
                f"{source}, row {row + 1}, column '{column}': got {'an empty value' if value is None else repr(value)}; "
                f"expected {expected}. Fix the writer of this file ({int(pc.sum(bad).as_py())} row(s) affected)."
            )
    if "event_time" in names and book is not None:
        flag_times(
            book,
            pc.cast(events["event_time"], pa.int64()).fill_null(-1).to_numpy(),
            lambda i: (source, f"row {i + 1}, column 'event_time'"),
            "a unit mistake in the writer of this file?",
        )
    return events


LOADERS = {
    "diginetica": load_diginetica,
    "yoochoose": load_yoochoose,
    "sasrec_lines": load_sasrec_lines,
    "sequence_lines": load_sequence_lines,
    "recbole": load_recbole,
    "csv": load_table,
    "parquet": load_table,
    "canonical": lambda cfg, book: load_canonical(Path(cfg["path"]), book),
}


def load(cfg: Mapping) -> LoadedData:
    """Load the dataset described by a `data` config (not the synthetic shop: see `data.synthetic`)."""
    fmt = cfg.get("format")
    if fmt not in LOADERS:
        raise ConfigError(f"data.format={fmt!r}; expected one of {sorted(LOADERS) + ['synthetic']}.")
    book = RejectBook(strict=bool(cfg.get("strict", True)))
    return LOADERS[fmt](cfg, book)
