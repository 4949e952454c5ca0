"""Append new catalogue items to an export bundle, embedded from their content features (no retraining).

    python -m serving.add_items --bundle artifacts/bundles/v1 --items new_items.parquet --out artifacts/bundles/v2

`--items` is Parquet or CSV with the canonical item columns (`item_id`, `category_id`, `brand`,
`price`, attributes). Values the model never saw get the unknown code, as in preparation. The new
bundle has the items appended to the embedding table, the item table and the FAISS index; publish
it as a new model version with `python -m serving.repository publish`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from intentrec.errors import IntentrecError
from intentrec.serving.bundle import add_items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the export bundle to start from")
    parser.add_argument("--items", type=Path, required=True, help="Parquet or CSV of new items")
    parser.add_argument("--out", type=Path, required=True, help="folder of the new bundle")
    args = parser.parse_args(argv)
    try:
        manifest = add_items(args.bundle, args.items, args.out)
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.out}: {manifest['num_items']:,} items ({manifest['added_items']} added after training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
