"""Simulated shoppers of the synthetic shop against the live stack: Triton answers, the collector records.

    python -m serving.simulator --shop artifacts/shops/<fingerprint> --triton 127.0.0.1:8001 \\
        --collector http://127.0.0.1:8700 --shoppers 2000 --seed 0

Each simulated shopper is a new person with the profile of a customer of the shop's ground truth
(`data.synthetic.World`, drawn by activity): their category preferences, price sensitivity, loyalty,
region and devices, under ids of their own. A shopper has 1 or 2 visits. In
a visit, on one of their devices, at a simulated time:

1. The visit's context (device type, hour, day of week, referrer, region) and the shopper's
   preferences give the intent category, as in the shop's own sessions; with the shop's
   `intent_shift_prob` the intent moves to a complementary category after a view (dress -> shoes).
   The shopper views 1-4 items of the current intent and price tier (the shop's sampler).
2. They ask the real Triton server for a list (`k` items, placement `product`) with the visit's
   events so far and its context (what the events hold: a list can be rebuilt from them), naming themselves (`customer:<id>` when logged in, `device:<id>` otherwise), so the
   server's experiment assigns the arm. Every item of the list is logged as an impression.
3. They examine position p with probability 1 / p^`position_decay` and click an examined item with
   probability sigmoid(`click_base` + `click_intent` when the item is in the current intent category
   + `click_price` x log P(its price tier) / P(the preferred tier) for this shopper in this context).
   A click opens the product page (a view) and puts the item in the cart with probability
   `cart_after_click` (x 0.3 outside the intent).
4. Their own views put items in the cart with the shop's add-to-cart probability of the visit
   (loyalty, referrer, device): the organic part of the shop, the same in every arm. At the end of the
   visit the cart is bought with the shop's conversion probability of the visit (each item at its
   catalogue price), or abandoned.

5. Exit-intent offers (`exit_offers_arm`: the arm of the server's experiment whose shoppers get them): a
   shopper of that arm about to leave with a cart (the conversion draw failed) is asked, by the shop, for
   an offer list (`recommend`, k=4, the cart left out) with the visit's events; when the on-site rule fires
   on the signals that come with it (`serving.triggers.onsite_offers`: the `exit_offer` rules of the trigger
   config, by default exit >= 0.5 with a cart and no purchase) the list is shown (impressions at placement
   `exit_offer`), examined like the other list (step 3), and the cart is bought after all with probability
   `offer_save`. The arms' difference in the report is the offers' effect in this shopper model.

All the visit's events (views, impressions, clicks, add-to-carts, purchases, with the list's
`recommendation_id` on the clicks, carts and purchases that came from it) go to the real collector in
one batch. Shoppers are simulated by `workers` threads; the results depend only on the seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from intentrec.data.schema import DEVICE_TYPES, REFERRERS
from intentrec.errors import ConfigError, IntentrecError

HOUR_PROFILE = np.array([1, 0.5, 0.3, 0.3, 0.3, 0.5, 1, 2, 3, 3, 3, 3, 4, 4, 3, 3, 3, 4, 5, 6, 7, 7, 5, 2.0])


@dataclass(frozen=True)
class ShopperModel:
    """How a simulated shopper reacts to a list (the shop's truth supplies everything else)."""

    k: int = 10  # items per list
    position_decay: float = 0.8  # examination probability 1 / position^decay
    click_base: float = -3.0  # click logit of an examined item outside the intent, in the shopper's price tier
    click_intent: float = 3.0  # + for an item of the current intent category
    click_price: float = 1.0  # x log P(item's tier) / P(preferred tier) for the shopper in this context
    cart_after_click: float = 0.5  # P(add to cart) after a click on an item of the intent (x 0.3 outside it)
    login_prob: float = 0.7  # visits made logged in (the request names the customer; else the device)
    placement: str = "product"
    # Exit-intent offers: shoppers the experiment puts in this arm (None: nobody) get one when they are about to
    # leave with a cart and the shop's on-site rule fires (serving.triggers.onsite_offers on the model's signals).
    exit_offers_arm: str | None = None
    offer_save: float = 0.25  # P(a shopper shown the offer buys the cart after all)


def _sample(logits: np.ndarray, rng: np.random.Generator) -> int:
    weights = np.exp(logits - logits.max())
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def _events_of(events: list[dict]) -> dict:
    """A request's event fields from collector events."""
    return {
        "item_ids": [e["item_id"] for e in events],
        "event_types": [e["event_type"] for e in events],
        "timestamps": [e["event_time"] for e in events],
        "quantities": [e.get("quantity") or 1 for e in events],
    }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class Simulator:
    """Simulated shoppers of `world` against a Triton `client` and a collector (`post(events)`)."""

    def __init__(
        self, world, model: ShopperModel | None = None, seed: int = 0, start_ms: int | None = None, rules=None
    ):
        """`rules`: the trigger rules whose `exit_offer` ones decide the exit offers (default: the shipped rules)."""
        from intentrec.serving.triggers import DEFAULT_RULES, load_rules

        self.world, self.model, self.seed = world, model or ShopperModel(), seed
        self.rules = [
            r for r in (rules if rules is not None else load_rules(DEFAULT_RULES)) if r.action == "exit_offer"
        ]
        # Visits fall on the 7 days from start_ms (default: today, 00:00 UTC).
        self.start_ms = start_ms if start_ms is not None else (int(time.time() * 1000) // 86_400_000) * 86_400_000

    def visit(self, shopper: int, number: int, customer: int, rng: np.random.Generator, ask) -> list[dict]:
        """The events of one visit; `ask(query) -> Recommendation` calls the server."""
        from intentrec.serving.request import Query

        w, m = self.world, self.model
        device = int(w.device_offset[customer] + rng.integers(0, w.device_count[customer]))
        device_type = int(w.device_type[device])
        hour = int(rng.choice(24, p=HOUR_PROFILE / HOUR_PROFILE.sum()))
        day = int(rng.integers(0, 7))
        at = self.start_ms + day * 86_400_000 + hour * 3_600_000 + int(rng.integers(0, 3_000_000))
        day_of_week = int(((at // 86_400_000) + 3) % 7)  # 0 = Monday (1970-01-01 was a Thursday)
        referrer = _sample(w.customer_referrer[customer], rng)
        region = int(w.customer_region[customer])
        context = {"device_type": device_type, "hour_band": hour // 6, "day_of_week": day_of_week,
                   "referrer": referrer, "region": region}  # fmt: skip
        logits = w.intent_logits(np.array([customer]), {k: np.array([v]) for k, v in context.items()})[0]
        intent = _sample(logits, rng)
        tier_logits = w.tier_logits(np.array([customer]), np.array([device_type]), np.array([hour // 6]))[0]
        tier_fit = tier_logits - tier_logits.max()  # log P(tier) / P(preferred tier)
        tier = _sample(tier_logits, rng)
        views = int(rng.integers(1, 5))
        shift_at = int(rng.integers(1, views)) if views > 1 and rng.random() < w.cfg.intent_shift_prob else views
        loyal = bool(w.customer_loyal[customer])
        p_cart = 0.10 + 0.06 * loyal + 0.06 * (referrer in (1, 2)) + 0.04 * (device_type == 0)
        p_convert = 0.40 + 0.15 * loyal + 0.10 * (device_type == 0) - 0.10 * (device_type == 1) + 0.10 * (referrer == 1)
        logged_in = rng.random() < m.login_prob
        # A new person with the profile of a customer of the shop: their own ids, so every simulated
        # shopper is one experiment unit (a shop customer may be drawn as the profile of several).
        person = f"sim{self.seed}-{shopper}"
        session = f"{person}-v{number}"
        device_id = f"{person}-d{device - int(w.device_offset[customer])}"
        who = {"session_id": session, "device_id": device_id, **({"customer_id": person} if logged_in else {})}
        context_fields = {
            "device_type": DEVICE_TYPES[device_type],
            "referrer": REFERRERS[referrer],
            "region": f"r{region}",
        }
        events, cart, clock = [], {}, at

        def add(kind: str, item: str, **fields) -> dict:
            event = {"event_id": f"{session}-{len(events)}", "event_type": kind, "item_id": item,
                     "event_time": clock, **who, **fields}  # fmt: skip
            events.append(event)
            return event

        for position in range(views):
            if position == shift_at:
                intent = int(w.complements[intent][rng.integers(0, w.complements.shape[1])])
            item = int(w.sample_items(np.array([intent]), np.array([tier]), np.array([clock]), rng)[0])
            clock += int(rng.integers(20_000, 90_000))
            add("view", f"i{item}", **context_fields)
            if rng.random() < p_cart:
                add("add_to_cart", f"i{item}", quantity=1, price=float(w.item_price[item]))
                cart[f"i{item}"] = (float(w.item_price[item]), None)
        clock += 5_000
        shown = ask(
            # What the events of the visit hold, and nothing else: a list can be rebuilt from the events
            # (serving.events.off_policy).
            Query(
                **_events_of(events),
                now=clock,
                device_type=DEVICE_TYPES[device_type],
                referrer=REFERRERS[referrer],
                region=f"r{region}",
                k=m.k,
                shopper=f"customer:{person}" if logged_in else f"device:{device_id}",
            )
        )
        for event in shown.impressions(m.placement, event_time=clock, **who):
            events.append(event)

        def react(shown, placement: str) -> None:
            """Examine the list, click, view and maybe add to the cart (step 3)."""
            nonlocal clock
            rid = shown.recommendation_id
            for position, raw in enumerate(shown.item_ids, start=1):
                if rng.random() >= position**-m.position_decay:
                    continue
                item = int(raw[1:])
                match = int(w.item_category[item]) == intent
                logit = m.click_base + m.click_intent * match + m.click_price * tier_fit[int(w.item_tier[item])]
                if rng.random() >= _sigmoid(logit):
                    continue
                clock += int(rng.integers(3_000, 30_000))
                events.append(shown.click(raw, placement=placement, event_time=clock, **who))
                clock += 1_000
                add("view", raw, recommendation_id=rid, **context_fields)
                if rng.random() < m.cart_after_click * (1.0 if match else 0.3) and raw not in cart:
                    add("add_to_cart", raw, quantity=1, price=float(w.item_price[item]), recommendation_id=rid)
                    cart[raw] = (float(w.item_price[item]), rid)

        react(shown, m.placement)
        converts = bool(cart) and rng.random() < p_convert
        if cart and not converts and m.exit_offers_arm is not None and shown.arm == m.exit_offers_arm:
            converts = self._exit_offer(events, cart, clock, who, person if logged_in else None, ask, react, rng)
        if converts:
            clock += int(rng.integers(30_000, 120_000))
            for raw, (price, list_id) in cart.items():
                add("purchase", raw, quantity=1, price=price, **({"recommendation_id": list_id} if list_id else {}))
        return events

    def _exit_offer(self, events, cart, clock, who, customer, ask, react, rng) -> bool:
        """The shopper is about to leave with a cart: the shop asks for an offer list with the visit's events (the
        signals come with it) and shows it when its on-site rule fires; returns whether the cart is bought."""
        from intentrec.serving.request import Query
        from intentrec.serving.triggers import onsite_offers

        actions = [e for e in events if e["event_type"] not in ("impression", "click")]
        last = actions[-1]
        shopper = f"customer:{customer}" if customer else f"device:{who['device_id']}"
        reply = ask(
            Query(
                **_events_of(actions),
                now=clock + 2_000,
                device_type=last.get("device_type"),
                referrer=last.get("referrer"),
                region=last.get("region"),
                k=4,
                exclude_in_cart=True,
                shopper=shopper,
            )
        )
        fired = onsite_offers(self.rules, actions, shopper, reply.intent, set())
        if not fired:
            return False
        events.extend(reply.impressions("exit_offer", shown=fired[0][0].k, event_time=clock + 2_000, **who))
        react(reply, "exit_offer")
        return rng.random() < self.model.offer_save

    def shopper(self, index: int, ask, post) -> int:
        """Simulate shopper `index` (1 or 2 visits); returns the events sent."""
        rng = np.random.default_rng([self.seed, index])
        customer = int(rng.choice(self.world.cfg.num_customers, p=self.world.customer_activity))
        sent = 0
        for number in range(int(rng.integers(1, 3))):
            events = self.visit(index, number, customer, rng, ask)
            post(events)
            sent += len(events)
        return sent


def _poster(url: str, token: str | None):
    import httpx

    client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"} if token else {})

    def post(events: list[dict]) -> None:
        reply = client.post("/v1/events", json={"events": events})
        body = reply.json()
        if reply.status_code != 200 or body.get("rejected"):
            raise IntentrecError(f"the collector refused simulated events: HTTP {reply.status_code} {str(body)[:300]}")

    return post, client


def run(world, triton: str, collector: str, shoppers: int, seed: int = 0, workers: int = 4,
        model: ShopperModel | None = None, token: str | None = None, start_ms: int | None = None,
        rules=None) -> dict:  # fmt: skip
    """Simulate `shoppers` shoppers; returns counts and the throughput."""
    from intentrec.serving.client import Client

    simulator = Simulator(world, model, seed, start_ms, rules)
    local = threading.local()
    opened = []
    lock = threading.Lock()

    def work(index: int) -> int:
        if not hasattr(local, "client"):
            local.client = Client(triton)
            local.post, local.http = _poster(collector, token)
            with lock:
                opened.extend([local.client, local.http])
        return simulator.shopper(index, local.client.recommend, local.post)

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            events = sum(pool.map(work, range(shoppers)))
    finally:
        for handle in opened:
            handle.close()
    seconds = time.perf_counter() - started
    return {
        "shoppers": shoppers,
        "events": events,
        "seconds": round(seconds, 2),
        "shoppers_per_second": round(shoppers / seconds, 1),
        "seed": seed,
        "workers": workers,
        "model": asdict(simulator.model),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shop", type=Path, required=True, help="synthetic shop folder (artifacts/shops/<fingerprint>)"
    )
    parser.add_argument("--triton", default="127.0.0.1:8001", help="gRPC address of the Triton server")
    parser.add_argument("--collector", default="http://127.0.0.1:8700", help="event collector URL")
    parser.add_argument("--token-file", type=Path, default=None, help="the collector's bearer token, if it needs one")
    parser.add_argument("--shoppers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--exit-offers-arm", default=None, help="the experiment arm whose shoppers get exit-intent offers"
    )
    parser.add_argument("--offer-save", type=float, default=ShopperModel.offer_save)
    parser.add_argument("--rules", type=Path, default=None, help="trigger rules (default: conf/triggers/default.yaml)")
    args = parser.parse_args(argv)
    from intentrec.data.synthetic import World

    try:
        if args.shoppers < 1:
            raise ConfigError(f"--shoppers {args.shoppers}; expected at least 1")
        if not 0.0 <= args.offer_save <= 1.0:
            raise ConfigError(f"--offer-save {args.offer_save}; expected a probability in [0, 1]")
        token = args.token_file.read_text().strip() if args.token_file else None
        from intentrec.serving.triggers import load_rules

        rules = load_rules(args.rules) if args.rules else None
        model = ShopperModel(exit_offers_arm=args.exit_offers_arm, offer_save=args.offer_save)
        summary = run(
            World.from_shop(args.shop), args.triton, args.collector, args.shoppers, args.seed, args.workers, model,
            token=token, rules=rules,
        )  # fmt: skip
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
