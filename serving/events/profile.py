"""A shopper's profile, computed from the stored events of every device and session linked to them.

    profile = build_profile(store, "device", "d1", now_ms=..., abandon_after_ms=30 * 60_000, categories=...)

Computed on read (nothing is cached, so a profile is never stale): recent events and views across
devices, recent categories, the cart (adds minus removes minus purchases, replayed in time order),
whether it is abandoned (items in it and no cart change or online purchase for `abandon_after_ms`), past
purchases from the web and the store, loyalty and email engagement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from intentrec.data.features import replay_cart
from intentrec.serving.events.store import EventStore, now_ms


@dataclass
class Profile:
    key: str  # the identity asked for, e.g. "device:d1"
    customer_id: str | None  # canonical customer, None for a device/session not linked to one
    devices: list[str]
    sessions: list[str]
    recent_events: list[dict]  # oldest first, at most `recent` events
    recent_views: list[str]  # distinct item ids, most recent first
    recent_categories: list[tuple[str, int]]  # (category, count) in the recent events, most frequent first
    cart: dict[str, int]  # item id -> quantity
    cart_updated_ms: int | None
    cart_abandoned: bool
    purchases: list[dict]  # every purchase (web and store), oldest first
    loyalty_member: bool | None
    email: str | None
    email_opens: int
    email_clicks: int
    email_clicked_items: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def build_profile(
    store: EventStore,
    kind: str,
    value: str,
    *,
    now: int | None = None,
    abandon_after_ms: int = 30 * 60_000,
    recent: int = 50,
    window: int = 500,
    categories: Mapping[str, str] | None = None,
) -> Profile:
    """The profile of `kind:value` (kind = customer, device or session).

    Args:
        recent: events kept in `recent_events` (what the query encoder reads).
        window: events read to replay the cart and count email engagement.
        categories: item id -> category, for `recent_categories` (items not in it are skipped).
    """
    now = now_ms() if now is None else now
    keys = store.identity_keys(kind, value)
    newest_first = store.events_of(keys, limit=window)
    oldest_first = newest_first[::-1]
    cart, changed, purchased = replay_cart(
        (e["item_id"], e["event_type"], e.get("quantity"), e["event_time"]) for e in oldest_first
    )
    last_activity = max(t for t in (changed, purchased) if t is not None) if changed is not None else None
    abandoned = bool(cart) and last_activity is not None and now - last_activity >= abandon_after_ms
    views = list(dict.fromkeys(e["item_id"] for e in newest_first if e["event_type"] == "view"))
    recent_events = oldest_first[-recent:]
    counted = Counter(categories[e["item_id"]] for e in recent_events if categories and e["item_id"] in categories)
    purchases = store.events_of(keys, limit=window, purchases_only=True)[::-1]
    traits = store.traits(keys.customer) if keys.customer else {}
    clicks = [e["item_id"] for e in newest_first if e["event_type"] == "email_click"]
    return Profile(
        key=f"{kind}:{value}",
        customer_id=keys.customer,
        devices=sorted(keys.devices),
        sessions=sorted(keys.sessions),
        recent_events=[_public(e) for e in recent_events],
        recent_views=views[:recent],
        recent_categories=counted.most_common(),
        cart=cart,
        cart_updated_ms=changed,
        cart_abandoned=abandoned,
        purchases=[_public(e) for e in purchases],
        loyalty_member=traits.get("loyalty_member"),
        email=traits.get("email"),
        email_opens=sum(e["event_type"] == "email_open" for e in newest_first),
        email_clicks=len(clicks),
        email_clicked_items=list(dict.fromkeys(clicks)),
    )


def _public(event: dict) -> dict:
    return {k: v for k, v in event.items() if v is not None and k != "seq"}
