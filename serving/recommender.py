"""Real-time recommendation from an export bundle: decode -> encode (ONNX) -> retrieve (FAISS) -> rank (ONNX) -> rules.

This is what the Triton `recommend` and `similar_items` models run, one call per batch of requests;
it also runs in-process (tests, batch jobs). Per request:

1. Decode. Raw item ids map to the catalogue; unknown ids are dropped and counted
   (`info.unknown_items`). Events are put in time order and only the most recent `max_seq_len` kept
   (`info.truncated`); purchases among the older events join `past_purchases`, as in training. Time gaps, session starts and the gap to `now` are computed exactly as in
   preparation (`data.features`). Context strings the model never saw (a new device type, referrer,
   region) become "unknown" and are listed in `info.unknown_context`; an hour outside 0-23, a day of
   week outside 1-7 (ISO, 1 = Monday) or an unknown event type is an error.
2. Encode the query with the ONNX query encoder (item vectors read from the served table).
3. Retrieve: the FAISS index returns max(num_candidates, k) candidates plus as many as may be
   excluded. With a category filter the allowed items are scored exactly instead (no candidate is
   lost to the filter).
4. Business rules: purchased items (events and `past_purchases`) are excluded unless
   `exclude_purchased=false`; items in the cart (added and neither removed nor bought) are excluded
   when `exclude_in_cart=true`, else kept; items of the request's recent views stay allowed.
5. Rank the remaining candidates with the ONNX ranker (context + item features), keep the top k.
   A bundle exported with the hybrid (`manifest.hybrid`, `training.hybrid`) has no ranker; instead
   every candidate scores logit + weight * log(eps + C), C the co-occurrence of the item after the
   request's last `history` items (`cooccurrence.npz`), and the co-occurring items join the FAISS
   candidates (scored exactly). Items without co-occurrence keep the two-tower's order, so the top k
   equals the hybrid's ranking of the whole catalogue (with an exact index).

No known event at all (empty history, or only unknown ids): the most popular items that pass the
rules and filters (`info.fallback = "popularity"`).

Limits (`RequestLimits`, set per repository in conf/serving.yaml) bound what one request row may
cost: events per row (`max_events`), the length of every string (`max_string_bytes`), the entries
of `categories` and `past_purchases` (`max_list_items`, duplicates removed), and times
(`timestamps`, `now`) between 2000 and 2100 in ms. A row past a limit is refused with the limit's
name; unknown context values are echoed in `info.unknown_context` cut to `echo_chars` characters.

With a profile store (`profile_store`, the event collector's store) a request may name the shopper
instead of carrying events: `identity = "customer:c1"` (or `device:`/`session:`; a bare id is a
customer). Before decoding, the shopper's stored events across linked devices (the most recent
2 x max_seq_len), purchases (web and store) and loyalty are read and put in front of the request's
own events (which are kept; an event present in both counts once). `info.profile` tells what was read.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from intentrec.data.features import (
    PURCHASE_EVENTS,
    cooccurrence_scores,
    day_codes,
    event_codes,
    hour_codes,
    replay_cart,
    session_starts,
    step_gaps_seconds,
    time_gap_buckets,
)
from intentrec.errors import DataError
from intentrec.serving.bundle import attribute_vectors, check_index, feature_widths, load_bundle
from intentrec.serving.request import (
    MAX_K,
    MAX_QUANTITY,
    Query,
    RequestError,
    RequestLimits,
    Result,
    Unavailable,
    check_lengths,
    check_limits,
)

log = logging.getLogger(__name__)

COMPLEMENT_POOL = 200  # most-trained items per complement category the complement rule scores


def member(values: np.ndarray, pool) -> np.ndarray:
    """np.isin(values, pool) for the short pools of one request (a few ids or codes).

    np.isin sorts both sides (about 40 us per call); up to 32 entries one broadcast compare is
    several times faster. Longer pools go to np.isin.
    """
    pool = np.asarray(pool)
    if len(pool) > 32:
        return np.isin(values, pool)
    if len(pool) == 0:
        return np.zeros(np.shape(values), dtype=bool)
    return (np.asarray(values)[..., None] == pool).any(-1)


def _where(url: str) -> str:
    """A store URL without credentials or file paths: its scheme and host (what a client may see)."""
    from urllib.parse import urlparse

    parsed = urlparse(str(url))
    return f"{parsed.scheme}://{parsed.hostname or ''}{':' + str(parsed.port) if parsed.port else ''}"


class Recommender:
    """Loads a bundle once; `recommend` and `similar` answer batches of requests."""

    def __init__(
        self,
        bundle_dir: Path,
        threads: int = 1,
        use_gpu: bool | None = None,
        verify: bool = True,
        remote=None,
        profile_store=None,
        complement_slots: int = 2,
        complement_window_hours: float = 24.0,
        limits: RequestLimits | None = None,
    ):
        """`remote`: optional `run(model_name, feed) -> output` that runs `query_encoder` and `ranker`
        elsewhere (Triton BLS calls in the production repository); by default ONNX Runtime runs them here.
        `profile_store`: an `EventStore` or its URL (opened read-only on first use) for `Query.identity`.
        `complement_slots`: after a purchase (web or store) in the last `complement_window_hours`, each
        list holds at least that many items of the purchased item's complement categories
        (`complements.json` of the bundle), placed last when the model ranked fewer; 0 turns the rule off.
        `limits`: what one request row may carry (`RequestLimits`)."""
        import faiss
        import onnxruntime as ort

        from intentrec.serving.index import read_index, set_search_params, to_search_device

        self.remote = remote
        self.profile_store = profile_store
        self.limits = limits or RequestLimits()
        self.bundle = load_bundle(Path(bundle_dir), verify=verify)
        m = self.bundle.manifest
        self.embeddings = self.bundle.embeddings
        self.dim = self.bundle.dim
        self.num_items = self.bundle.num_items
        self.max_seq_len = int(m["model"]["max_seq_len"])
        self.past = max(1, int(m["past_purchases"]))
        self.scale = float(m["model"]["logit_scale"])
        self.session_gap_ms = int(m["session_gap_s"]) * 1000
        vocab = m["vocab"]
        self.codes = {
            name: {value: code for code, value in enumerate(vocab.get(name, [])) if code > 0}
            for name in ("event_types", "device_types", "referrers", "regions", "channels", "loyalty")
        }
        self.event_names = {code: name for name, code in self.codes["event_types"].items()}
        self.purchase_codes = event_codes(PURCHASE_EVENTS, vocab["event_types"])
        self.item_index = {item_id: i + 1 for i, item_id in enumerate(self.bundle.items["item_id"].tolist())}
        self.item_ids = np.concatenate([[""], self.bundle.items["item_id"].astype(str)]).astype(object)
        self.categories = self.bundle.padded("category", "").astype(str)
        self.prices = self.bundle.padded("price", np.nan).astype(np.float64)
        self.priced = bool(np.isfinite(self.prices[1:]).any())
        self.complement_slots = int(complement_slots)
        self.complement_window_ms = int(float(complement_window_hours) * 3_600_000)
        complements_path = self.bundle.directory / "complements.json"
        following = json.loads(complements_path.read_text())["next"] if complements_path.is_file() else {}
        # The purchased category's top 3 next categories (shares of at least 5%).
        self.complements = {c: [n for n, share in rows[:3] if share >= 0.05] for c, rows in following.items()}
        # Integer category codes per item index (1.., sorted by name; 0: padding) for the rules'
        # comparisons, and each category's item indexes (ascending), without a loop over items.
        names, inverse = np.unique(self.categories[1:], return_inverse=True)
        self.category_code = {c: code for code, c in enumerate(names.tolist(), start=1)}
        self.item_category = np.concatenate([[0], inverse + 1]).astype(np.int64)
        grouped = np.argsort(inverse, kind="stable") + 1
        bounds = np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1]
        self.category_items = dict(zip(names.tolist(), np.split(grouped, bounds)))
        self.complement_codes = {
            c: np.asarray([self.category_code[n] for n in nexts if n in self.category_code], dtype=np.int64)
            for c, nexts in self.complements.items()
        }
        counts = self.bundle.padded("train_count").astype(np.float64)
        # The complement rule's pools: each category's most-trained items.
        self.complement_pools = {
            c: v[np.argsort(-counts[v], kind="stable")[:COMPLEMENT_POOL]] for c, v in self.category_items.items()
        }
        self.popular = np.argsort(-counts[1:], kind="stable") + 1
        self.popularity = counts
        self.feature_codes = self.bundle.feature_codes()

        faiss.omp_set_num_threads(threads)
        use_gpu = (faiss.get_num_gpus() > 0) if use_gpu is None else use_gpu
        index = read_index(self.bundle.directory / "index.faiss")
        check_index(self.bundle, index)
        set_search_params(index, m["index"].get("search_params", {}))
        self.index = to_search_device(index, use_gpu)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.encoder = ort.InferenceSession(
            str(self.bundle.directory / "query_encoder.onnx"), options, providers=providers
        )
        # Inputs the model does not read (e.g. context with model.context=none) are not in the graph.
        self.encoder_inputs = [i.name for i in self.encoder.get_inputs()]
        # An attribute-fusion encoder (dif_sr) also reads each step's attribute vectors.
        self.attribute_tables = self.bundle.attribute_tables() if "step_attributes" in self.encoder_inputs else []
        ranker_path = self.bundle.directory / "ranker.onnx"
        self.ranker = (
            ort.InferenceSession(str(ranker_path), options, providers=providers)
            if m.get("ranker") and ranker_path.is_file()
            else None
        )
        # The inputs export recorded (a ranker without item features has no candidate_codes input).
        self.ranker_inputs = (m.get("ranker") or {}).get("inputs")
        self.num_candidates = int(m["ranker"]["num_candidates"]) if m.get("ranker") else 50
        self.web = self.codes["channels"].get("web", 0)
        self.timing: dict[str, float] = {}  # the last recommend() batch's milliseconds per stage
        self.hybrid = m.get("hybrid") or None
        self.cooccurrence = self._load_cooccurrence(m) if self.hybrid else None
        log.info("recommender: %d items, dim %d, ranker %s", self.num_items, self.dim, self.ranker is not None)

    def _load_cooccurrence(self, m: dict):
        import scipy.sparse as sp

        path = self.bundle.directory / "cooccurrence.npz"
        if not path.is_file():
            raise DataError(f"{path} not found but the manifest serves the hybrid; export the checkpoint again.")
        matrix = sp.load_npz(path).tocsr()
        trained = int(m.get("trained_items", m["num_items"]))
        if matrix.shape != (trained + 1, trained + 1):
            raise DataError(
                f"{path} is {matrix.shape[0]} x {matrix.shape[1]}; the manifest's trained_items={trained} needs "
                f"{trained + 1} x {trained + 1}; export the checkpoint again."
            )
        matrix.resize((self.num_items + 1, self.num_items + 1))  # items added later have no co-occurrence
        return matrix

    # --- decoding --------------------------------------------------------------------------

    def _code(self, table: str, value, name: str, info: dict) -> int:
        if value is None or value == "":
            return 0
        code = self.codes[table].get(str(value))
        if code is None:
            info.setdefault("unknown_context", []).append(f"{name}={self.limits.echo(value)}")
            return 0
        return code

    def decode(self, q: Query) -> dict:
        """Validate one request and turn it into model codes; raises RequestError naming the input."""
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
            code = self.codes["event_types"].get(str(value))
            if code is None:
                raise RequestError(
                    f"event_types[{position}]={value!r} is not an event type; expected one of "
                    f"{sorted(self.codes['event_types'])}."
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
            else np.full(n, self.web, np.int64)
        )
        idx = np.asarray([self.item_index.get(i, 0) for i in ids], dtype=np.int64)
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
            first, sessions, sessions != "", times if timed else None, self.session_gap_ms
        ).astype(np.int64)
        gaps = step_gaps_seconds(times, first) if timed else np.full(len(idx), -1, np.int64)
        if len(idx) > self.max_seq_len:
            info["truncated"] = int(len(idx) - self.max_seq_len)
        keep = slice(max(0, len(idx) - self.max_seq_len), None)
        now = int(q.now) if q.now is not None else int(time.time() * 1000)
        last = int(times[-1]) if len(times) and q.timestamps is not None else None
        ctx_gap = time_gap_buckets(np.asarray([(now - last) // 1000 if last is not None else -1]))[0]
        if last is not None and now < last:
            ctx_gap = 1
        hour = int(q.hour) + 1 if q.hour is not None else int(hour_codes(now))
        day = int(q.day_of_week) if q.day_of_week is not None else int(day_codes(now))
        past = np.asarray([self.item_index.get(str(i), 0) for i in q.past_purchases], dtype=np.int64)
        info["unknown_items"] += int((past == 0).sum())
        # Purchases among events too old for the window join the past purchases (as in training).
        dropped = slice(0, max(0, len(idx) - self.max_seq_len))
        old_purchases = idx[dropped][member(type_codes[dropped], self.purchase_codes)]
        past = np.concatenate([past[past > 0], old_purchases])[-self.past :]
        # Business-rule sets over all known events (not only the kept window).
        purchased_at = np.flatnonzero(member(type_codes, self.purchase_codes))
        bought = set(idx[purchased_at].tolist()) | set(past.tolist())
        complement_of = None
        if (
            len(purchased_at)
            and q.timestamps is not None
            and now - int(times[purchased_at[-1]]) <= self.complement_window_ms
        ):
            complement_of = self.categories[idx[purchased_at[-1]]]
        cart, _, _ = replay_cart(
            zip(
                idx.tolist(),
                (self.event_names.get(c, "") for c in type_codes.tolist()),
                quantities.tolist(),
                times.tolist(),
            )
        )
        allowed = None
        if q.categories:
            unknown = [c for c in q.categories if c not in self.category_items]
            if unknown and not any(self.category_items):
                raise RequestError(
                    "categories=[...] given, but this catalogue has no categories (its data had no category column); "
                    "send the request without categories."
                )
            if unknown:
                examples = ", ".join(sorted(self.category_items)[:8])
                shown = ", ".join(self.limits.echo(c) for c in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
                raise RequestError(
                    f"categories=[{shown}] not in the catalogue ({len(self.category_items)} categories, e.g. {examples})."
                )
            allowed = np.concatenate([self.category_items[c] for c in q.categories])
        if q.min_price is not None or q.max_price is not None:
            low = -np.inf if q.min_price is None else float(q.min_price)
            high = np.inf if q.max_price is None else float(q.max_price)
            if not low <= high:
                raise RequestError(
                    f"min_price={q.min_price!r} > max_price={q.max_price!r}; expected min_price <= max_price."
                )
            if not self.priced:
                raise RequestError(
                    "min_price/max_price given, but this catalogue has no prices (its data had no price column); "
                    "send the request without a price band."
                )
            pool = allowed if allowed is not None else np.arange(1, self.num_items + 1)
            # Items without a known price (NaN) never fall in a band.
            allowed = pool[(self.prices[pool] >= low) & (self.prices[pool] <= high)]
        excluded = set()
        if q.exclude_purchased:
            excluded |= bought
        if q.exclude_in_cart:
            excluded |= set(cart)
        return {
            "idx": idx[keep],
            "event_types": type_codes[keep],
            "gap_buckets": time_gap_buckets(gaps[keep]),
            "channels": channels[keep],
            "new_session": new_session[keep],
            "context": [
                self._code("device_types", q.device_type, "device_type", info),
                hour,
                day,
                self._code("referrers", q.referrer, "referrer", info),
                self._code("regions", q.region, "region", info),
                int(ctx_gap),
            ],
            "loyalty": self._code("loyalty", q.loyalty, "loyalty", info),
            "past": past,
            "k": int(q.k),
            "excluded": np.asarray(sorted(excluded), dtype=np.int64),
            "allowed": allowed,
            "in_cart": sorted(cart),
            "complement_of": complement_of,
            "info": info,
        }

    # --- the pipeline ----------------------------------------------------------------------

    def encode(self, decoded: list[dict]) -> np.ndarray:
        """(B, D) query vectors of decoded requests that have at least one known event."""
        B = len(decoded)
        T = max(len(d["idx"]) for d in decoded)
        P = self.past
        arrays = {
            name: np.zeros((B, T), np.int64)
            for name in ("step_mask", "event_types", "gap_buckets", "channels", "new_session")
        }
        step_idx = np.zeros((B, T), np.int64)
        past_idx = np.zeros((B, P), np.int64)
        for row, d in enumerate(decoded):
            n = len(d["idx"])
            step_idx[row, :n] = d["idx"]
            arrays["step_mask"][row, :n] = 1
            for name in ("event_types", "gap_buckets", "channels", "new_session"):
                arrays[name][row, :n] = d[name]
            past_idx[row, : len(d["past"])] = d["past"]
        context = np.asarray([d["context"] for d in decoded], np.int64)  # (B, 6)
        feed = {
            "step_items": self.embeddings[step_idx],
            **arrays,
            "device_type": context[:, 0],
            "hour": context[:, 1],
            "day_of_week": context[:, 2],
            "referrer": context[:, 3],
            "region": context[:, 4],
            "gap_bucket": context[:, 5],
            "loyalty": np.asarray([d["loyalty"] for d in decoded], np.int64),
            "past_items": self.embeddings[past_idx],
            "past_mask": (past_idx > 0).astype(np.int64),
        }
        if "step_attributes" in self.encoder_inputs:
            widths = feature_widths(self.bundle.manifest)
            feed["step_attributes"] = attribute_vectors(
                self.attribute_tables, widths, self.feature_codes[step_idx], self.dim
            )
        feed = {name: feed[name] for name in self.encoder_inputs}
        if self.remote is not None:
            return self.remote("query_encoder", feed)
        return self.encoder.run(["query"], feed)[0]

    def _candidates(self, queries: np.ndarray, decoded: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per request: candidate item indexes and retrieval scores after rules, best first."""
        wanted = [max(self.num_candidates, d["k"]) for d in decoded]
        out: list = [None] * len(decoded)
        plain = [i for i, d in enumerate(decoded) if d["allowed"] is None]
        if plain:
            n = min(self.num_items, max(wanted[i] + len(decoded[i]["excluded"]) for i in plain))
            scores, rows = self.index.search(np.ascontiguousarray(queries[plain], dtype=np.float32), n)
            for j, i in enumerate(plain):
                items, s = rows[j] + 1, scores[j]
                keep = rows[j] >= 0
                if len(decoded[i]["excluded"]):
                    keep &= ~member(items, decoded[i]["excluded"])
                items, s = items[keep], s[keep] * self.scale
                if self.cooccurrence is not None:
                    items, s = self._hybrid(queries[i], decoded[i], items, s)
                out[i] = (items[: wanted[i]], s[: wanted[i]])
        for i, d in enumerate(decoded):
            if d["allowed"] is not None:
                allowed = d["allowed"][~member(d["allowed"], d["excluded"])]
                s = self.embeddings[allowed] @ queries[i] * self.scale
                if self.cooccurrence is not None:
                    allowed, s = self._hybrid(queries[i], d, allowed, s)
                top = np.argsort(-s, kind="stable")[: wanted[i]]
                out[i] = (allowed[top], s[top])
        return out

    def _hybrid(
        self, query: np.ndarray, d: dict, items: np.ndarray, logits: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates plus the request's co-occurring items, scored logit + weight * log(eps + C), best first."""
        weight, eps = float(self.hybrid["weight"]), float(self.hybrid["eps"])
        row = cooccurrence_scores(  # (1, N + 1): C(request, item), exactly as training scored it
            self.cooccurrence, d["idx"][None, :], int(self.hybrid["history"]), float(self.hybrid["decay"])
        )
        found, counts = row.indices.astype(np.int64), row.data.astype(np.float64)
        usable = counts > 0
        if len(d["excluded"]):
            usable &= ~member(found, d["excluded"])
        if d["allowed"] is not None:
            usable &= member(found, d["allowed"])
        found, counts = found[usable], counts[usable]
        d["info"]["cooccurring_items"] = int(len(found))
        extra = found[~member(found, items)]
        items = np.concatenate([items, extra])
        scores = np.concatenate([logits, self.embeddings[extra] @ query * self.scale]).astype(np.float64)
        scores += weight * np.log(eps)
        if len(found):
            order = np.argsort(items, kind="stable")
            at = order[np.searchsorted(items[order], found)]
            scores[at] += weight * (np.log(eps + counts) - np.log(eps))
        best = np.argsort(-scores, kind="stable")
        return items[best], scores[best]

    def _rank(self, queries: np.ndarray, decoded: list[dict], candidates: list) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.ranker is None:
            return candidates
        C = max(len(c[0]) for c in candidates)
        if C == 0:
            return candidates
        B = len(decoded)
        items = np.zeros((B, C), np.int64)
        scores = np.zeros((B, C), np.float32)
        valid = np.zeros((B, C), bool)
        for row, (idx, s) in enumerate(candidates):
            items[row, : len(idx)], scores[row, : len(idx)], valid[row, : len(idx)] = idx, s, True
            scores[row, len(idx) :] = s[-1] if len(s) else 0.0
        context = np.asarray([[*d["context"], d["loyalty"]] for d in decoded], np.int64)
        feed = {
            "query": queries.astype(np.float32),
            "candidates": self.embeddings[items],
            "candidate_codes": self.feature_codes[items],
            "context": context,
            "retrieval_scores": scores,
        }
        if self.ranker_inputs is not None:
            feed = {name: feed[name] for name in self.ranker_inputs}
        logits = self.remote("ranker", feed) if self.remote is not None else self.ranker.run(["logits"], feed)[0]
        logits = np.where(valid, logits, -np.inf)
        out = []
        for row in range(B):
            order = np.argsort(-logits[row], kind="stable")[: valid[row].sum()]
            out.append((items[row, order], logits[row, order]))
        return out

    def _complement_slots(
        self, d: dict, query: np.ndarray, items: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """After a recent purchase, the list holds at least `complement_slots` items of its complement categories.

        The complements are the purchased category's most frequent next categories in training
        sessions. Complements the model ranked keep their places and count; the missing ones replace
        the lowest-ranked other items, taken in retrieval-score order from the most-trained items of
        those categories (`COMPLEMENT_POOL` each) within the request's filters and rules.
        """
        slots = min(self.complement_slots, len(items))
        targets = self.complements.get(d["complement_of"] or "", [])
        if not slots or not targets:
            return items, scores
        target_codes = self.complement_codes[d["complement_of"]]
        already = member(self.item_category[items], target_codes)
        needed = slots - int(already.sum())
        placed = 0
        pool = self.complement_pool(targets) if needed > 0 else np.zeros(0, dtype=np.int64)
        if d["allowed"] is not None:
            pool = pool[member(pool, d["allowed"])]
        pool = pool[~member(pool, d["excluded"]) & ~member(pool, items)]
        if needed > 0 and len(pool):
            retrieval = self.embeddings[pool] @ query * self.scale
            best = pool[np.argsort(-retrieval, kind="stable")[:needed]]
            # Replace the lowest-ranked items that are not complements already.
            replace_at = np.flatnonzero(~already)[::-1][: len(best)][::-1]
            placed = len(replace_at)
            items, scores = items.copy(), scores.astype(np.float64).copy()
            if placed:
                # Below the items they follow, in retrieval order.
                scores[replace_at] = scores[replace_at[0]] - 1e-3 * np.arange(1, placed + 1)
                items[replace_at] = best[:placed]
        d["info"]["complements"] = {
            "after": d["complement_of"],
            "categories": targets,
            "items": self.item_ids[items[member(self.item_category[items], target_codes)]].tolist(),
            "placed": placed,
        }
        return items, scores

    def complement_pool(self, categories: list[str]) -> np.ndarray:
        """Item indices of `categories`: the `COMPLEMENT_POOL` most-trained items of each."""
        found = [self.complement_pools[c] for c in categories if c in self.complement_pools]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _popular(self, d: dict) -> tuple[np.ndarray, np.ndarray]:
        pool = (
            self.popular
            if d["allowed"] is None
            else d["allowed"][np.argsort(-self.popularity[d["allowed"]], kind="stable")]
        )
        pool = pool[~member(pool, d["excluded"])][: d["k"]]
        return pool, self.popularity[pool]

    # --- profiles ------------------------------------------------------------------------------

    def _store(self):
        if isinstance(self.profile_store, str):
            from intentrec.serving.events.store import open_store

            url = self.profile_store
            try:
                self.profile_store = open_store(url, readonly=True)
            except Exception as error:  # retried on the next request
                detail = str(error).replace(url, _where(url))  # the store's own message may repeat the URL
                raise Unavailable(
                    f"identity given but the profile store {_where(url)} cannot be opened "
                    f"({type(error).__name__}: {detail}); start the collector on that store or send the events"
                ) from None
        if self.profile_store is None:
            raise RequestError(
                "identity given but this model has no profile store; send the shopper's events instead, or "
                "build the repository with profile_store=<store URL> (conf/serving.yaml)"
            )
        return self.profile_store

    def with_profile(self, q: Query) -> tuple[Query, dict]:
        """`q` with the stored events, purchases and loyalty of `q.identity` added; and what was read."""
        from dataclasses import replace

        from intentrec.serving.events.store import KINDS

        kind, sep, value = q.identity.partition(":")
        if not sep:
            kind, value = "customer", q.identity
        if kind not in KINDS or not value:
            raise RequestError(
                f"identity={q.identity!r}; expected customer:<id>, device:<id>, session:<id> or a bare customer id."
            )
        store = self._store()
        try:
            keys = store.identity_keys(kind, value)
            stored = store.events_of(keys, limit=2 * self.max_seq_len)[::-1]  # oldest first
            bought = store.events_of(keys, limit=4 * self.past, purchases_only=True)
            traits = store.traits(keys.customer) if keys.customer else {}
        except Exception as error:  # the store is down or unreachable: this request, not the server, fails
            raise Unavailable(
                f"the profile store {_where(store.url)} did not answer ({type(error).__name__}: "
                f"{str(error)[:200]}); retry later, or send the shopper's events instead of identity"
            ) from None
        n = len(q.item_ids)
        now = q.now if q.now is not None else int(time.time() * 1000)
        own_times = list(q.timestamps) if q.timestamps is not None else [now] * n
        own_types = list(q.event_types) if q.event_types is not None else ["view"] * n
        seen = {(e["item_id"], e["event_type"], e["event_time"]) for e in stored}
        keep = [i for i in range(n) if (str(q.item_ids[i]), own_types[i], own_times[i]) not in seen]
        pick = lambda values, default: [default if v is None else v for v in values]  # noqa: E731
        merged = replace(
            q,
            identity=None,
            item_ids=[e["item_id"] for e in stored] + [q.item_ids[i] for i in keep],
            event_types=[e["event_type"] for e in stored] + [own_types[i] for i in keep],
            timestamps=[e["event_time"] for e in stored] + [own_times[i] for i in keep],
            channels=pick([e["channel"] for e in stored], "web")
            + [q.channels[i] if q.channels is not None else "web" for i in keep],
            session_ids=pick([e["session_id"] for e in stored], "")
            + [q.session_ids[i] if q.session_ids is not None else "" for i in keep],
            quantities=[int(e.get("quantity") or 1) for e in stored]
            + [q.quantities[i] if q.quantities is not None else 1 for i in keep],
            past_purchases=list(dict.fromkeys([*q.past_purchases, *(e["item_id"] for e in bought[::-1])])),
            loyalty=q.loyalty
            if q.loyalty is not None or "loyalty_member" not in traits
            else ("yes" if traits["loyalty_member"] else "no"),
            device_type=q.device_type or next((e["device_type"] for e in stored[::-1] if e["device_type"]), None),
        )
        read = {
            "identity": f"{kind}:{value}",
            "customer_id": keys.customer,
            "stored_events": len(stored),
            "purchases": len(bought),
        }
        return merged, read

    def recommend(self, queries: list[Query]) -> list[Result | RequestError]:
        """Answer a batch; a request that fails validation gets its RequestError, the others their Result.

        `self.timing` then holds the batch's milliseconds per stage (decode, encode, retrieve, rank, rules)."""
        clock = [time.perf_counter()]
        timing: dict[str, float] = {}

        def lap(stage: str) -> None:
            clock.append(time.perf_counter())
            timing[stage] = round((clock[-1] - clock[-2]) * 1000, 3)

        decoded: list = []
        for q in queries:
            try:
                profile = None
                q = check_limits(q, self.limits)
                if q.identity:
                    q, profile = self.with_profile(q)
                d = self.decode(q)
                if profile is not None:
                    d["info"]["profile"] = profile
                decoded.append(d)
            except RequestError as error:
                decoded.append(error)
        good = [i for i, d in enumerate(decoded) if not isinstance(d, RequestError) and len(d["idx"])]
        results: list = [d if isinstance(d, RequestError) else None for d in decoded]
        lap("decode")
        if good:
            batch = [decoded[i] for i in good]
            vectors = self.encode(batch)
            lap("encode")
            candidates = self._candidates(vectors, batch)
            lap("retrieve")
            ranked = self._rank(vectors, batch, candidates)
            lap("rank")
            for i, d, vector, (items, scores) in zip(good, batch, vectors, ranked):
                items, scores = self._complement_slots(d, vector, items[: d["k"]], scores[: d["k"]])
                results[i] = Result(self.item_ids[items].tolist(), scores.astype(float).tolist(), d["info"])
        for i, d in enumerate(decoded):
            if results[i] is None:  # no known event: popularity within the rules and filters
                d["info"]["fallback"] = "popularity"
                items, scores = self._popular(d)
                results[i] = Result(self.item_ids[items].tolist(), scores.astype(float).tolist(), d["info"])
        lap("rules")
        self.timing = timing
        return results

    def similar(self, item_ids: list[list[str]], ks: list[int]) -> list[Result | RequestError]:
        """Nearest items to each request's item(s) (their mean vector), the items themselves left out."""
        results: list = []
        rows, wanted = [], []
        for ids, k in zip(item_ids, ks):
            if not isinstance(k, int | np.integer) or not 1 <= int(k) <= MAX_K:
                results.append(RequestError(f"k={k!r}; expected an integer from 1 to {MAX_K}."))
                continue
            try:
                self.limits.items("item_ids", len(ids))
                self.limits.strings("item_ids", ids)
            except RequestError as error:
                results.append(error)
                continue
            idx = np.asarray([self.item_index.get(str(i), 0) for i in ids], np.int64)
            info = {"unknown_items": int((idx == 0).sum()), "fallback": None}
            if not (idx > 0).any():
                info["fallback"] = "popularity"
                pool = self.popular[: int(k)]
                results.append(Result(self.item_ids[pool].tolist(), self.popularity[pool].tolist(), info))
                continue
            results.append(None)
            rows.append((len(results) - 1, idx[idx > 0], int(k), info))
            wanted.append(int(k) + int((idx > 0).sum()))
        if rows:
            queries = np.stack([self.embeddings[idx].mean(axis=0) for _, idx, _, _ in rows]).astype(np.float32)
            scores, found = self.index.search(queries, min(self.num_items, max(wanted)))
            for (slot, idx, k, info), s, f in zip(rows, scores, found):
                items = f + 1
                keep = (f >= 0) & ~np.isin(items, idx)
                results[slot] = Result(
                    self.item_ids[items[keep][:k]].tolist(), s[keep][:k].astype(float).tolist(), info
                )
        return results
