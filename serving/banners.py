"""Banners and content slots: a small catalogue of campaigns ranked for the shopper of a request.

A banner catalogue (YAML or JSON; conf/banners/synthetic.yaml ships as an example) names each banner and
the items it promotes by one or more filters:

    banners:
      - {id: summer-dresses, title: "Summer dresses", categories: [dresses]}
      - {id: under-10, title: "Everything under 10", max_price: 10}
      - {id: acme, brands: [acme], min_price: 20}

A banner's score for a request is the mean of what applies of:

- intent: the probability the model's next-category intent (serving.intent; a model with intent heads)
  gives the banner's categories (banners with a category filter);
- items: the banner's share of the shopper's retrieval candidates, each weighted by the softmax of its
  score (the items the model would recommend now, after the exclusion rules).

Banners come best first, `k` of them; a request without a known event gets them by the training
popularity of their items (`fallback: popularity`). A banner that names an unknown category or brand,
has no filter, or matches no item of the catalogue is refused when the catalogue is loaded.
"""

from __future__ import annotations

import numpy as np

from intentrec.errors import ConfigError
from intentrec.serving.catalogue import Catalogue
from intentrec.serving.cli import config_entries
from intentrec.serving.rows import Row

KEYS = ("id", "title", "categories", "brands", "min_price", "max_price")
FILTERS = ("categories", "brands", "min_price", "max_price")


def load_banners(source) -> list[dict]:
    """The banner definitions of a YAML or JSON file (`banners:` list), or of a list; checked field by field."""
    seen: set[str] = set()
    out = []
    where = "banners" if isinstance(source, list | tuple) else str(source)
    for name, entry in config_entries(source, "banners", "banner", KEYS):
        banner_id = entry.get("id")
        if not isinstance(banner_id, str) or not banner_id:
            raise ConfigError(f"{name}: `id` must be a non-empty string, got {banner_id!r}")
        if banner_id in seen:
            raise ConfigError(f"{name}: id {banner_id!r} is used twice; banner ids must be unique")
        seen.add(banner_id)
        name = f"{where}: banner {banner_id!r}"
        if not any(entry.get(key) is not None for key in FILTERS):
            raise ConfigError(f"{name} has no filter; give categories, brands, min_price or max_price")
        for key in ("categories", "brands"):
            values = entry.get(key)
            if values is not None and (
                not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values)
            ):
                raise ConfigError(f"{name}: `{key}` must be a non-empty list of names, got {values!r}")
        for key in ("min_price", "max_price"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                raise ConfigError(f"{name}: `{key}` must be a price >= 0, got {value!r}")
        if (
            entry.get("min_price") is not None
            and entry.get("max_price") is not None
            and entry["min_price"] > entry["max_price"]
        ):
            raise ConfigError(f"{name}: min_price {entry['min_price']} is above max_price {entry['max_price']}")
        out.append({key: entry[key] for key in KEYS if entry.get(key) is not None})
    return out


class BannerSet:
    """Banners against a bundle's catalogue: the items each promotes, and how requests rank them."""

    def __init__(self, banners: list[dict], catalogue: Catalogue, category_names: list[str] | None = None):
        self.banners = banners
        c = catalogue
        known_categories = set(c.categories[1:].tolist()) - {""}
        brands = self._brands(c)
        self.members = []
        code_of = {name: code for code, name in enumerate(category_names or [])}
        # (banners, C): which next-category codes each banner's categories are (banners without: no intent part)
        self.category_codes = np.zeros((len(banners), max(len(code_of), 1)))
        for banner in banners:
            mask = np.ones(c.num_items + 1, bool)
            mask[0] = False
            if "categories" in banner:
                missing = sorted(set(banner["categories"]) - known_categories)
                if missing:
                    raise ConfigError(
                        f"banner {banner['id']!r}: categories {missing} are not in the catalogue; known categories: "
                        f"{sorted(known_categories)[:30]}"
                    )
                mask &= np.isin(c.categories, banner["categories"])
            if "brands" in banner:
                if brands is None:
                    raise ConfigError(f"banner {banner['id']!r} filters by brand, but the catalogue has no brands")
                missing = sorted(set(banner["brands"]) - set(brands[1:].tolist()))
                if missing:
                    raise ConfigError(f"banner {banner['id']!r}: brands {missing} are not in the catalogue")
                mask &= np.isin(brands, banner["brands"])
            if "min_price" in banner:
                mask &= c.prices >= float(banner["min_price"])
            if "max_price" in banner:
                mask &= c.prices <= float(banner["max_price"])
            if not mask.any():
                filters = {key: banner[key] for key in FILTERS if key in banner}
                raise ConfigError(f"banner {banner['id']!r} matches no item of the catalogue ({filters})")
            self.members.append(mask)
            codes = [code_of[name] for name in banner.get("categories", []) if name in code_of]
            self.category_codes[len(self.members) - 1, codes] = 1
        self.membership = np.stack(self.members)  # (banners, N + 1)
        self.has_categories = self.category_codes.any(axis=1)
        popularity = self.membership.astype(np.float64) @ np.asarray(c.popularity, np.float64)
        self.popularity_share = popularity / max(popularity.sum(), 1e-12)

    @staticmethod
    def _brands(c: Catalogue) -> np.ndarray | None:
        """Each item's brand name ("" unknown) from the bundle's brand codes, or None without brands."""
        items, vocab = c.bundle.items, c.bundle.manifest.get("vocab", {})
        if "brand_idx" not in items or not vocab.get("brands"):
            return None
        names = np.asarray(vocab["brands"], dtype=object)
        codes = np.asarray(items["brand_idx"], np.int64)
        return np.concatenate([[""], np.where(codes > 0, names[np.clip(codes, 0, len(names) - 1)], "")]).astype(str)

    def rank(self, row: Row) -> tuple[list[str], list[float], dict]:
        """(banner ids best first, their scores, info) for a decoded row after encode and retrieve."""
        k = min(int(row.k), len(self.banners))
        if row.query is None or row.items is None or not len(row.items):
            order = np.argsort(-self.popularity_share, kind="stable")[:k]
            return self._answer(order, self.popularity_share, {"fallback": "popularity"})
        logits = np.asarray(row.scores, np.float64)
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        items_part = self.membership[:, row.items] @ weights  # (banners,)
        parts = [items_part]
        categories = row.intent_categories
        if categories is not None:  # P(next category in the banner's), for the banners with categories
            codes = self.category_codes[:, : len(categories)]  # codes past the head's can never be predicted
            parts.append(np.where(self.has_categories, codes @ categories, np.nan))
        scores = np.nanmean(np.vstack(parts), axis=0)
        order = np.argsort(-scores, kind="stable")[:k]
        return self._answer(order, scores, {"banner_parts": "intent+items" if categories is not None else "items"})

    def _answer(self, order, scores, info: dict) -> tuple[list[str], list[float], dict]:
        chosen = [self.banners[i] for i in order]
        info = {**info, "banners": [{"id": b["id"], "title": b.get("title", b["id"])} for b in chosen]}
        return [b["id"] for b in chosen], [round(float(scores[i]), 6) for i in order], info
