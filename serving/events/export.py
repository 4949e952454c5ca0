"""Collector events -> the canonical Parquet layout that `data.prepare` reads (`data.format=canonical`).

    python -m serving.events export store=sqlite:///artifacts/events/events.db out=artifacts/events/export

Writes `<out>/events.parquet` (every stored event, arrival order, canonical schema), and
`<out>/customers.parquet` (known customers with their loyalty flag). Copy the shop's catalogue to
`<out>/items.parquet` (or pass `items`) for content features; then
`python -m data.prepare data=canonical data.path=<out>` prepares it like any other source.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from intentrec.data.schema import CUSTOMER_SCHEMA, EVENT_SCHEMA
from intentrec.errors import ConfigError, DataError
from intentrec.serving.events.schema import EVENT_FIELDS
from intentrec.serving.events.store import EventStore


def export_events(store: EventStore, out: str | Path, items: str | Path | None = None, chunk: int = 100_000) -> dict:
    """Write the canonical tables to `out`; returns counts and paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "events.parquet"
    partial = out / "events.parquet.partial"
    written = 0
    with pq.ParquetWriter(partial, EVENT_SCHEMA) as writer:
        rows: list[dict] = []
        for event in store.iter_events():
            rows.append(event)
            if len(rows) >= chunk:
                writer.write_table(_table(rows))
                written += len(rows)
                rows = []
        if rows or written == 0:
            writer.write_table(_table(rows))
            written += len(rows)
    partial.replace(target)  # a reader never sees a half-written file
    customers = store.customers()
    loyalty = [store.traits(c).get("loyalty_member") for c in customers]
    pq.write_table(
        pa.table({"customer_id": customers, "loyalty_member": loyalty}, schema=CUSTOMER_SCHEMA),
        out / "customers.parquet",
    )
    if items is not None:
        shutil.copyfile(items, out / "items.parquet")
    return {"events": written, "customers": len(customers), "out": str(out)}


def _table(rows: list[dict]) -> pa.Table:
    columns = {}
    for field in EVENT_SCHEMA:
        values = [row.get(field.name) for row in rows]
        if field.name == "event_time":
            columns[field.name] = pa.array(values, pa.int64()).cast(field.type)
        else:
            columns[field.name] = pa.array(values, field.type)
    assert set(columns) == set(EVENT_FIELDS)
    return pa.table(columns, schema=EVENT_SCHEMA)


# The columns every analysis of stored events reads (attribution, report, off-policy add their own).
EVENT_KEYS = ("event_id", "event_time", "session_id", "customer_id", "device_id", "item_id", "event_type")


def source_name(source) -> str:
    """How an analysis names what it read: the Parquet path, or the store's URL without credentials."""
    return str(source) if isinstance(source, str | Path) else source.url.split("@")[-1]


def shopper_of(frame: pd.DataFrame) -> pd.Series:
    """Each event's shopper as the experiment unit: `customer:<id>`, else `device:<id>`, else `session:<id>`."""
    return (
        ("customer:" + frame["customer_id"])
        .fillna("device:" + frame["device_id"])
        .fillna("session:" + frame["session_id"])
    )


def read_frame(source, columns: tuple[str, ...], event_types: tuple[str, ...] | None = None) -> pd.DataFrame:
    """`columns` of the events of a store (an `EventStore`) or of exported Parquet (a path: `events.parquet`
    or a folder holding it), any schema version (a missing column is empty); only `event_types` when
    given; `event_time` as epoch milliseconds; one row per event_id."""
    if isinstance(source, str | Path):
        path = Path(source)
        path = path / "events.parquet" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"events={path}: no such file; export the store first (python -m serving.events export)")
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"events={path}: not a Parquet file ({error})") from None
        if "event_type" not in names or "item_id" not in names:
            raise DataError(f"events={path}: has columns {names}; expected the canonical events schema")
        filters = [("event_type", "in", list(event_types))] if event_types else None
        table = pq.read_table(path, columns=[c for c in columns if c in names], filters=filters)
        frame = pd.DataFrame({c: table[c].to_pandas() if c in names else None for c in columns})
        if "event_time" in names and "event_time" in columns:
            frame["event_time"] = pc.cast(
                pc.cast(table["event_time"], pa.timestamp("ms", tz="UTC")), pa.int64()
            ).to_numpy()
    else:
        frame = pd.concat(
            [pd.DataFrame(chunk, columns=list(columns)) for chunk in source.column_chunks(columns, event_types)]
            or [pd.DataFrame(columns=list(columns))],
            ignore_index=True,
        )
    for column in ("price", "quantity", "position", "propensity"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column])
    if "event_time" in frame:
        frame["event_time"] = frame["event_time"].astype("int64")
    return frame.drop_duplicates("event_id") if "event_id" in frame else frame


def import_events(source: str | Path, store: EventStore, chunk: int = 10_000) -> dict:
    """Store the events of canonical Parquet (`events.parquet`, or a folder holding it and optionally
    `customers.parquet`, whose loyalty flags become the customers' traits): the inverse of `export_events`, for a
    backfill of past events or a shop's history. Every event is validated as the collector validates it
    (`serving.events.schema.validate_events`); bad rows are reported by row number, the good ones stored; an
    event_id stored before is not stored again."""
    from intentrec.serving.events.schema import validate_events

    path = Path(source)
    folder = path if path.is_dir() else path.parent
    path = path / "events.parquet" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"events={path}: no such file; give canonical events.parquet or the folder holding it")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"events={path}: not a Parquet file ({error})") from None
    missing = sorted({"event_id", "event_time", "item_id", "event_type"} - set(parquet.schema_arrow.names))
    if missing:
        raise DataError(f"events={path}: lacks the column(s) {missing} of the canonical events schema")
    accepted = duplicates = row = 0
    rejected, conflicts = [], []
    for batch in parquet.iter_batches(batch_size=chunk):
        table = pa.Table.from_batches([batch])
        if pa.types.is_timestamp(table.schema.field("event_time").type):
            times = pc.cast(pc.cast(table["event_time"], pa.timestamp("ms", tz="UTC")), pa.int64())
            table = table.set_column(table.schema.get_field_index("event_time"), "event_time", times)
        raw = [{k: v for k, v in event.items() if v is not None and k in EVENT_FIELDS} for event in table.to_pylist()]
        events, bad = validate_events(raw, 0)
        rejected += [{"row": row + r.index, "field": r.field, "value": r.value, "reason": r.reason} for r in bad]
        result = store.append(events)
        accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
        conflicts += [{"event_id": c["event_id"], "fields": c["fields"]} for c in result.conflicts]
        row += len(raw)
    customers = 0
    if (folder / "customers.parquet").is_file():
        table = pq.read_table(folder / "customers.parquet")
        if "customer_id" in table.column_names and "loyalty_member" in table.column_names:
            for customer, loyal in zip(table["customer_id"].to_pylist(), table["loyalty_member"].to_pylist()):
                if customer and loyal is not None:
                    store.identify(str(customer), traits={"loyalty_member": bool(loyal)})
                    customers += 1
    return {
        "rows": row,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": rejected[:100],
        "rejected_count": len(rejected),
        "conflicts": conflicts[:100],
        "customers": customers,
    }
