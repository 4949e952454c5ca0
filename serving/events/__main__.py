"""Event collector command line: serve the API, export events to Parquet, import a POS file.

    python -m serving.events serve store=sqlite:///artifacts/events/events.db port=8700
    python -m serving.events serve store=redis://127.0.0.1:6379/0 token=secret
    python -m serving.events export store=sqlite:///artifacts/events/events.db out=artifacts/events/export
    python -m serving.events import-pos file=pos.csv store=sqlite:///artifacts/events/events.db

`serve` binds 127.0.0.1 unless told `host=`. `export` writes `<out>/events.parquet` in the canonical
schema (what `python -m data.prepare data=generic data.format=parquet` reads). `import-pos` reads a
point-of-sale export (CSV) and stores each line as a `store_purchase` event (see `serving.events.pos`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from serving.cli import key_value_flags

DEFAULT_STORE = "sqlite:///artifacts/events/events.db"
KEY_FLAGS = {
    "store": "--store",
    "host": "--host",
    "port": "--port",
    "token": "--token",
    "catalogue": "--catalogue",
    "max_body_bytes": "--max-body-bytes",
    "max_batch_events": "--max-batch-events",
    "abandon_after_minutes": "--abandon-after-minutes",
    "out": "--out",
    "file": "--file",
}


def _categories(path: Path | None) -> dict[str, str] | None:
    """item id -> category id from a canonical items table (Parquet) or a prepared data folder."""
    if path is None:
        return None
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / "items.parquet"
    table = pq.read_table(path)
    columns = set(table.column_names)
    item_column = "item_id" if "item_id" in columns else "raw_item_id"
    if item_column not in columns or "category_id" not in columns:
        raise SystemExit(
            f"error: catalogue={path} has columns {sorted(columns)}; expected item_id (or raw_item_id) and category_id"
        )
    return {
        str(i): str(c)
        for i, c in zip(table.column(item_column).to_pylist(), table.column("category_id").to_pylist())
        if c is not None
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["serve", "export", "import-pos"])
    parser.add_argument("--store", default=DEFAULT_STORE, help="sqlite:///<path> or redis://host:port/db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--token", default=None, help="require 'Authorization: Bearer <token>' on /v1 calls")
    parser.add_argument(
        "--catalogue", type=Path, default=None, help="items.parquet (or prepared data folder) for categories"
    )
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-batch-events", type=int, default=1000)
    parser.add_argument("--abandon-after-minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/events/export"))
    parser.add_argument("--file", type=Path, default=None)
    args = parser.parse_args(key_value_flags(sys.argv[1:] if argv is None else argv, KEY_FLAGS))
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from data.errors import IntentrecError
    from serving.events.store import open_store

    try:
        store = open_store(args.store)
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        import uvicorn

        from serving.events.app import CollectorSettings, create_app

        settings = CollectorSettings(
            max_body_bytes=args.max_body_bytes,
            max_batch_events=args.max_batch_events,
            token=args.token,
            abandon_after_minutes=args.abandon_after_minutes,
        )
        app = create_app(store, settings, categories=_categories(args.catalogue))
        print(f"[collector] {store.url.split('@')[-1]} on http://{args.host}:{args.port}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
    if args.command == "export":
        from serving.events.export import export_events

        summary = export_events(store, args.out)
        print(json.dumps(summary))
        return 0
    from serving.events.pos import import_pos

    if args.file is None:
        print("error: import-pos needs file=<path of the POS export (CSV)>", file=sys.stderr)
        return 2
    try:
        summary = import_pos(args.file, store)
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if not summary["rejected"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
