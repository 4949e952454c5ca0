"""Triggers: rules over the intent signals and the shopper's profile that send a message when they hold.

    intentrec triggers bundle=<bundle> store=sqlite:///artifacts/events/events.db \\
        rules=conf/triggers/default.yaml out=artifacts/messages/triggers.jsonl            # batch: stored events
    intentrec triggers ... follow=true poll_seconds=1                                    # as events arrive

After every online shopper event (a view, cart change, purchase or e-mail click; not a store purchase, an
e-mail open or feedback on a list) the shopper's request is rebuilt as it stood at that event (their
events so far across linked devices, purchases, loyalty; `serving.profiles.with_events`, the rule that
recommend-by-identity applies), the bundle's intent heads give its signals (`Recommender.intent`), and the
rules (a YAML file, conf/triggers/default.yaml) are checked in order. A rule fires at most once per
session: its message id is `<rule>:<session id>`, and a follow run that restarts reads the ids already in
`out` before it goes on, so a crash or restart never sends a message twice.

A rule:

    - name: exit_offer          # unique; names the message
      action: exit_offer        # exit_offer | cart_push | clienteling: what the message carries
      signal: exit              # purchase | exit | abandon (optional): the calibrated probability checked
      above: 0.5                # fires when the signal is >= above (or <= `below`); thresholds in [0, 1]
      needs: [cart]             # cart | no_purchase | customer | loyalty_member | email | home_store_stock
      min_steps: 1              # events of the session so far
      min_views: 1              # home_store_stock: views in the session of items the home store stocks
      k: 4                      # items in the message's list

Conditions: `cart`, items this session put in the web cart are still in it (the cart of the abandonment
label, training.intent_labels; a message's `cart` is the shopper's whole web cart, serving.events.profile's);
`no_purchase`, the session has bought nothing online yet; `customer`, the shopper is a known customer;
`loyalty_member` and `email`, the customer's stored traits; `home_store_stock`, see clienteling below.

Actions and what they need besides (added to `needs`):

- `exit_offer` (channel `onsite`): an exit-intent pop-up with `k` recommendations for the shopper now, the
  cart's items left out;
- `cart_push` (needs `cart`; channel `email` when the customer has an address, else `push` to the device):
  the cart and `k` complements of it (serving.abandoned_carts.cart_complements);
- `clienteling` (needs `loyalty_member`, `home_store_stock`; channel `store`): a message for the shopper's
  home store (the store of most of their store purchases) naming the items they browsed that it stocks
  and `k` recommendations it stocks. Stock is a CSV file (`stock=`, columns `store_id,item_id`) or, without
  one, what each store has sold so far (its `store_purchase` events).

Messages are JSON lines: `message_id`, `rule`, `action`, `channel`, `to`, `session_id`, `shopper`,
`customer_id`, `device_id`, the triggering `event_id` and `event_time`, `signals`, `cart`, `recommendations`
with the list's `recommendation_id`, `model_version`, `experiment` and `arm`; clienteling adds `store_id` and
`browsed`. A follow run keeps its cursor (the last event read) in `<out>.state.json`.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import itertools
import json
import os
import signal as signals_module
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from intentrec.data.features import PURCHASE_EVENTS, replay_cart
from intentrec.data.schema import FEEDBACK_TYPES
from intentrec.errors import ConfigError, DataError, IntentrecError
from intentrec.serving.cli import config_entries, key_value_flags
from intentrec.serving.events.store import EventStore
from intentrec.serving.profiles import with_events
from intentrec.serving.request import MAX_K, Query, RequestError
from intentrec.training.intent_labels import BINARY_HEADS

SIGNALS = BINARY_HEADS
CONDITIONS = ("cart", "no_purchase", "customer", "loyalty_member", "email", "home_store_stock")
# action -> (default channel, the conditions it needs); a cart push goes by e-mail or push (chosen per shopper)
ACTIONS = {
    "exit_offer": ("onsite", ()),
    "cart_push": (None, ("cart",)),
    "clienteling": ("store", ("loyalty_member", "home_store_stock")),
}
KEYS = ("name", "action", "signal", "above", "below", "needs", "min_steps", "min_views", "k")
# Events after which the rules are checked: online shopper actions (a store purchase has no online session).
EVALUATED = ("view", "add_to_cart", "remove_from_cart", "purchase", "email_click")
DEFAULT_RULES = Path(__file__).resolve().parents[1] / "conf" / "triggers" / "default.yaml"
CART_WINDOW = 500  # cart events kept per shopper (a profile replays its last 500 events)
CART_EVENTS = ("add_to_cart", "remove_from_cart", "purchase")  # what changes a web cart (data.features.replay_cart)


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    signal: str | None = None
    above: float | None = None
    below: float | None = None
    needs: tuple[str, ...] = ()
    min_steps: int = 1
    min_views: int = 1
    k: int = 4

    def holds_signal(self, signals: dict | None) -> bool:
        if self.signal is None:
            return True
        if not signals or self.signal not in signals:
            return False
        p = signals[self.signal]
        return p >= self.above if self.above is not None else p <= self.below


def load_rules(source, available: dict[str, str | None] | None = None) -> list[Rule]:
    """The rules of a YAML or JSON file (`rules:` list) or of a list, checked field by field.

    `available`: the bundle's signals, head -> None when served or the reason it is off; a rule on a signal the
    model does not serve is refused, saying why."""
    rules, seen = [], set()
    where = "rules" if isinstance(source, list | tuple) else str(source)
    for name, entry in config_entries(source, "rules", "rule", KEYS):
        rule_name = entry.get("name")
        if not isinstance(rule_name, str) or not rule_name or ":" in rule_name:
            raise ConfigError(f"{name}: `name` must be a non-empty string without ':', got {rule_name!r}")
        if rule_name in seen:
            raise ConfigError(f"{name}: name {rule_name!r} is used twice; rule names must be unique")
        seen.add(rule_name)
        name = f"{where}: rule {rule_name!r}"
        action = entry.get("action")
        if action not in ACTIONS:
            raise ConfigError(f"{name}: action {action!r} is not one of {list(ACTIONS)}")
        signal = entry.get("signal")
        if signal is not None and signal not in SIGNALS:
            raise ConfigError(f"{name}: unknown signal {signal!r}; expected one of {list(SIGNALS)}")
        thresholds = {key: entry.get(key) for key in ("above", "below") if entry.get(key) is not None}
        for key, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ConfigError(
                    f"{name}: {key}={value!r} is not a threshold in [0, 1]; the signals are calibrated probabilities"
                )
        if signal is not None and len(thresholds) != 1:
            raise ConfigError(f"{name}: signal {signal!r} needs exactly one of `above` or `below`, got {thresholds}")
        if signal is None and thresholds:
            raise ConfigError(f"{name}: {sorted(thresholds)} without a `signal`; name the signal it applies to")
        if signal is not None and available is not None and available.get(signal, "not served") is not None:
            raise ConfigError(
                f"{name}: signal {signal!r} is not served by this model ({available.get(signal, 'not served')}); "
                f"its signals: {sorted(h for h, r in available.items() if r is None)}"
            )
        needs = entry.get("needs", [])
        if not isinstance(needs, list) or not all(isinstance(c, str) for c in needs):
            raise ConfigError(f"{name}: `needs` must be a list of conditions among {list(CONDITIONS)}, got {needs!r}")
        unknown = sorted(set(needs) - set(CONDITIONS))
        if unknown:
            raise ConfigError(f"{name}: unknown condition(s) {unknown} in `needs`; expected among {list(CONDITIONS)}")
        counts = {}
        for key, default, top in (("min_steps", 1, 10_000), ("min_views", 1, 10_000), ("k", 4, MAX_K)):
            value = entry.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ConfigError(f"{name}: {key}={value!r}; expected an integer from 1 to {top}")
            counts[key] = value
        implied = ACTIONS[action][1]
        rules.append(
            Rule(
                rule_name,
                action,
                signal,
                thresholds.get("above"),
                thresholds.get("below"),
                tuple(dict.fromkeys([*implied, *needs])),
                **counts,
            )
        )
    return rules


class Stock:
    """Which items each store stocks: a CSV file (`store_id,item_id`), or what each has sold so far."""

    def __init__(self, path: str | Path | None = None):
        self.items: dict[str, set[str]] = {}
        self.observed = path is None
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise DataError(f"stock file {path} not found; give a CSV with the columns store_id,item_id")
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                header = [h.strip() for h in reader.fieldnames or []]
                if "store_id" not in header or "item_id" not in header:
                    raise DataError(f"{path}: header {header}; expected the columns store_id,item_id")
                for number, row in enumerate(reader, start=2):
                    store, item = (row.get("store_id") or "").strip(), (row.get("item_id") or "").strip()
                    if not store or not item:
                        raise DataError(f"{path} line {number}: store_id and item_id must both be given, got {row}")
                    self.items.setdefault(store, set()).add(item)

    def sold(self, store: str | None, item: str) -> None:
        if self.observed and store:
            self.items.setdefault(store, set()).add(item)

    def stocks(self, store: str | None, item: str) -> bool:
        return store is not None and item in self.items.get(store, ())


@dataclass
class ShopperState:
    events: list = field(default_factory=list)  # oldest first, at most `history`
    purchases: list = field(default_factory=list)  # oldest first, at most `bought`
    carts: list = field(default_factory=list)  # cart changes and online purchases, oldest first, at most CART_WINDOW
    stores: Counter = field(default_factory=Counter)  # store id -> store purchases
    last_store: str | None = None

    def home_store(self) -> str | None:
        if not self.stores:
            return None
        top = max(self.stores.values())
        return self.last_store if self.stores[self.last_store] == top else self.stores.most_common(1)[0][0]

    def cart(self, event: dict) -> dict[str, int]:
        """The web cart as of `event`, across the shopper's sessions and devices (serving.events.profile's)."""
        return _cart(self.carts, event)


@dataclass
class SessionState:
    steps: int = 0
    last_ms: int = 0
    bought: bool = False  # an online purchase so far
    carts: list = field(default_factory=list)  # the session's cart changes and online purchases, oldest first
    stocked_views: dict = field(default_factory=dict)  # item -> None (ordered set) of views the home store stocks

    def add(self, event: dict) -> None:
        """One more event of the session."""
        self.steps += 1
        self.bought = self.bought or event["event_type"] == "purchase"
        if event["event_type"] in CART_EVENTS:
            _insert(self.carts, event, CART_WINDOW)
        self.last_ms = max(self.last_ms, int(event["event_time"]))


@dataclass
class Pending:
    event: dict
    shopper: str
    session: str
    query: Query | None  # built only when a rule may fire
    cart: dict  # the shopper's web cart (what a message shows)
    session_cart: dict  # what this session put in the cart and is still there (the `cart` condition)
    traits: dict
    home_store: str | None
    browsed: list
    bought: bool
    steps: int


class Triggers:
    """Follows the events of a store and fires the rules (see the module docstring)."""

    def __init__(
        self,
        recommender,
        rules: list[Rule],
        store: EventStore,
        stock: Stock | None = None,
        session_idle_hours: float = 24.0,
    ):
        self.recommender = recommender
        self.rules = rules
        self.store = store
        self.stock = stock or Stock()
        c = recommender.catalogue
        self.history, self.bought = 2 * c.max_seq_len, 4 * c.past  # what serving.profiles reads
        self.needs_signals = any(r.signal for r in rules)
        self.shoppers: dict[str, ShopperState] = {}
        self.sessions: dict[str, SessionState] = {}
        self.fired: set[str] = set()  # message ids: "<rule>:<session>"
        self.idle_ms = int(session_idle_hours * 3_600_000)
        self.counts = Counter()
        self.newest_ms = 0

    # --------------------------------------------------------------------------------------------- state
    def _shopper(self, event: dict, owners: dict) -> str:
        key = (event.get("customer_id"), event.get("device_id"), event.get("session_id"))
        if key not in owners:
            kind, value = self.store.shopper_of(event)
            owners[key] = f"{kind}:{value}"
        shopper = owners[key]
        if shopper.startswith("customer:"):  # a device or session that logged in: its events join the customer
            for kind, value in (("device", event.get("device_id")), ("session", event.get("session_id"))):
                before = self.shoppers.pop(f"{kind}:{value}", None) if value else None
                if before is not None:
                    into = self.shoppers.setdefault(shopper, ShopperState())
                    into.events = sorted(into.events + before.events, key=_order)[-self.history :]
                    into.purchases = sorted(into.purchases + before.purchases, key=_order)[-self.bought :]
                    into.carts = sorted(into.carts + before.carts, key=_order)[-CART_WINDOW:]
                    into.stores.update(before.stores)
        return shopper

    def _update(self, event: dict, shopper: str) -> ShopperState:
        state = self.shoppers.setdefault(shopper, ShopperState())
        _insert(state.events, event, self.history)
        if event["event_type"] in PURCHASE_EVENTS:
            _insert(state.purchases, event, self.bought)
        if event["event_type"] in CART_EVENTS:
            _insert(state.carts, event, CART_WINDOW)
        if event["event_type"] == "store_purchase":
            self.stock.sold(event.get("region"), event["item_id"])
            if event.get("region"):
                state.stores[event["region"]] += 1
                state.last_store = event["region"]
        return state

    def _prune(self) -> None:
        """Close sessions idle for longer than `session_idle_hours` (their rules may fire again only if the same
        session id comes back after that)."""
        cutoff = self.newest_ms - self.idle_ms
        for session in [s for s, state in self.sessions.items() if state.last_ms < cutoff]:
            del self.sessions[session]

    def warm(self, events) -> int:
        """Read events into the shoppers' state without checking the rules (a follow run's restart)."""
        owners: dict = {}
        n = 0
        for event in events:
            if event["event_type"] in FEEDBACK_TYPES:
                continue
            shopper = self._shopper(event, owners)
            self._update(event, shopper)
            self._step(event, self._session_of(event, shopper))
            n += 1
        return n

    @staticmethod
    def _session_of(event: dict, shopper: str) -> str:
        return event.get("session_id") or shopper

    def _step(self, event: dict, session: str) -> SessionState:
        state = self.sessions.setdefault(session, SessionState())
        state.add(event)
        self.newest_ms = max(self.newest_ms, state.last_ms)
        return state

    # ------------------------------------------------------------------------------------------- checking
    def feed(self, events: list[dict]) -> list[dict]:
        """Read `events` (arrival order), check the rules after each online shopper event; the messages fired."""
        owners: dict = {}
        traits: dict[str, dict] = {}
        pending: list[Pending] = []
        for event in events:
            self.counts["events"] += 1
            if event["event_type"] in FEEDBACK_TYPES:
                continue
            shopper = self._shopper(event, owners)
            state = self._update(event, shopper)
            session = self._session_of(event, shopper)
            session_state = self._step(event, session)
            if event["event_type"] not in EVALUATED or event.get("channel") == "store":
                continue
            self.counts["checked"] += 1
            if all(f"{rule.name}:{session}" in self.fired for rule in self.rules):
                continue
            customer = shopper.partition(":")[2] if shopper.startswith("customer:") else None
            if customer is not None and customer not in traits:
                traits[customer] = self.store.traits(customer)
            home = state.home_store() if customer else None
            if event["event_type"] == "view" and self.stock.stocks(home, event["item_id"]):
                session_state.stocked_views[event["item_id"]] = None
            item = Pending(
                event, shopper, session, None, state.cart(event), _cart(session_state.carts, event),
                traits.get(customer, {}), home,
                list(session_state.stocked_views)[::-1], session_state.bought, session_state.steps,
            )  # fmt: skip
            # Only a rule whose other conditions hold now needs the signals: most events are checked without the model.
            if not any(may_fire(rule, item, self.fired) for rule in self.rules):
                continue
            context = Query(
                now=int(event["event_time"]),
                device_type=event.get("device_type"),
                referrer=event.get("referrer"),
                region=event.get("region"),
            )
            # What was known at this event: arrival order need not be time order (a backfill, a late device).
            known = _until(state.events, event)
            bought = _until(state.purchases, event)[::-1]
            item.query = with_events(context, known, bought, item.traits)
            pending.append(item)
        self.counts["scored"] += len(pending)
        signals = self._signals([p.query for p in pending]) if self.needs_signals else [None] * len(pending)
        messages = []
        for item, row_signals in zip(pending, signals):
            for rule in self.rules:
                if may_fire(rule, item, self.fired) and rule.holds_signal(row_signals):
                    message_id = f"{rule.name}:{item.session}"
                    self.fired.add(message_id)
                    self.counts[f"fired/{rule.name}"] += 1
                    messages.append(self._message(rule, message_id, item, row_signals))
        self._prune()
        return messages

    def _signals(self, queries: list[Query]) -> list[dict | None]:
        out = []
        for start in range(0, len(queries), 256):
            for result in self.recommender.intent(queries[start : start + 256]):
                out.append(None if isinstance(result, RequestError) else result.info.get("intent"))
        return out

    def _message(self, rule: Rule, message_id: str, item: Pending, signals: dict | None) -> dict:
        from intentrec.serving.abandoned_carts import cart_complements

        event = item.event
        channel = ACTIONS[rule.action][0]
        to = event.get("device_id") or item.session
        if rule.action == "cart_push":
            channel, to = ("email", item.traits["email"]) if item.traits.get("email") else ("push", to)
        message = {
            "message_id": message_id,
            "rule": rule.name,
            "action": rule.action,
            "channel": channel,
            "to": item.home_store if rule.action == "clienteling" else to,
            "session_id": item.session,
            "shopper": item.shopper,
            "customer_id": item.shopper.partition(":")[2] if item.shopper.startswith("customer:") else None,
            "device_id": event.get("device_id"),
            "event_id": event["event_id"],
            "event_time": int(event["event_time"]),
            "signals": signals,
            "cart": [{"item_id": i, "quantity": q} for i, q in sorted(item.cart.items())],
        }
        k = rule.k
        if rule.action == "cart_push":
            query = replace(item.query, k=min(3 * k, MAX_K), exclude_in_cart=True)
            message["recommendations"], labels = cart_complements(self.recommender, query, item.cart, k)
        else:
            wanted = MAX_K if rule.action == "clienteling" else k
            result = self.recommender.recommend([replace(item.query, k=wanted, exclude_in_cart=True)])[0]
            if isinstance(result, RequestError):
                raise result
            ids = result.item_ids
            if rule.action == "clienteling":
                ids = [i for i in ids if self.stock.stocks(item.home_store, i)]
                message.update(store_id=item.home_store, browsed=item.browsed)
            message["recommendations"], labels = ids[:k], result.labels()
        message.update(labels)
        return message


def may_fire(rule: Rule, item: Pending, fired: set[str]) -> bool:
    """Whether `rule` may fire at `item` whatever the signals say: not fired in the session yet, enough steps, its
    conditions hold."""
    return (
        f"{rule.name}:{item.session}" not in fired
        and item.steps >= rule.min_steps
        and all(_holds(need, rule, item) for need in rule.needs)
    )


def _holds(need: str, rule: Rule, item: Pending) -> bool:
    if need == "cart":
        return bool(item.session_cart)
    if need == "no_purchase":
        return not item.bought
    if need == "customer":
        return item.shopper.startswith("customer:")
    if need == "loyalty_member":
        return bool(item.traits.get("loyalty_member"))
    if need == "email":
        return bool(item.traits.get("email"))
    return item.home_store is not None and len(item.browsed) >= rule.min_views  # home_store_stock


def onsite_offers(
    rules: list[Rule],
    events: list[dict],
    shopper: str,
    signals: dict | None,
    fired: set[str],
    cart: dict | None = None,
    traits: dict | None = None,
) -> list[tuple[Rule, str]]:
    """The on-site rules (`exit_offer`) that fire now, with their message ids: the rules of the trigger command,
    checked on the session of the latest of `events` (a shopper's events, oldest first; feedback is skipped) with
    `signals` (recommend's `info.intent`). `shopper`: "customer:<id>" or "device:<id>"; `cart`, `traits`: what the
    message would show and the customer's stored traits. Adds the message ids to `fired`."""
    events = [e for e in events if e.get("event_type") not in FEEDBACK_TYPES]
    if not events:
        return []
    latest = events[-1]
    session = latest.get("session_id") or shopper
    state = SessionState()
    for event in events:
        if (event.get("session_id") or shopper) == session:
            state.add(event)
    item = Pending(
        latest, shopper, session, None, dict(cart or {}), _cart(state.carts, latest), dict(traits or {}), None, [],
        state.bought, state.steps,
    )  # fmt: skip
    out = []
    for rule in rules:
        if rule.action == "exit_offer" and may_fire(rule, item, fired) and rule.holds_signal(signals):
            fired.add(f"{rule.name}:{session}")
            out.append((rule, f"{rule.name}:{session}"))
    return out


def _order(event: dict) -> tuple:
    return (int(event["event_time"]), event.get("seq", 0))


def _cart(changes: list, event: dict) -> dict[str, int]:
    """The cart after the time-ordered cart `changes` up to `event` (data.features.replay_cart: the one cart rule)."""
    return replay_cart(
        (e["item_id"], e["event_type"], e.get("quantity"), e["event_time"]) for e in _until(changes, event)
    )[0]


def _until(events: list, event: dict) -> list:
    """The events of the time-ordered list up to and including `event`'s time (a copy)."""
    if not events or _order(events[-1]) <= _order(event):
        return list(events)
    return events[: bisect.bisect_right(events, _order(event), key=_order)]


def _insert(events: list, event: dict, keep: int) -> None:
    """Put `event` into the time-ordered list (events may arrive out of order) and keep the newest `keep`."""
    if not events or _order(events[-1]) <= _order(event):
        events.append(event)
    else:
        bisect.insort(events, event, key=_order)
    if len(events) > keep:
        del events[: len(events) - keep]


# ---------------------------------------------------------------------------------------------- running
def run_batch(triggers: Triggers, after_seq: int = 0, chunk: int = 2048) -> list[dict]:
    """Check the rules over the stored events after `after_seq` (arrival order); the messages."""
    messages, batch = [], []
    for event in triggers.store.iter_events(after_seq=after_seq):
        batch.append(event)
        if len(batch) >= chunk:
            messages += triggers.feed(batch)
            batch = []
    if batch:
        messages += triggers.feed(batch)
    return messages


def follow(
    triggers: Triggers,
    out: Path,
    poll_seconds: float = 1.0,
    max_seconds: float | None = None,
    chunk: int = 2048,
    should_stop=lambda: False,
) -> dict:
    """Check the rules on events as they arrive, appending messages to `out` (flushed to disk before the cursor
    moves); resumes from `<out>.state.json` and never re-sends a message already in `out`."""
    state_path = out.with_name(out.name + ".state.json")
    cursor = json.loads(state_path.read_text())["cursor"] if state_path.is_file() else 0
    if out.is_file():
        for number, line in enumerate(out.read_text().splitlines(), start=1):
            try:
                triggers.fired.add(json.loads(line)["message_id"])
            except (ValueError, KeyError, TypeError):
                raise DataError(
                    f"{out} line {number} is not a trigger message; give follow runs their own out= file"
                ) from None
    if cursor:
        triggers.warm(itertools.takewhile(lambda e: e["seq"] <= cursor, triggers.store.iter_events()))
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sent = 0
    with out.open("a", encoding="utf-8") as handle:
        while not should_stop() and (max_seconds is None or time.monotonic() - started < max_seconds):
            batch = []
            for event in triggers.store.iter_events(after_seq=cursor, chunk=chunk):
                batch.append(event)
                if len(batch) >= chunk:
                    break
            if not batch:
                time.sleep(poll_seconds)
                continue
            messages = triggers.feed(batch)
            handle.write("".join(json.dumps(m) + "\n" for m in messages))
            handle.flush()
            os.fsync(handle.fileno())
            sent += len(messages)
            cursor = batch[-1]["seq"]
            partial = state_path.with_name(state_path.name + ".partial")
            partial.write_text(json.dumps({"cursor": cursor}))
            partial.replace(state_path)
    return {"messages": sent, "cursor": cursor}


KEY_FLAGS = {
    "bundle": "--bundle",
    "store": "--store",
    "rules": "--rules",
    "out": "--out",
    "stock": "--stock",
    "follow": "--follow",
    "poll_seconds": "--poll-seconds",
    "max_seconds": "--max-seconds",
    "after_seq": "--after-seq",
    "session_idle_hours": "--session-idle-hours",
    "threads": "--threads",
}


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}; expected true or false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="export bundle (with intent heads for signals)")
    parser.add_argument("--store", required=True, help="event store URL: sqlite:///<path> or redis://host:port/db")
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES, help="rules file (default: the shipped rules)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one message per fired rule")
    parser.add_argument("--stock", type=Path, default=None, help="CSV store_id,item_id (default: observed sales)")
    parser.add_argument("--follow", type=_boolean, default=False, help="true: check events as they arrive")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=None, help="follow: stop after this long")
    parser.add_argument("--after-seq", type=int, default=0, help="batch: only events stored after this one")
    parser.add_argument("--session-idle-hours", type=float, default=24.0)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the query encoder")
    args = parser.parse_args(key_value_flags(sys.argv[1:] if argv is None else argv, KEY_FLAGS))
    from intentrec.serving.events.store import open_store
    from intentrec.serving.recommender import Recommender

    started = time.perf_counter()
    stop = []
    try:
        store = open_store(args.store, readonly=True)
        load_rules(args.rules)  # the file's own errors before the model loads
        recommender = Recommender(args.bundle, threads=args.threads)
        rules = load_rules(args.rules, available=served_signals(recommender))
        triggers = Triggers(recommender, rules, store, Stock(args.stock), args.session_idle_hours)
        if args.follow:
            for sig in (signals_module.SIGINT, signals_module.SIGTERM):
                signals_module.signal(sig, lambda *_: stop.append(True))
            summary = follow(triggers, args.out, args.poll_seconds, args.max_seconds, should_stop=lambda: bool(stop))
        else:
            messages = run_batch(triggers, after_seq=args.after_seq)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            partial = args.out.with_name(args.out.name + ".partial")
            partial.write_text("".join(json.dumps(m) + "\n" for m in messages))
            partial.replace(args.out)
            summary = {"messages": len(messages)}
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    summary.update(
        out=str(args.out),
        events=triggers.counts["events"],
        checked=triggers.counts["checked"],
        fired={r.name: triggers.counts[f"fired/{r.name}"] for r in rules},
        seconds=round(seconds, 2),
    )
    print(json.dumps(summary))
    return 0


def served_signals(recommender) -> dict[str, str | None]:
    """head -> None when the bundle serves it, else why not."""
    signals = recommender.encoder.signals
    if signals is None:
        return {h: "the model has no intent heads; train with intent.heads=second_stage" for h in SIGNALS}
    off = signals.spec.get("unavailable", {})
    return {h: None if h in signals.heads else off.get(h, "the model has no such head") for h in SIGNALS}


if __name__ == "__main__":
    sys.exit(main())
