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

import pyarrow as pa
import pyarrow.parquet as pq

from intentrec.data.schema import CUSTOMER_SCHEMA, EVENT_SCHEMA
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
