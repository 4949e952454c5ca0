"""Abandoned-cart job: one message per shopper whose cart has been idle longer than a threshold.

    python -m serving.abandoned_carts bundle=artifacts/runs/demo/bundle \\
        store=sqlite:///artifacts/events/events.db out=artifacts/messages/carts.jsonl after_minutes=30

A cart is abandoned when it still holds items (adds minus removes minus online purchases, across all
of the shopper's devices) and nothing changed it, nor was anything bought online, for `after_minutes`.
Shoppers with cart activity in the last `lookback_hours` are checked; a cart whose last activity is
older than that is left alone (it was messaged, or it is stale).

Each message (one JSON line): `message_id` (identity and cart time, so a re-run yields the same id and a
sender can de-duplicate), `customer_id` (null for an anonymous device), `channel` (`email` when the
customer has an email address, else `push` to the device used last), `cart` (item ids and quantities),
`recommendations`: `k` items from the real-time model for that shopper with the cart's items excluded,
complements first (items of the categories shoppers move to from the cart's categories, learned at
export: `complements.json`), then other categories, then the cart's own categories, each in model order;
with them the list's `recommendation_id`, `model_version`, `experiment` and `arm` (the sender puts the id on
the message's impression and click events).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from intentrec.errors import IntentrecError
from intentrec.serving.cli import key_value_flags
from intentrec.serving.events.profile import build_profile
from intentrec.serving.events.store import EventStore, now_ms
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query, RequestError

KEY_FLAGS = {
    "bundle": "--bundle",
    "store": "--store",
    "out": "--out",
    "after_minutes": "--after-minutes",
    "lookback_hours": "--lookback-hours",
    "k": "--k",
    "now": "--now",
}


def abandoned_cart_messages(
    store: EventStore,
    recommender: Recommender | None,
    *,
    after_minutes: float = 30.0,
    lookback_hours: float = 72.0,
    k: int = 4,
    now: int | None = None,
) -> list[dict]:
    """Messages for every abandoned cart (see the module docstring)."""
    now = now_ms() if now is None else now
    threshold = int(after_minutes * 60_000)
    identities: dict[str, tuple[str, str]] = {}
    for event in store.cart_adds(now - int(lookback_hours * 3_600_000)):
        kind, value = store.shopper_of(event)  # one message per customer, however many devices filled the cart
        identities.setdefault(f"{kind}:{value}", (kind, value))
    messages = []
    for key, (kind, value) in sorted(identities.items()):
        profile = build_profile(store, kind, value, now=now, abandon_after_ms=threshold)
        if not profile.cart_abandoned:
            continue
        if now - profile.cart_updated_ms > lookback_hours * 3_600_000:
            continue
        last_device = next((e.get("device_id") for e in reversed(profile.recent_events) if e.get("device_id")), None)
        message = {
            "message_id": f"{key}@{profile.cart_updated_ms}",
            "customer_id": profile.customer_id,
            "channel": "email" if profile.email else "push",
            "to": profile.email if profile.email else last_device,
            "cart": [{"item_id": item, "quantity": quantity} for item, quantity in sorted(profile.cart.items())],
            "idle_minutes": round((now - profile.cart_updated_ms) / 60_000, 1),
            "recommendations": [],
        }
        if recommender is not None:
            query = Query(identity=key, k=min(3 * k, 100), exclude_in_cart=True, now=now)
            message["recommendations"], labels = cart_complements(recommender, query, profile.cart, k)
            message.update(labels)
        messages.append(message)
    return messages


def cart_complements(recommender: Recommender, query: Query, cart: dict[str, int], k: int) -> tuple[list[str], dict]:
    """`k` suggestions for a cart (the model's items for `query`, cart excluded, the complements of the cart's
    categories first, then other categories, then the cart's own) and the list's labels (recommendation_id,
    model_version, experiment, arm). `query` should ask for about 3 k items with `exclude_in_cart`."""
    result = recommender.recommend([query])[0]
    if isinstance(result, RequestError):
        raise result
    category = {i: recommender.catalogue.categories[recommender.catalogue.item_index[i]] for i in result.item_ids}
    cart_categories = {
        recommender.catalogue.categories[recommender.catalogue.item_index[i]]
        for i in cart
        if i in recommender.catalogue.item_index
    }
    complements = {
        c for cat in cart_categories for c in recommender.catalogue.complements.get(cat, [])
    } - cart_categories
    items = [i for i in result.item_ids if i not in cart]
    order = sorted(
        range(len(items)),
        key=lambda n: (category[items[n]] not in complements, category[items[n]] in cart_categories, n),
    )
    return [items[n] for n in order][:k], result.labels()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bundle", type=Path, default=None, help="export bundle; without it messages carry no recommendations"
    )
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one message per abandoned cart")
    parser.add_argument("--after-minutes", type=float, default=30.0)
    parser.add_argument("--lookback-hours", type=float, default=72.0)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--now", type=int, default=None, help="ms since epoch (default: the clock)")
    args = parser.parse_args(key_value_flags(sys.argv[1:] if argv is None else argv, KEY_FLAGS))
    from intentrec.serving.events.store import open_store

    started = time.perf_counter()
    try:
        store = open_store(args.store, readonly=True)
        recommender = Recommender(args.bundle, profile_store=store) if args.bundle else None
        messages = abandoned_cart_messages(
            store,
            recommender,
            after_minutes=args.after_minutes,
            lookback_hours=args.lookback_hours,
            k=args.k,
            now=args.now,
        )
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text("".join(json.dumps(m) + "\n" for m in messages))
    partial.replace(args.out)
    summary = {"messages": len(messages), "out": str(args.out), "seconds": round(time.perf_counter() - started, 2)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
