"""The synthetic shop: a seeded generator of events, items and customers in the canonical schema.

    python -m data.synthetic data.num_events=1000000 data.seed=0       # generate only
    python -m data.prepare data=synthetic data.num_events=200000      # generate (cached) + prepare

It models what personalization is about and writes the ground truth beside the data (`truth/`):

- catalogue: categories, brands, prices (three price tiers per category), Zipf-like popularity;
- customers: sparse category preferences, price sensitivity, loyalty, region, 1-3 devices of
  different types (the same customer on desktop and mobile);
- sessions: an intent category, and with `intent_shift_prob` a switch to a *complementary* category
  at a random view (dress -> shoes), labelled per event, after a pause of about `shift_pause_s`
  (the shopper leaves the product page and comes back with something else in mind); re-views of the
  same item;
- context that changes which categories and price tiers are likely: device type, hour band, day of
  week, referrer and region each boost a few categories (log-additive, `context_strength`) and
  shift the price tier;
- add-to-cart, removals, purchases, abandoned carts; weekly email campaigns with opens and clicks
  (a click starts a session with `referrer=email` on the campaign's category); in-store purchases
  (`channel=store`) by loyalty members; anonymous sessions that log in mid-way and guest sessions.

Everything is vectorised per chunk of sessions and streamed to Parquet, so memory is bounded by
`chunk_events` whatever `num_events` is; the event count is exact.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from intentrec.config import config_dict
from intentrec.data.schema import (
    CHANNELS,
    CUSTOMER_SCHEMA,
    DEVICE_TYPES,
    EVENT_SCHEMA,
    EVENT_TYPES,
    ITEM_SCHEMA,
    RECOMMENDATION_COLUMNS,
    REFERRERS,
    SCHEMA_VERSION,
)
from intentrec.errors import ConfigError
from intentrec.hashing import settings_hash

log = logging.getLogger(__name__)

CATEGORY_NAMES = (
    "dresses",
    "shoes",
    "bags",
    "jewelry",
    "watches",
    "phones",
    "laptops",
    "headphones",
    "gaming",
    "cameras",
    "books",
    "toys",
    "baby",
    "garden",
    "kitchen",
    "furniture",
    "home_decor",
    "bedding",
    "beauty",
    "fragrance",
    "sports",
    "outdoor",
    "cycling",
    "fitness",
    "groceries",
    "coffee",
    "wine",
    "pet",
    "office",
    "tools",
)
HOUR_BANDS = ("night", "morning", "afternoon", "evening")  # 0-5, 6-11, 12-17, 18-23 UTC
TIERS = ("budget", "mid", "premium")
ET = {name: i for i, name in enumerate(EVENT_TYPES)}
GENERATOR_VERSION = 3


# A break inside a session (data.long_pause_prob): longer than the 30-minute session gap, under 2 hours.
LONG_PAUSE_MS = (31 * 60_000, 120 * 60_000)


@dataclass(frozen=True)
class ShopConfig:
    """Knobs of the synthetic shop (`conf/data/synthetic.yaml` documents each)."""

    num_events: int = 200_000
    seed: int = 0
    catalog_size: int | None = None
    num_customers: int | None = None
    num_categories: int = 30
    brands_per_category: int = 6
    num_regions: int = 6
    days: int = 91
    start_date: str = "2026-01-05"
    mean_views_per_session: float = 6.0
    intent_shift_prob: float = 0.35
    context_strength: float = 2.0
    complement_strength: float = 3.0
    shift_pause_s: float = 300.0
    long_pause_prob: float = 0.0
    popularity_exponent: float = 1.0
    guest_session_prob: float = 0.08
    late_login_prob: float = 0.25
    store_visit_prob: float = 0.04
    new_item_share: float = 0.1
    new_item_days: int = 21
    chunk_events: int = 500_000

    def resolved(self) -> ShopConfig:
        if self.num_events < 1000 or self.num_events > 50_000_000:
            raise ConfigError(f"data.num_events={self.num_events}; expected 1,000 to 50,000,000 events.")
        if not 2 <= self.num_categories <= 10_000:
            raise ConfigError(f"data.num_categories={self.num_categories}; expected 2 to 10,000.")
        if not 0.0 <= self.shift_pause_s <= 1000.0:
            raise ConfigError(
                f"data.shift_pause_s={self.shift_pause_s}; expected 0 to 1,000 seconds (1.5 x the pause must stay "
                "under the 30-minute session gap)."
            )
        if self.chunk_events < 1000:
            raise ConfigError(f"data.chunk_events={self.chunk_events}; expected at least 1,000.")
        for key in (
            "intent_shift_prob",
            "guest_session_prob",
            "late_login_prob",
            "store_visit_prob",
            "new_item_share",
            "long_pause_prob",
        ):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"data.{key}={getattr(self, key)}; expected a probability in [0, 1].")
        catalog_size = self.catalog_size or int(np.clip(self.num_events // 40, 3 * self.num_categories, 200_000))
        num_customers = self.num_customers or int(np.clip(self.num_events // 60, 50, 2_000_000))
        if catalog_size < 3 * self.num_categories:
            raise ConfigError(
                f"data.catalog_size={catalog_size} is below 3 x data.num_categories={3 * self.num_categories}: every "
                f"category needs an item per price tier. Raise catalog_size or lower num_categories."
            )
        return ShopConfig(**{**asdict(self), "catalog_size": catalog_size, "num_customers": num_customers})

    def fingerprint(self) -> str:
        return settings_hash({**asdict(self.resolved()), "generator_version": GENERATOR_VERSION})


def _gumbel_argmax(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample one index per row of (N, K) logits (Gumbel-max trick), without a Python loop."""
    return np.argmax(logits - np.log(-np.log(rng.random(logits.shape))), axis=1)


