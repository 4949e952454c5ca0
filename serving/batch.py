"""Batch recommendations for an email campaign: top-k per customer, written to Parquet.

    python -m serving.batch bundle=artifacts/runs/demo/bundle store=sqlite:///artifacts/events/events.db \\
        out=artifacts/campaigns/autumn.parquet k=10 categories=shoes,bags min_price=20 max_price=200

The same models, profiles and rules as the real-time `recommend` (it runs `serving.recommender` in
process): every customer of the event store (or those listed in `customers=<file, one id per line>`)
gets the top `k` from their stored events across devices and channels, with purchased items excluded
(`exclude_purchased=false` keeps them), items in the cart excluded (`exclude_in_cart=false` keeps them),
and the optional category filter and price band. Customers without any known event get the most
popular items that pass the same filters (`fallback = popularity`).

Output columns: customer_id, rank (1..k), item_id, score, fallback, stored_events, and the list's
recommendation_id, model_version, experiment and arm (send the id with the e-mail's impression and
click events so that attribution credits the campaign); one row per recommendation. The file is
written to `<out>.partial` and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from intentrec import progress
from intentrec.errors import IntentrecError
from intentrec.serving.cli import key_value_flags
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import LABELS, MAX_K, Query, RequestError

KEY_FLAGS = {
    "bundle": "--bundle",
    "store": "--store",
    "out": "--out",
    "k": "--k",
    "customers": "--customers",
    "categories": "--categories",
    "min_price": "--min-price",
    "max_price": "--max-price",
    "exclude_purchased": "--exclude-purchased",
    "exclude_in_cart": "--exclude-in-cart",
    "batch_size": "--batch-size",
    "now": "--now",
}


def _flag(text: str, key: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise SystemExit(f"error: {key}={text!r}; expected true or false.")


def campaign(
    recommender: Recommender,
    customers: list[str],
    out: Path,
    *,
    k: int = 10,
    categories: list[str] | None = None,
    min_price: float | None = None,
    max_price: float | None = None,
    exclude_purchased: bool = True,
    exclude_in_cart: bool = True,
    batch_size: int = 256,
    now: int | None = None,
) -> dict:
    """Write the campaign file; returns counts. A request error (bad filter) stops before anything is written."""
    if not 1 <= k <= MAX_K:
        raise RequestError(f"k={k}; expected an integer from 1 to {MAX_K}.")
    columns: dict[str, list] = {
        name: [] for name in ("customer_id", "rank", "item_id", "score", "fallback", "stored_events", *LABELS)
    }
    fallbacks = 0
    for start in progress.bar(range(0, len(customers), batch_size), desc="campaign batch"):
        chunk = customers[start : start + batch_size]
        queries = [
            Query(
                identity=f"customer:{customer}",
                k=k,
                categories=list(categories or []),
                min_price=min_price,
                max_price=max_price,
                exclude_purchased=exclude_purchased,
                exclude_in_cart=exclude_in_cart,
                now=now,
            )
            for customer in chunk
        ]
        for customer, result in zip(chunk, recommender.recommend(queries)):
            if isinstance(result, RequestError):
                raise RequestError(f"customer {customer!r}: {result}")
            fallback = result.info.get("fallback") or ""
            fallbacks += bool(fallback)
            stored = result.info.get("profile", {}).get("stored_events", 0)
            labels = result.labels()
            for rank, (item, score) in enumerate(zip(result.item_ids, result.scores), start=1):
                columns["customer_id"].append(customer)
                columns["rank"].append(rank)
                columns["item_id"].append(item)
                columns["score"].append(float(score))
                columns["fallback"].append(fallback)
                columns["stored_events"].append(stored)
                for name, value in labels.items():
                    columns[name].append(value)
    table = pa.table(
        columns,
        schema=pa.schema(
            [
                ("customer_id", pa.string()),
                ("rank", pa.int16()),
                ("item_id", pa.string()),
                ("score", pa.float32()),
                ("fallback", pa.string()),
                ("stored_events", pa.int32()),
                *((name, pa.string()) for name in LABELS),
            ]
        ),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    pq.write_table(table, partial)
    partial.replace(out)
    return {"customers": len(customers), "rows": table.num_rows, "popularity_fallbacks": fallbacks, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="export bundle (python -m serving.export)")
    parser.add_argument("--store", required=True, help="event store URL (sqlite:///<path> | redis://host:port/db)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--customers", type=Path, default=None, help="file with one customer id per line (default: all)"
    )
    parser.add_argument("--categories", default="", help="comma-separated: only these categories")
    parser.add_argument("--min-price", type=float, default=None)
    parser.add_argument("--max-price", type=float, default=None)
    parser.add_argument("--exclude-purchased", default="true")
    parser.add_argument("--exclude-in-cart", default="true")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--now", type=int, default=None, help="ms since epoch (default: the clock)")
    args = parser.parse_args(key_value_flags(sys.argv[1:] if argv is None else argv, KEY_FLAGS))
    from intentrec.serving.events.store import open_store

    started = time.perf_counter()
    try:
        store = open_store(args.store, readonly=True)
        if args.customers is not None:
            if not args.customers.is_file():
                raise IntentrecError(
                    f"customers={args.customers} does not exist; give a file with one customer id per line."
                )
            customers = [line.strip() for line in args.customers.read_text().splitlines() if line.strip()]
        else:
            customers = store.customers()
        recommender = Recommender(args.bundle, profile_store=store)
        summary = campaign(
            recommender,
            customers,
            args.out,
            k=args.k,
            categories=[c for c in args.categories.split(",") if c],
            min_price=args.min_price,
            max_price=args.max_price,
            exclude_purchased=_flag(args.exclude_purchased, "exclude_purchased"),
            exclude_in_cart=_flag(args.exclude_in_cart, "exclude_in_cart"),
            batch_size=args.batch_size,
            now=args.now,
        )
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
