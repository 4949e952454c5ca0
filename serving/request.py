"""A recommendation request as a client sends it, its limits, and the answer: the serving path's first stage.

`Query` holds one request row in raw values (ids, event types, times, context); `check_limits`
refuses a row past `RequestLimits` (conf/serving.yaml) naming the limit; `Result` is one answer, named by
`Result.label` (intentrec.ids); serving.triton_model writes its wire form. This module needs only numpy and the standard library: the light
client (`serving.client`) builds requests with it without loading the model's stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from intentrec.data.features import MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS
from intentrec.errors import ConfigError, IntentrecError
from intentrec.ids import new_id

MAX_K = 100
MAX_QUANTITY = 1_000_000


class RequestError(IntentrecError):
    """A request that cannot be answered; the message names the input, the value and what is expected."""


class Unavailable(RequestError):
    """A service the request needs (the profile store) failed; the same request may succeed later."""


@dataclass(frozen=True)
class RequestLimits:
    """What one request row may carry (conf/serving.yaml); past a limit the row is refused, naming it."""

    max_events: int = 1000  # events per row (the model reads the last max_seq_len; the rules read all)
    max_string_bytes: int = 256  # any id, event type, context value, category or identity
    max_list_items: int = 100  # entries of categories and of past_purchases
    echo_chars: int = 32  # unknown values echoed back in info are cut to this many characters

    def __post_init__(self):
        for name in ("max_events", "max_string_bytes", "max_list_items", "echo_chars"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r}; expected an integer of at least 1 (conf/serving.yaml).")

    def events(self, count: int) -> None:
        if count > self.max_events:
            raise RequestError(
                f"item_ids has {count} events; the limit is max_events={self.max_events} per request row. Send the "
                f"most recent {self.max_events} events (older ones only matter for purchases: send those as "
                "past_purchases)."
            )

    def items(self, name: str, count: int) -> None:
        if count > self.max_list_items:
            raise RequestError(
                f"{name} has {count} entries; the limit is max_list_items={self.max_list_items}. Send fewer "
                f"(the most recent {self.max_list_items})."
            )

    def string(self, where: str, value) -> None:
        """Refuse a str or bytes `value` longer than max_string_bytes, naming it `where`."""
        if value is not None and len(value) > self.max_string_bytes:
            raise RequestError(
                f"{where} is {len(value)} characters long ({self.echo(value)}); the limit is "
                f"max_string_bytes={self.max_string_bytes}."
            )

    def strings(self, name: str, values) -> None:
        if max(map(len, values), default=0) > self.max_string_bytes:  # one C-level pass; the loop names it
            for position, value in enumerate(values):
                self.string(f"{name}[{position}]", value)

    def times(self, name: str, values, indexed: bool = True) -> None:
        """Refuse the first of `values` (ms) outside 2000-2100, naming it `name[position]` (`name` unindexed)."""
        if min(values, default=MIN_EVENT_TIME_MS) >= MIN_EVENT_TIME_MS and max(values, default=0) < MAX_EVENT_TIME_MS:
            return
        for position, value in enumerate(values):
            if not MIN_EVENT_TIME_MS <= int(value) < MAX_EVENT_TIME_MS:
                where = f"{name}[{position}]" if indexed else name
                raise RequestError(
                    f"{where}={int(value)}; expected milliseconds since 1970 between {MIN_EVENT_TIME_MS} (2000-01-01) "
                    f"and {MAX_EVENT_TIME_MS} (2100-01-01) (a time in seconds must be multiplied by 1000)."
                )

    def echo(self, value) -> str:
        """`value` as repr, cut to echo_chars characters."""
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return repr(text) if len(text) <= self.echo_chars else repr(text[: self.echo_chars]) + "..."


def check_lengths(q: Query) -> int:
    """The number of events; every per-event list must have one value per event."""
    n = len(q.item_ids)
    for name in ("event_types", "timestamps", "channels", "session_ids", "quantities"):
        values = getattr(q, name)
        if values is not None and len(values) != n:
            one = "quantity" if name == "quantities" else name[:-1]
            raise RequestError(f"{name} has {len(values)} values but item_ids has {n}; send one {one} per event.")
    return n


def check_limits(q: Query, limits: RequestLimits) -> Query:
    """Refuse a row past `limits`; returns it with duplicate categories and past purchases removed."""
    limits.events(check_lengths(q))
    limits.items("past_purchases", len(q.past_purchases))
    limits.items("categories", len(q.categories))
    for name in ("item_ids", "event_types", "channels", "session_ids", "past_purchases", "categories"):
        values = getattr(q, name)
        if values is not None:
            limits.strings(name, [str(v) for v in values])  # ids may come as numbers in process
    for name in ("device_type", "referrer", "region", "loyalty", "identity", "shopper"):
        value = getattr(q, name)
        limits.string(name, None if value is None else str(value))
    if q.timestamps is not None:
        limits.times("timestamps", q.timestamps)
    if q.now is not None:
        limits.times("now", [q.now], indexed=False)
    categories = list(dict.fromkeys(q.categories))
    past = list(dict.fromkeys(q.past_purchases))
    if len(categories) != len(q.categories) or len(past) != len(q.past_purchases):
        q = replace(q, categories=categories, past_purchases=past)
    return q


@dataclass
class Query:
    """One recommendation request in raw values (what a client sends)."""

    item_ids: list[str] = field(default_factory=list)
    event_types: list[str] | None = None  # default: all "view"
    timestamps: list[int] | None = None  # ms since epoch; default: unknown gaps
    now: int | None = None  # ms since epoch; default: the server clock
    device_type: str | None = None
    referrer: str | None = None
    region: str | None = None
    hour: int | None = None  # 0-23 UTC; default: from `now`
    day_of_week: int | None = None  # 1 = Monday ... 7 = Sunday; default: from `now`
    loyalty: str | None = None  # "yes" | "no"
    past_purchases: list[str] = field(default_factory=list)
    k: int = 10
    exclude_purchased: bool = True
    exclude_in_cart: bool = False
    categories: list[str] = field(default_factory=list)  # only these categories (empty = all)
    channels: list[str] | None = None  # per event; default "web"
    session_ids: list[str] | None = None  # per event; a new id starts a session (without ids: a 30-minute pause)
    quantities: list[int] | None = None  # per event: units added to / removed from the cart (default 1)
    identity: str | None = None  # "customer:<id>" | "device:<id>" | "session:<id>": read the profile store
    min_price: float | None = None  # only items priced within [min_price, max_price] (either may be None)
    max_price: float | None = None
    # Who the request is for, when it carries its events itself: the experiment unit ("customer:<id>",
    # "device:<id>", "session:<id>"; a bare id is a customer). Reads no profile (identity does).
    shopper: str | None = None


@dataclass
class Result:
    """One answered request: the list, best first, and what identifies it for attribution.

    `recommendation_id` (intentrec.ids: unique, time-ordered) names this list: impressions, clicks,
    add-to-cart and purchase events that carry it are attributed to it. `model_version` is the model
    that made it (the Triton repository's version; in process, the bundle's digest), `experiment` and
    `arm` the experiment the shopper is in and their arm (None outside an experiment)."""

    item_ids: list[str]
    scores: list[float]
    info: dict
    recommendation_id: str | None = None
    model_version: str | None = None
    experiment: str | None = None
    arm: str | None = None

    def labels(self) -> dict:
        """The identifying fields as one dict (what the wire form adds to `info`)."""
        return {name: getattr(self, name) for name in LABELS}

    def label(self, model_version: str | None, experiment: str | None = None, arm: str | None = None) -> Result:
        """Name this list: a new `recommendation_id` (intentrec.ids) and the labels attribution groups by."""
        self.recommendation_id = new_id()
        self.model_version, self.experiment, self.arm = model_version, experiment, arm
        return self


LABELS = ("recommendation_id", "model_version", "experiment", "arm")