def _str_ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers, pa.int64()), pa.string()), "")


class World:
    """The static part of the shop: catalogue, customers, devices, context effects, campaigns."""

    def __init__(self, cfg: ShopConfig):
        rng = np.random.default_rng([cfg.seed, 1])
        C, N, U = cfg.num_categories, cfg.catalog_size, cfg.num_customers
        self.cfg = cfg
        self.category_names = [CATEGORY_NAMES[c] if c < len(CATEGORY_NAMES) else f"category_{c}" for c in range(C)]
        # Catalogue. The first 3*C items cover every (category, tier) so no group is empty.
        category_size = rng.dirichlet(np.full(C, 2.0))
        item_category = np.concatenate([np.repeat(np.arange(C), 3), rng.choice(C, N - 3 * C, p=category_size)])
        brand_factor = np.exp(rng.normal(0, 0.4, size=(C, cfg.brands_per_category)))
        item_brand = rng.integers(0, cfg.brands_per_category, N)
        base_price = np.exp(rng.normal(3.3, 0.9, C))
        self.item_price = np.round(
            base_price[item_category] * brand_factor[item_category, item_brand] * np.exp(rng.normal(0, 0.45, N)),
            2,
        ).clip(0.5)
        # Tier = price tertile within the category.
        order = np.lexsort((self.item_price, item_category))
        rank_in_category = np.empty(N, dtype=np.int64)
        starts = np.searchsorted(item_category[order], np.arange(C))
        counts = np.bincount(item_category, minlength=C)
        rank_in_category[order] = np.arange(N) - np.repeat(starts, counts)
        self.item_tier = np.minimum(rank_in_category * 3 // counts[item_category], 2)
        self.item_category = item_category
        self.item_brand = item_brand
        self.popularity = 1.0 / rng.permutation(np.arange(1, N + 1)) ** cfg.popularity_exponent
        # Sampling table: items sorted by (category, tier) group, cumulative popularity per group,
        # offset by the group number so one searchsorted samples every row at once.
        group = item_category * 3 + self.item_tier
        self.group_order = np.argsort(group, kind="stable")
        sorted_group = group[self.group_order]
        weights = self.popularity[self.group_order]
        group_totals = np.bincount(sorted_group, weights=weights, minlength=3 * C)
        cumulative = np.cumsum(weights) - np.repeat(
            np.cumsum(group_totals) - group_totals, np.bincount(sorted_group, minlength=3 * C)
        )
        self.group_cdf = sorted_group + cumulative / group_totals[sorted_group]
        # Customers.
        self.customer_pref = np.log(rng.dirichlet(np.full(C, 0.25), size=U) + 1e-3)  # (U, C)
        self.customer_price = rng.normal(0, 1.0, U)  # > 0 leans premium
        self.customer_loyal = rng.random(U) < 0.3
        self.customer_region = rng.choice(cfg.num_regions, U, p=rng.dirichlet(np.full(cfg.num_regions, 3.0)))
        self.customer_activity = np.exp(rng.normal(0, 1.0, U))
        self.customer_activity /= self.customer_activity.sum()
        self.customer_referrer = np.log(rng.dirichlet(np.array([4.0, 3.0, 1.0, 1.5, 1.5, 0.5]) * 2, size=U))
        # Devices: 1-3 per customer, of distinct types.
        self.device_count = rng.choice([1, 2, 3], U, p=[0.45, 0.4, 0.15])
        self.device_offset = np.concatenate([[0], np.cumsum(self.device_count)[:-1]])
        num_devices = int(self.device_count.sum())
        self.device_customer = np.repeat(np.arange(U), self.device_count)
        first_type = rng.choice(3, U, p=[0.45, 0.45, 0.10])
        step = np.arange(num_devices) - np.repeat(self.device_offset, self.device_count)
        self.device_type = (np.repeat(first_type, self.device_count) + step) % 3
        self.device_channel = np.where(self.device_type == 0, 0, np.where(rng.random(num_devices) < 0.6, 1, 0))
        # Context effects: each value of each context dimension boosts a few categories.
        self.effects = {}
        for dimension, values in (
            ("device_type", DEVICE_TYPES),
            ("hour_band", HOUR_BANDS),
            ("day_of_week", ("mon", "tue", "wed", "thu", "fri", "sat", "sun")),
            ("referrer", REFERRERS),
            ("region", tuple(f"r{r}" for r in range(cfg.num_regions))),
        ):
            boosted = np.stack([rng.choice(C, min(3, C), replace=False) for _ in values])
            table = np.zeros((len(values), C))
            np.put_along_axis(table, boosted, cfg.context_strength, axis=1)
            self.effects[dimension] = {"values": list(values), "boosted": boosted, "table": table}
        # Price-tier shifts by context: (budget, mid, premium) logits.
        self.tier_shift = {
            "device_type": np.array([[-0.6, 0, 0.8], [0.8, 0, -0.8], [0, 0.3, 0]]),
            "hour_band": np.array([[0.7, 0, -0.5], [0, 0, 0], [0, 0, 0], [-0.3, 0, 0.4]]),
            "loyalty": np.array([[0, 0, 0], [-0.4, 0, 0.6]]),
        }
        # Complements: the category a shopper moves to after this one (dress -> shoes).
        self.complements = np.stack(
            [rng.choice(np.delete(np.arange(C), c), min(2, C - 1), replace=False) for c in range(C)]
        )
        self.complement_table = np.zeros((C, C))
        np.put_along_axis(self.complement_table, self.complements, cfg.complement_strength, axis=1)
        # Weekly email campaigns (Tuesdays 10:00 UTC), each featuring a popular item of one category.
        self.start_ms = int(np.datetime64(cfg.start_date, "ms").astype(np.int64))
        first_tuesday = (1 - (self._dow(np.array([self.start_ms]))[0])) % 7
        self.campaign_ms = self.start_ms + (np.arange(first_tuesday, cfg.days, 7) * 86400 + 10 * 3600) * 1000
        self.campaign_category = rng.choice(C, len(self.campaign_ms), p=category_size)
        # New arrivals: a share of items (never the first 3*C, which anchor every group) launch at a
        # random time in the last `new_item_days`; before that nobody sees them, and a draw that
        # lands on one falls back to its group's most popular launched item (the anchor).
        is_new = rng.random(N) < cfg.new_item_share
        is_new[: 3 * C] = False
        launch_day = np.where(is_new, rng.uniform(max(cfg.days - cfg.new_item_days, 0), cfg.days, N), 0.0)
        self.item_launch_ms = np.where(is_new, self.start_ms + (launch_day * 86_400_000).astype(np.int64), 0)
        by_group = np.lexsort((-self.popularity, is_new, group))  # per group: launched first, popular first
        self.group_anchor = np.full(3 * C, -1)
        self.group_anchor[group[by_group][::-1]] = by_group[::-1]  # last write wins -> first of each group
        best = np.full(C, -1)
        by_pop = np.lexsort((-self.popularity, is_new))
        best[item_category[by_pop][::-1]] = by_pop[::-1]  # most popular launched item per category
        self.campaign_item = best[self.campaign_category]

    @classmethod
    def from_shop(cls, shop_dir: str | Path) -> World:
        """The world of a generated shop (its `shop.json` holds the config); the simulator's ground truth."""
        manifest = Path(shop_dir) / "shop.json"
        if not manifest.is_file():
            raise ConfigError(
                f"{shop_dir}: no shop.json; expected a synthetic shop folder (artifacts/shops/<fingerprint>)"
            )
        config = json.loads(manifest.read_text())["config"]
        return cls(ShopConfig(**config).resolved())

    @staticmethod
    def _dow(ms: np.ndarray) -> np.ndarray:
        return ((ms // 86_400_000) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday

    def sample_items(
        self, category: np.ndarray, tier: np.ndarray, at_ms: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        group = category * 3 + tier
        position = np.searchsorted(self.group_cdf, group + rng.random(len(group)) * (1 - 1e-12), side="right")
        items = self.group_order[np.minimum(position, len(self.group_order) - 1)]
        unavailable = self.item_launch_ms[items] > at_ms
        items[unavailable] = self.group_anchor[group[unavailable]]
        return items

    def intent_logits(self, customer, ctx) -> np.ndarray:
        logits = self.customer_pref[customer].copy()
        for dimension, index in ctx.items():
            logits += self.effects[dimension]["table"][index]
        return logits

    def tier_logits(self, customer, device_type, hour_band) -> np.ndarray:
        return (
            self.customer_price[customer, None] * np.array([-1.0, 0.0, 1.0])
            + self.tier_shift["device_type"][device_type]
            + self.tier_shift["hour_band"][hour_band]
            + self.tier_shift["loyalty"][self.customer_loyal[customer].astype(int)]
        )


def _chunk(world: World, num_sessions: int, rng: np.random.Generator) -> dict:
    """Generate `num_sessions` sessions; returns per-event arrays (chunk-local session index)."""
    cfg = world.cfg
    S = num_sessions
    customer = rng.choice(cfg.num_customers, S, p=world.customer_activity)
    is_store = (rng.random(S) < cfg.store_visit_prob) & world.customer_loyal[customer]
    device = world.device_offset[customer] + rng.integers(0, world.device_count[customer])
    device_type = world.device_type[device]
    day = rng.integers(0, cfg.days, S)
    hour_profile = np.array([1, 0.5, 0.3, 0.3, 0.3, 0.5, 1, 2, 3, 3, 3, 3, 4, 4, 3, 3, 3, 4, 5, 6, 7, 7, 5, 2.0])
    hour = np.where(is_store, rng.integers(10, 19, S), rng.choice(24, S, p=hour_profile / hour_profile.sum()))
    start_ms = world.start_ms + (day * 86400 + hour * 3600 + rng.integers(0, 3600, S)) * 1000
    dow = world._dow(start_ms)
    hour_band = hour // 6
    referrer = _gumbel_argmax(world.customer_referrer[customer], rng)
    region = world.customer_region[customer]
    # Email sessions follow the latest campaign; before the first campaign they count as direct.
    campaign = np.searchsorted(world.campaign_ms, start_ms, side="right") - 1
    is_email = (referrer == REFERRERS.index("email")) & (campaign >= 0) & ~is_store
    referrer = np.where((referrer == REFERRERS.index("email")) & ~is_email, 0, referrer)
    ctx = {
        "device_type": device_type,
        "hour_band": hour_band,
        "day_of_week": dow,
        "referrer": referrer,
        "region": region,
    }
    logits = world.intent_logits(customer, ctx)
    category_1 = _gumbel_argmax(logits, rng)
    campaign_pull = is_email & (rng.random(S) < 0.7)
    category_1 = np.where(campaign_pull, world.campaign_category[np.maximum(campaign, 0)], category_1)
    shift_logits = logits + world.complement_table[category_1]
    shift_logits[np.arange(S), category_1] = -np.inf
    category_2 = _gumbel_argmax(shift_logits, rng)
    views = np.minimum(rng.geometric(1.0 / cfg.mean_views_per_session, S), 60)
    views = np.where(is_store, rng.integers(1, 4, S), views)  # store: items bought, no views
    shifts = ~is_store & (views >= 3) & (rng.random(S) < cfg.intent_shift_prob)
    shift_at = np.where(shifts, 1 + (rng.random(S) * (views - 1)).astype(np.int64), views)  # first view of new intent

    # Views (or store purchases): one row per step.
    V = int(views.sum())
    view_session = np.repeat(np.arange(S), views)
    view_pos = np.arange(V) - np.repeat(np.cumsum(views) - views, views)
    after_shift = view_pos >= shift_at[view_session]
    view_category = np.where(after_shift, category_2[view_session], category_1[view_session])
    tier = _gumbel_argmax(
        world.tier_logits(customer[view_session], device_type[view_session], hour_band[view_session]), rng
    )
    view_item = world.sample_items(view_category, tier, start_ms[view_session], rng)
    repeat = (view_pos > 0) & (rng.random(V) < 0.15)
    repeat[1:] &= after_shift[1:] == after_shift[:-1]
    view_item[1:] = np.where(repeat[1:], view_item[:-1], view_item[1:])
    first_view = np.cumsum(views) - views
    view_item[first_view[campaign_pull]] = world.campaign_item[campaign[campaign_pull]]
    view_store = is_store[view_session]

    # Cart: add-to-cart after some views; removals and the purchase decision at the end.
    loyal = world.customer_loyal[customer]
    p_cart = 0.10 + 0.06 * loyal + 0.06 * np.isin(referrer, [1, 2]) + 0.04 * (device_type == 0)
    carted = ~view_store & (rng.random(V) < p_cart[view_session])
    cart_idx = np.flatnonzero(carted)
    removed = rng.random(len(cart_idx)) < 0.15
    kept_idx = cart_idx[~removed]
    cart_left = np.bincount(view_session[kept_idx], minlength=S)
    p_convert = 0.40 + 0.15 * loyal + 0.10 * (device_type == 0) - 0.10 * (device_type == 1) + 0.10 * (referrer == 1)
    converted = (cart_left > 0) & (rng.random(S) < p_convert)
    abandoned = (cart_left > 0) & ~converted
    bought_idx = kept_idx[converted[view_session[kept_idx]]]

    parts = []  # (session, order key, item, event type, quantity, intent category, after shift)

    def add(session, key, item, event_type, quantity, category, shifted):
        parts.append(
            (
                session,
                key.astype(np.float64),
                item,
                np.full(len(session), event_type, np.int8) if np.isscalar(event_type) else event_type,
                quantity,
                category,
                shifted,
            )
        )

    add(
        view_session,
        2.0 * view_pos,
        view_item,
        np.where(view_store, ET["store_purchase"], ET["view"]).astype(np.int8),
        np.where(view_store, rng.integers(1, 3, V), 0).astype(np.int32),
        view_category,
        after_shift,
    )
    cart_qty = np.where(rng.random(len(cart_idx)) < 0.1, 2, 1).astype(np.int32)
    add(
        view_session[cart_idx],
        2.0 * view_pos[cart_idx] + 1,
        view_item[cart_idx],
        ET["add_to_cart"],
        cart_qty,
        view_category[cart_idx],
        after_shift[cart_idx],
    )
    rem = cart_idx[removed]
    add(
        view_session[rem],
        2.0 * views[view_session[rem]] + 1 + view_pos[rem] / 1000,
        view_item[rem],
        ET["remove_from_cart"],
        cart_qty[removed],
        view_category[rem],
        after_shift[rem],
    )
    add(
        view_session[bought_idx],
        2.0 * views[view_session[bought_idx]] + 2 + view_pos[bought_idx] / 1000,
        view_item[bought_idx],
        ET["purchase"],
        cart_qty[~removed][converted[view_session[kept_idx]]],
        view_category[bought_idx],
        after_shift[bought_idx],
    )
    email_sessions = np.flatnonzero(is_email)
    featured = world.campaign_item[campaign[email_sessions]]
    featured_category = world.item_category[featured]
    no_shift = np.zeros(len(email_sessions), bool)
    for key, event_type in ((-2.0, "email_open"), (-1.0, "email_click")):  # both before the first view
        no_quantity = np.zeros(len(email_sessions), np.int32)
        add(
            email_sessions,
            np.full(len(email_sessions), key),
            featured,
            ET[event_type],
            no_quantity,
            featured_category,
            no_shift,
        )

    session, key, item, event_type, quantity, category, shifted = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((key, session))
    session, item, event_type, quantity, category, shifted = (
        a[order] for a in (session, item, event_type, quantity, category, shifted)
    )
    E = len(session)
    counts = np.bincount(session, minlength=S)
    rank = np.arange(E) - np.repeat(np.cumsum(counts) - counts, counts)
    # Time: gaps between events; email open -> click takes minutes, browsing tens of seconds.
    mean_gap = np.where(device_type[session] == 1, 25_000, 45_000)
    gaps = rng.exponential(1.0, E) * mean_gap
    gaps = np.where(event_type == ET["email_click"], rng.uniform(60_000, 1_800_000, E), gaps)
    # The first view of a new intent comes after a pause of 0.5-1.5 x shift_pause_s.
    new_intent = shifted & ~np.r_[False, shifted[:-1]] & (event_type == ET["view"])
    # The event's own exponential draw, mapped to uniform(0, 1), sets where in that range it falls.
    pause = (0.5 + -np.expm1(-gaps / mean_gap)) * cfg.shift_pause_s * 1000
    gaps = np.where(new_intent & (cfg.shift_pause_s > 0), pause, gaps)
    if cfg.long_pause_prob > 0:  # a shopper back after a break, in the same session (same session id)
        breaks = rng.spawn(1)[0]  # a child stream: the rest of the shop is drawn as without breaks
        away = breaks.random(E) < cfg.long_pause_prob
        gaps = np.where(away, breaks.uniform(LONG_PAUSE_MS[0], LONG_PAUSE_MS[1], E), gaps)
    gaps[rank == 0] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[np.cumsum(counts) - counts], counts)
    event_ms = start_ms[session] + elapsed.astype(np.int64)
    # Identity: late-login sessions hide the customer on events before the login step; guests always.
    login = np.zeros(S, np.int64)  # first event index that carries the customer id
    kind = rng.random(S)
    guest = ~is_store & (kind < cfg.guest_session_prob)
    late = ~is_store & ~guest & (kind < cfg.guest_session_prob + cfg.late_login_prob) & (counts >= 2)
    login[late] = 1 + (rng.random(late.sum()) * (counts[late] - 1)).astype(np.int64)
    login[guest] = np.iinfo(np.int64).max
    known = rank >= login[session]
    price = world.item_price[item]
    return {
        "session": session,
        "item": item,
        "event_type": event_type,
        "quantity": quantity,
        "event_ms": event_ms,
        "known": known,
        "price": price,
        "category": category,
        "after_shift": shifted,
        "sessions": {
            "customer": customer,
            "device": device,
            "device_type": device_type,
            "is_store": is_store,
            "start_ms": start_ms,
            "hour": hour,
            "dow": dow,
            "referrer": referrer,
            "region": region,
            "category_1": category_1,
            "category_2": np.where(shifts, category_2, -1),
            "shift_at": np.where(shifts, shift_at, -1),
            "login": np.where(guest, "guest", np.where(late, "late_login", "logged_in")),
            "converted": converted,
            "abandoned": abandoned,
            "campaign": np.where(is_email, campaign, -1),
            "num_events": counts,
        },
    }


def _events_batch(
    world: World, chunk: dict, keep: int, session_base: int, event_base: int
) -> tuple[pa.Table, pa.Table]:
    """Canonical events (first `keep` rows of the chunk) and their per-event ground truth."""
    s = chunk["sessions"]
    session = chunk["session"][:keep]
    customer = s["customer"][session]
    device = s["device"][session]
    store = s["is_store"][session]
    event_type = chunk["event_type"][:keep]
    channel = np.where(
        store,
        CHANNELS.index("store"),
        np.where(
            np.isin(event_type, [ET["email_open"], ET["email_click"]]),
            CHANNELS.index("email"),
            world.device_channel[device],
        ),
    )
    session_ids = _str_ids("s", session + session_base)
    customer_ids = _str_ids("c", customer)
    known = chunk["known"][:keep]
    quantity = chunk["quantity"][:keep]
    region_names = np.array([f"r{r}" for r in range(world.cfg.num_regions)], dtype=object)
    categorical = lambda values, codes, mask=None: pa.DictionaryArray.from_arrays(  # noqa: E731
        pa.array(codes.astype(np.int32), mask=mask), pa.array(values)
    ).cast(pa.string())
    events = pa.table(
        {
            "event_id": _str_ids("e", np.arange(event_base, event_base + keep)),
            "event_time": pa.array(chunk["event_ms"][:keep], pa.int64()).cast(EVENT_SCHEMA.field("event_time").type),
            "session_id": session_ids,
            "customer_id": pc.if_else(pa.array(known), customer_ids, pa.scalar(None, pa.string())),
            "device_id": pc.if_else(pa.array(~store), _str_ids("d", device), pa.scalar(None, pa.string())),
            "item_id": _str_ids("i", chunk["item"][:keep]),
            "event_type": categorical(list(EVENT_TYPES), event_type),
            "price": pa.array(chunk["price"][:keep]),
            "quantity": pa.array(quantity, pa.int32(), mask=quantity == 0),
            "channel": categorical(list(CHANNELS), channel),
            "device_type": categorical(list(DEVICE_TYPES), s["device_type"][session], mask=store),
            "referrer": categorical(list(REFERRERS), s["referrer"][session], mask=store),
            "region": pa.array(region_names[s["region"][session]], pa.string()),
            # The shop's log has no served lists: the feedback columns are empty.
            **{c: pa.nulls(keep, EVENT_SCHEMA.field(c).type) for c in RECOMMENDATION_COLUMNS},
        },
        schema=EVENT_SCHEMA,
    )
    truth = pa.table(
        {
            "event_id": events["event_id"],
            "true_customer_id": customer_ids,
            "intent_category": pa.array(
                np.array(world.category_names, dtype=object)[chunk["category"][:keep]], pa.string()
            ),
            "after_intent_shift": pa.array(chunk["after_shift"][:keep]),
        }
    )
    return events, truth


def _sessions_truth(world: World, chunk: dict, num_sessions: int, session_base: int) -> pa.Table:
    s = {k: v[:num_sessions] for k, v in chunk["sessions"].items()}
    names = np.array(world.category_names + [None], dtype=object)
    return pa.table(
        {
            "session_id": _str_ids("s", np.arange(session_base, session_base + num_sessions)),
            "true_customer_id": _str_ids("c", s["customer"]),
            "kind": pa.array(
                np.where(s["is_store"], "store", np.where(s["campaign"] >= 0, "email", "web")).astype(object)
            ),
            "login": pa.array(s["login"].astype(object)),
            "intent_category": pa.array(names[s["category_1"]]),
            "shifted_to_category": pa.array(names[s["category_2"]]),
            "shift_at_view": pa.array(s["shift_at"], pa.int32()),
            "campaign": pa.array(s["campaign"], pa.int32()),
            "converted": pa.array(s["converted"]),
            "cart_abandoned": pa.array(s["abandoned"]),
            "num_events": pa.array(s["num_events"], pa.int32()),
        }
    )


def _write_static(world: World, out: Path) -> None:
    cfg = world.cfg
    items = pa.table(
        {
            "item_id": _str_ids("i", np.arange(cfg.catalog_size)),
            "category_id": pa.array(np.array(world.category_names, dtype=object)[world.item_category]),
            "brand": pc.binary_join_element_wise(
                pa.array(np.array(world.category_names, dtype=object)[world.item_category]),
                pc.cast(pa.array(world.item_brand), pa.string()),
                "-brand",
            ),
            "price": pa.array(world.item_price),
            "price_tier": pa.array(np.array(TIERS, dtype=object)[world.item_tier]),
            "first_available": pa.array(world.item_launch_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(
        items.cast(
            pa.schema(
                list(ITEM_SCHEMA)
                + [
                    pa.field("price_tier", pa.string()),
                    pa.field("first_available", pa.timestamp("ms", tz="UTC")),
                ],
                metadata=ITEM_SCHEMA.metadata,
            )
        ),
        out / "items.parquet",
    )
    customers = pa.table(
        {
            "customer_id": _str_ids("c", np.arange(cfg.num_customers)),
            "loyalty_member": pa.array(world.customer_loyal),
            "home_region": pa.array([f"r{r}" for r in world.customer_region]),
        }
    )
    pq.write_table(
        customers.cast(
            pa.schema(
                list(CUSTOMER_SCHEMA) + [pa.field("home_region", pa.string())],
                metadata=CUSTOMER_SCHEMA.metadata,
            )
        ),
        out / "customers.parquet",
    )
    truth = out / "truth"
    pq.write_table(
        pa.table(
            {
                "customer_id": _str_ids("c", np.arange(cfg.num_customers)),
                "category_preference": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.exp(world.customer_pref).astype(np.float32).ravel()), cfg.num_categories
                ),
                "price_affinity": pa.array(world.customer_price),
                "activity": pa.array(world.customer_activity),
            }
        ),
        truth / "customers.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "device_id": _str_ids("d", np.arange(len(world.device_customer))),
                "customer_id": _str_ids("c", world.device_customer),
                "device_type": pa.array(np.array(DEVICE_TYPES, dtype=object)[world.device_type]),
            }
        ),
        truth / "devices.parquet",
    )
    effects = {
        "categories": world.category_names,
        "context_strength": cfg.context_strength,
        "context_boosts": {
            dim: {
                value: [world.category_names[c] for c in boosted] for value, boosted in zip(e["values"], e["boosted"])
            }
            for dim, e in world.effects.items()
        },
        "hour_bands": {"night": [0, 5], "morning": [6, 11], "afternoon": [12, 17], "evening": [18, 23]},
        "price_tier_shift_logits": {
            dim: {
                str(v): list(map(float, row))
                for v, row in zip(
                    {"device_type": DEVICE_TYPES, "hour_band": HOUR_BANDS, "loyalty": ("no", "yes")}[dim],
                    table,
                )
            }
            for dim, table in world.tier_shift.items()
        },
        "complements": {
            world.category_names[c]: [world.category_names[x] for x in row] for c, row in enumerate(world.complements)
        },
        "complement_strength": cfg.complement_strength,
        "shift_pause_s": [0.5 * cfg.shift_pause_s, 1.5 * cfg.shift_pause_s],
        "long_pause_ms": list(LONG_PAUSE_MS) if cfg.long_pause_prob > 0 else None,
        "campaigns": [
            {"campaign": i, "time_ms": int(t), "category": world.category_names[c], "item_id": f"i{item}"}
            for i, (t, c, item) in enumerate(zip(world.campaign_ms, world.campaign_category, world.campaign_item))
        ],
        "notes": "Intent category logits = log customer preference + sum of context boosts (+ complement boost after a "
        "shift). Price tier logits = price affinity * (-1, 0, 1) + shifts. Hours are UTC.",
    }
    (truth / "effects.json").write_text(json.dumps(effects, indent=2))


def generate(cfg: ShopConfig, out: Path) -> dict:
    """Generate the shop into `out` (events.parquet, items.parquet, customers.parquet, truth/, shop.json).

    Returns the content of `shop.json`. Re-running with the same config reuses the existing files.
    """
    cfg = cfg.resolved()
    fingerprint = cfg.fingerprint()
    manifest_path = out / "shop.json"
    if manifest_path.is_file():
        existing = json.loads(manifest_path.read_text())
        if existing.get("fingerprint") == fingerprint:
            log.info("synthetic shop %s already generated in %s", fingerprint, out)
            return existing
    started = time.perf_counter()
    (out / "truth").mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    world = World(cfg)
    _write_static(world, out)
    rng = np.random.default_rng([cfg.seed, 2])
    events_per_session = 1.3 * cfg.mean_views_per_session + 1
    written = sessions_written = 0
    with (
        pq.ParquetWriter(out / "events.parquet", EVENT_SCHEMA) as events_writer,
        pq.ParquetWriter(
            out / "truth" / "events.parquet",
            pa.schema(
                [
                    ("event_id", pa.string()),
                    ("true_customer_id", pa.string()),
                    ("intent_category", pa.string()),
                    ("after_intent_shift", pa.bool_()),
                ]
            ),
        ) as truth_writer,
        pq.ParquetWriter(out / "truth" / "sessions.parquet", _sessions_truth_schema()) as sessions_writer,
    ):
        while written < cfg.num_events:
            wanted = min(cfg.chunk_events, cfg.num_events - written)
            chunk = _chunk(world, max(16, int(wanted / events_per_session * 1.1) + 8), rng)
            per_session = chunk["sessions"]["num_events"]
            events_per_session = len(chunk["session"]) / len(per_session)
            if wanted == cfg.num_events - written and len(chunk["session"]) >= wanted:
                keep = cfg.num_events - written  # the last session may be cut short: the count is exact
            else:
                # Whole sessions up to `wanted` events, so a row group never exceeds chunk_events.
                ends = np.cumsum(per_session)
                keep = int(ends[max(np.searchsorted(ends, wanted, side="right") - 1, 0)])
            num_sessions = int(chunk["session"][keep - 1]) + 1
            events, truth = _events_batch(world, chunk, keep, sessions_written, written)
            events_writer.write_table(events)
            truth_writer.write_table(truth)
            sessions_writer.write_table(_sessions_truth(world, chunk, num_sessions, sessions_written))
            written += keep
            sessions_written += num_sessions
    manifest = {
        "generator": "intentrec.synthetic",
        "generator_version": GENERATOR_VERSION,
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "config": asdict(cfg),
        "counts": {
            "events": written,
            "sessions": sessions_written,
            "items": cfg.catalog_size,
            "customers": cfg.num_customers,
            "devices": int(len(world.device_customer)),
        },
        "seconds": round(time.perf_counter() - started, 2),
        "note": "The last session may be cut short to make the event count exact.",
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    log.info(
        "generated %d events in %d sessions to %s in %.1fs",
        written,
        sessions_written,
        out,
        manifest["seconds"],
    )
    return manifest


def _sessions_truth_schema() -> pa.Schema:
    return pa.schema(
        [
            ("session_id", pa.string()),
            ("true_customer_id", pa.string()),
            ("kind", pa.string()),
            ("login", pa.string()),
            ("intent_category", pa.string()),
            ("shifted_to_category", pa.string()),
            ("shift_at_view", pa.int32()),
            ("campaign", pa.int32()),
            ("converted", pa.bool_()),
            ("cart_abandoned", pa.bool_()),
            ("num_events", pa.int32()),
        ]
    )


def shop_config(data_cfg) -> ShopConfig:
    """ShopConfig from a `data=synthetic` config; unknown keys are ignored (they belong to prepare)."""
    fields = ShopConfig.__dataclass_fields__
    return ShopConfig(**{k: data_cfg[k] for k in fields if k in data_cfg and data_cfg[k] is not None})


def shop_dir_for(artifacts_dir: Path, cfg: ShopConfig) -> Path:
    """Where a shop with this config lives: one folder per config fingerprint, so shops are reused."""
    return Path(artifacts_dir) / "shops" / f"synthetic-{cfg.fingerprint()}"


def _cli(cfg) -> None:

    data_cfg = config_dict(cfg, "data")
    if data_cfg.get("format") != "synthetic":
        raise ConfigError(
            f"data={data_cfg.get('name')!r} is not the synthetic shop; run python -m data.synthetic data=synthetic."
        )
    shop = shop_config(data_cfg)
    manifest = generate(shop, shop_dir_for(cfg.artifacts_dir, shop))
    counts = manifest["counts"]
    print(
        f"synthetic shop {manifest['fingerprint']}: {counts['events']:,} events, {counts['sessions']:,} sessions, "
        f"{counts['items']:,} items, {counts['customers']:,} customers, {counts['devices']:,} devices "
        f"-> {shop_dir_for(cfg.artifacts_dir, shop)} ({manifest['seconds']}s)"
    )


if __name__ == "__main__":
    from intentrec.config import hydra_main

    hydra_main("prepare", _cli)
