"""Stage 1, decode: a raw request row -> the model's inputs and the rule sets (a `Row`).

Raw item ids map to the catalogue; unknown ids are dropped and counted (`info.unknown_items`).
Events are put in time order and only the most recent `max_seq_len` kept (`info.truncated`);
purchases among the older events join `past_purchases`, as in training. Time gaps, session starts,
hour and day codes and the gap to `now` come from the feature rules training used (`data.features`).
Context strings the model never saw (a new device type, referrer, region) become "unknown" and are
listed in `info.unknown_context`; an hour outside 0-23, a day of week outside 1-7 (ISO, 1 = Monday)
or an unknown event type is an error. A row past a `RequestLimits` limit is refused first; a row
naming a shopper (`identity`) gets the stored profile merged in (`serving.profiles`).
"""

from __future__ import annotations

import time

import numpy as np

from intentrec.data.features import (
    day_codes,
    hour_codes,
    purchases_before,
    replay_cart,
    session_starts,
    step_gaps_seconds,
    time_gap_buckets,
    window_starts,
)
from intentrec.serving.catalogue import Catalogue
from intentrec.serving.profiles import Profiles
from intentrec.serving.request import (
    MAX_K,
    MAX_QUANTITY,
    Query,
    RequestError,
    RequestLimits,
    check_lengths,
    check_limits,
)
from intentrec.serving.rows import Batch, Row, member


