"""A request that names a shopper (`Query.identity`) gets the shopper's stored profile merged in.

The shopper's stored events across linked devices (the most recent 2 x max_seq_len), purchases
(web and store) and loyalty are read from the event collector's store and put in front of the
request's own events (which are kept; an event present in both counts once).
"""

from __future__ import annotations

import time
from dataclasses import replace

from intentrec.serving.request import Query, RequestError, Unavailable


def store_address(url: str) -> str:
    """A store URL without credentials or file paths: its scheme and host (what a client may see)."""
    from urllib.parse import urlparse

    parsed = urlparse(str(url))
    return f"{parsed.scheme}://{parsed.hostname or ''}{':' + str(parsed.port) if parsed.port else ''}"


def identity_key(name: str, text: str) -> tuple[str, str]:
    """`customer:<id>` | `device:<id>` | `session:<id>` | a bare customer id -> (kind, value); a RequestError
    naming the input `name` otherwise."""
    from intentrec.serving.events.store import KINDS

    kind, sep, value = text.partition(":")
    if not sep:
        kind, value = "customer", text
    if kind not in KINDS or not value:
        raise RequestError(f"{name}={text!r}; expected customer:<id>, device:<id>, session:<id> or a bare customer id.")
    return kind, value


class Profiles:
    """Reads shoppers' profiles from `store` (an `EventStore`, or its URL opened read-only on first use)."""

    def __init__(self, store, max_seq_len: int, past: int):
        self.store = store
        self.max_seq_len = max_seq_len
        self.past = past

    def _open(self):
        if isinstance(self.store, str):
            from intentrec.serving.events.store import open_store

            url = self.store
            try:
                self.store = open_store(url, readonly=True)
            except Exception as error:  # retried on the next request
                detail = str(error).replace(url, store_address(url))  # the store's own message may repeat the URL
                raise Unavailable(
                    f"identity given but the profile store {store_address(url)} cannot be opened "
                    f"({type(error).__name__}: {detail}); start the collector on that store or send the events"
                ) from None
        if self.store is None:
            raise RequestError(
                "identity given but this model has no profile store; send the shopper's events instead, or "
                "build the repository with profile_store=<store URL> (conf/serving.yaml)"
            )
        return self.store

    def owner(self, kind: str, value: str) -> str | None:
        """The canonical customer a device or session is linked to (None: not linked); may raise."""
        return self._open().owner(kind, value)

    def merge(self, q: Query) -> tuple[Query, dict]:
        """`q` with the stored events, purchases and loyalty of `q.identity` added; and what was read."""
        kind, value = identity_key("identity", q.identity)
        store = self._open()
        try:
            keys = store.identity_keys(kind, value)
            stored = store.events_of(keys, limit=2 * self.max_seq_len)[::-1]  # oldest first
            bought = store.events_of(keys, limit=4 * self.past, purchases_only=True)
            traits = store.traits(keys.customer) if keys.customer else {}
        except Exception as error:  # the store is down or unreachable: this request, not the server, fails
            raise Unavailable(
                f"the profile store {store_address(store.url)} did not answer ({type(error).__name__}: "
                f"{str(error)[:200]}); retry later, or send the shopper's events instead of identity"
            ) from None
        merged = with_events(q, stored, bought, traits)
        read = {
            "identity": f"{kind}:{value}",
            "customer_id": keys.customer,
            "stored_events": len(stored),
            "purchases": len(bought),
        }
        return merged, read


def with_events(q: Query, stored: list[dict], bought: list[dict], traits: dict) -> Query:
    """`q` with a shopper's stored events in front of its own (an event present in both counts once), the
    items of their purchases and their loyalty trait: the one rule that turns stored events into a request
    (recommend by identity, the triggers).

    `stored`: events oldest first (the store's dicts); `bought`: purchase events newest first; `traits`: the
    customer's stored traits (`loyalty_member`). The request's own loyalty and device type win."""
    n = len(q.item_ids)
    now = q.now if q.now is not None else int(time.time() * 1000)
    own_times = list(q.timestamps) if q.timestamps is not None else [now] * n
    own_types = list(q.event_types) if q.event_types is not None else ["view"] * n
    seen = {(e["item_id"], e["event_type"], e["event_time"]) for e in stored}
    keep = [i for i in range(n) if (str(q.item_ids[i]), own_types[i], own_times[i]) not in seen]
    pick = lambda values, default: [default if v is None else v for v in values]  # noqa: E731
    return replace(
        q,
        identity=None,
        item_ids=[e["item_id"] for e in stored] + [q.item_ids[i] for i in keep],
        event_types=[e["event_type"] for e in stored] + [own_types[i] for i in keep],
        timestamps=[e["event_time"] for e in stored] + [own_times[i] for i in keep],
        channels=pick([e.get("channel") for e in stored], "web")
        + [q.channels[i] if q.channels is not None else "web" for i in keep],
        session_ids=pick([e.get("session_id") for e in stored], "")
        + [q.session_ids[i] if q.session_ids is not None else "" for i in keep],
        quantities=[int(e.get("quantity") or 1) for e in stored]
        + [q.quantities[i] if q.quantities is not None else 1 for i in keep],
        past_purchases=list(dict.fromkeys([*q.past_purchases, *(e["item_id"] for e in bought[::-1])])),
        loyalty=q.loyalty
        if q.loyalty is not None or traits.get("loyalty_member") is None
        else ("yes" if traits["loyalty_member"] else "no"),
        device_type=q.device_type or next((e.get("device_type") for e in stored[::-1] if e.get("device_type")), None),
    )
