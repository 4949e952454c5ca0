"""Point-of-sale exports -> `store_purchase` events (omnichannel).

    python -m serving.events import-pos file=pos.csv store=sqlite:///artifacts/events/events.db

The file is a CSV with a header and the columns `receipt_id, time, item_id` and optionally
`line, customer_id, quantity, price, store_id`. `time` is ISO 8601 (UTC when no offset) or epoch
milliseconds; `customer_id` is the loyalty card or account (blank for an anonymous purchase);
`store_id` becomes the event's `region`. Each line becomes one event with the id
`pos:<receipt_id>:<line>` (line = the `line` column, else the line's position within its receipt),
so importing the same file twice stores nothing new. Bad lines are reported with their line number
and reason; the good ones are stored.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from intentrec.errors import DataError
from intentrec.serving.events.schema import validate_events
from intentrec.serving.events.store import EventStore, now_ms

REQUIRED = ("receipt_id", "time", "item_id")
OPTIONAL = ("line", "customer_id", "quantity", "price", "store_id")


def _number(text: str, kind):
    text = text.strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        return text  # validation reports it with the field name


def pos_events(path: str | Path) -> tuple[list[dict], list[dict], list[int]]:
    """Parse the file: (valid events, rejects with line numbers, the line of each valid event)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"POS file {path} does not exist; pass file=<path of the POS export (CSV)>")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise DataError(
                f"{path}: header {header} lacks {missing}; expected columns {list(REQUIRED)} "
                f"(and optionally {list(OPTIONAL)})"
            )
        positions: dict[str, int] = defaultdict(int)
        raw, lines = [], []
        for number, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            receipt = row["receipt_id"]
            positions[receipt] += 1
            line = row.get("line") or str(positions[receipt])
            time = row["time"]
            event = {
                "event_id": f"pos:{receipt}:{line}" if receipt else "",
                "event_time": int(time) if time.isdigit() else time,
                "item_id": row["item_id"],
                "event_type": "store_purchase",
                "channel": "store",
                "customer_id": row.get("customer_id") or None,
                # An anonymous purchase still needs an owner: its receipt acts as the session.
                "session_id": f"pos:{receipt}" if receipt else None,
                "quantity": _number(row.get("quantity", ""), int),
                "price": _number(row.get("price", ""), float),
                "region": row.get("store_id") or None,
            }
            raw.append({k: v for k, v in event.items() if v is not None})
            lines.append(number)
    events, rejected = validate_events(raw, now_ms())
    rejects = [
        {"line": lines[r.index], "field": r.field, "value": r.value, "reason": r.reason, "file": str(path)}
        for r in rejected
    ]
    refused = {r.index for r in rejected}
    return events, rejects, [line for index, line in enumerate(lines) if index not in refused]


def import_pos(path: str | Path, store: EventStore) -> dict:
    """Store the file's valid lines; returns counts, the rejected lines and the conflicting ones (a line whose
    receipt and position were imported before with other values: not stored)."""
    events, rejects, lines = pos_events(path)
    result = store.append(events)
    conflicts = [
        {"line": lines[c["index"]], "event_id": c["event_id"], "fields": c["fields"], "file": str(path)}
        for c in result.conflicts
    ]
    return {"accepted": result.accepted, "duplicates": result.duplicates, "rejected": rejects, "conflicts": conflicts}