class Decode:
    name = "decode"

    def __init__(self, catalogue: Catalogue, limits: RequestLimits, profiles: Profiles, complement_window_ms: int):
        self.catalogue = catalogue
        self.limits = limits
        self.profiles = profiles
        self.complement_window_ms = complement_window_ms

    def run(self, batch: Batch) -> None:
        for q in batch.queries:
            try:
                profile = None
                q = check_limits(q, self.limits)
                if q.identity:
                    q, profile = self.profiles.merge(q)
                row = self.decode(q)
                if profile is not None:
                    row.info["profile"] = profile
                batch.rows.append(row)
            except RequestError as error:
                batch.rows.append(error)

    def _code(self, table: str, value, name: str, info: dict) -> int:
        if value is None or value == "":
            return 0
        code = self.catalogue.codes[table].get(str(value))
        if code is None:
            info.setdefault("unknown_context", []).append(f"{name}={self.limits.echo(value)}")
            return 0
        return code

    def decode(self, q: Query) -> Row:
        """Validate one request and turn it into model codes; raises RequestError naming the input."""
        c = self.catalogue
        n = check_lengths(q)
        if not isinstance(q.k, int | np.integer) or not 1 <= int(q.k) <= MAX_K:
            raise RequestError(f"k={q.k!r}; expected an integer from 1 to {MAX_K}.")
        if q.hour is not None and not 0 <= int(q.hour) <= 23:
            raise RequestError(f"hour={q.hour!r}; expected 0-23 (UTC), or leave it out to use the request time.")
        if q.day_of_week is not None and not 1 <= int(q.day_of_week) <= 7:
            raise RequestError(f"day_of_week={q.day_of_week!r}; expected 1 (Monday) to 7 (Sunday), or leave it out.")
        if q.quantities is not None:
            for position, value in enumerate(q.quantities):
                if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= MAX_QUANTITY:
                    raise RequestError(
                        f"quantities[{position}]={value!r}; expected a whole number of units from 0 to "
                        f"{MAX_QUANTITY:,} (0 or missing counts as 1)."
                    )
        info: dict = {"unknown_items": 0, "truncated": 0, "fallback": None}
        types = list(q.event_types) if q.event_types is not None else ["view"] * n
        type_codes = []
        for position, value in enumerate(types):
            code = c.codes["event_types"].get(str(value))
            if code is None:
                raise RequestError(
                    f"event_types[{position}]={value!r} is not an event type; expected one of "
                    f"{sorted(c.codes['event_types'])}."
                )
            type_codes.append(code)
        times = np.asarray(q.timestamps if q.timestamps is not None else [-1] * n, dtype=np.int64)
        quantities = np.asarray(q.quantities if q.quantities is not None else [1] * n, dtype=np.int64)
        order = np.argsort(times, kind="stable") if q.timestamps is not None else np.arange(n)
        ids = [str(q.item_ids[i]) for i in order]
        type_codes = np.asarray(type_codes, dtype=np.int64)[order] if n else np.zeros(0, np.int64)
        times, quantities = times[order], quantities[order]
        channels = (
            np.asarray([self._code("channels", q.channels[i], f"channels[{i}]", info) for i in order], np.int64)
            if q.channels is not None
            else np.full(n, c.web, np.int64)
        )
        idx = c.indexes(ids)
        known = idx > 0
        info["unknown_items"] = int((~known).sum())
        sessions = np.asarray([str(q.session_ids[i]) for i in order] if q.session_ids is not None else [""] * n, object)
        # Gaps and session starts over the known events, in time order (as preparation does).
        idx, type_codes, times, channels = idx[known], type_codes[known], times[known], channels[known]
        quantities = quantities[known]
        sessions = sessions[known]
        first = np.zeros(len(idx), bool)
        first[:1] = True
        timed = q.timestamps is not None
        new_session = session_starts(
            first, sessions, sessions != "", times if timed else None, c.session_gap_ms
        ).astype(np.int64)
        gaps = step_gaps_seconds(times, first) if timed else np.full(len(idx), -1, np.int64)
        start = int(window_starts(len(idx), c.max_seq_len))
        info["truncated"] = start
        keep = slice(start, None)
        now = int(q.now) if q.now is not None else int(time.time() * 1000)
        last = int(times[-1]) if len(times) and timed else None
        ctx_gap = time_gap_buckets(np.asarray([(now - last) // 1000 if last is not None else -1]))[0]
        if last is not None and now < last:
            ctx_gap = 1
        hour = int(q.hour) + 1 if q.hour is not None else int(hour_codes(now))
        day = int(q.day_of_week) if q.day_of_week is not None else int(day_codes(now))
        past = c.indexes(q.past_purchases)
        info["unknown_items"] += int((past == 0).sum())
        # Purchases among events too old for the window join the past purchases (as in training).
        if start:
            old_purchases = purchases_before(idx, type_codes, [0], [0], [start], c.past, c.purchase_codes)[0]
            past = np.concatenate([past[past > 0], old_purchases[old_purchases > 0]])[-c.past :]
        else:
            past = past[past > 0][-c.past :]
        # Business-rule sets over all known events (not only the kept window).
        purchased_at = np.flatnonzero(member(type_codes, c.purchase_codes))
        bought = set(idx[purchased_at].tolist()) | set(past.tolist())
        complement_of = None
        if len(purchased_at) and timed and now - int(times[purchased_at[-1]]) <= self.complement_window_ms:
            complement_of = c.categories[idx[purchased_at[-1]]]
        cart, _, _ = replay_cart(
            zip(
                idx.tolist(),
                (c.event_names.get(code, "") for code in type_codes.tolist()),
                quantities.tolist(),
                times.tolist(),
            )
        )
        excluded = set()
        if q.exclude_purchased:
            excluded |= bought
        if q.exclude_in_cart:
            excluded |= set(cart)
        return Row(
            idx=idx[keep],
            event_types=type_codes[keep],
            gap_buckets=time_gap_buckets(gaps[keep]),
            channels=channels[keep],
            new_session=new_session[keep],
            context=[
                self._code("device_types", q.device_type, "device_type", info),
                hour,
                day,
                self._code("referrers", q.referrer, "referrer", info),
                self._code("regions", q.region, "region", info),
                int(ctx_gap),
            ],
            loyalty=self._code("loyalty", q.loyalty, "loyalty", info),
            past=past,
            k=int(q.k),
            excluded=np.asarray(sorted(excluded), dtype=np.int64),
            allowed=self.allowed(q),
            in_cart=sorted(cart),
            complement_of=complement_of,
            info=info,
        )

    def allowed(self, q: Query) -> np.ndarray | None:
        """The item indexes a category filter and a price band allow (None: no filter)."""
        c = self.catalogue
        allowed = None
        if q.categories:
            unknown = [name for name in q.categories if name not in c.category_items]
            if unknown and not any(c.category_items):
                raise RequestError(
                    "categories=[...] given, but this catalogue has no categories (its data had no category column); "
                    "send the request without categories."
                )
            if unknown:
                examples = ", ".join(sorted(c.category_items)[:8])
                shown = ", ".join(self.limits.echo(name) for name in unknown[:5]) + (
                    ", ..." if len(unknown) > 5 else ""
                )
                raise RequestError(
                    f"categories=[{shown}] not in the catalogue ({len(c.category_items)} categories, e.g. {examples})."
                )
            allowed = np.concatenate([c.category_items[name] for name in q.categories])
        if q.min_price is not None or q.max_price is not None:
            low = -np.inf if q.min_price is None else float(q.min_price)
            high = np.inf if q.max_price is None else float(q.max_price)
            if not low <= high:
                raise RequestError(
                    f"min_price={q.min_price!r} > max_price={q.max_price!r}; expected min_price <= max_price."
                )
            if not c.priced:
                raise RequestError(
                    "min_price/max_price given, but this catalogue has no prices (its data had no price column); "
                    "send the request without a price band."
                )
            pool = allowed if allowed is not None else np.arange(1, c.num_items + 1)
            # Items without a known price (NaN) never fall in a band.
            allowed = pool[(c.prices[pool] >= low) & (c.prices[pool] <= high)]
        return allowed
