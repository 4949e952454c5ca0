"""Intent signals: the one rule for their labels, per step of a prepared split, and which heads can learn.

For each step t of a prepared split, within its session (`new_session` starts one; a row's first step always does):

- `purchase`: the session has an online purchase at a step after t (will this visit end in a sale?);
- `exit`: t is the session's last step (will the shopper leave now?);
- `abandon`: the session ends with items in the web cart (data.features.replay_cart over the session)
  and no purchase after t (is this cart about to be left behind?);
- `next_category`: the category code of the session's next step's item; -1 at its last step and where
  that item's category is unknown.

A data set without purchases has no positive `purchase` or `abandon` label, and one without item
categories no `next_category`: `available_heads` says which heads can learn and why the others cannot.
`own_steps` says which steps of a split are its own (what the heads are measured on). Training
(training.datamodule, models.intent) and evaluation (training.intent) read the labels from here.
"""

from __future__ import annotations

import numpy as np

from intentrec.data.features import replay_cart
from intentrec.data.schema import EVENT_TYPES, enum_code

BINARY_HEADS = ("purchase", "exit", "abandon")  # the order of the heads' binary logits everywhere
HEADS = (*BINARY_HEADS, "next_category")
# The prepared codes (data.schema) of the events that change a web cart: the baseline's cart size and the heads'
# session counters (models.intent.session_counters) count them.
CART_EVENT_CODES = {name: enum_code(EVENT_TYPES, name) for name in ("add_to_cart", "remove_from_cart", "purchase")}


def session_starts(split) -> np.ndarray:
    """(S,) bool: the steps that start a session (the `new_session` flags, and every row's first step)."""
    starts = split.steps["new_session"].astype(bool).copy()
    starts[split.offsets[:-1][np.diff(split.offsets) > 0]] = True
    return starts


def intent_labels(split, event_types: list[str], item_category: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-step labels (see the module's docstring): int8 arrays for the binary heads, int64 categories."""
    starts = session_starts(split)
    session = np.cumsum(starts) - 1  # (S,) session number
    S = len(session)
    kinds = np.asarray(event_types, dtype=object)[split.steps["event_types"].astype(np.int64)]
    last = np.ones(S, bool)
    last[:-1] = session[1:] != session[:-1]
    # purchases after t within the session: the session's running count at its last step minus t's
    bought = np.cumsum(kinds == "purchase")
    after = bought[np.flatnonzero(last)][session] - bought
    labels = {"purchase": (after > 0).astype(np.int8), "exit": last.astype(np.int8)}
    # the cart at the end of each session with an add-to-cart (data.features.replay_cart: the one cart rule)
    items, quantities = split.steps["item_ids"], split.steps.get("quantities")
    ends_with_cart = np.zeros(session[-1] + 1 if S else 0, bool)
    bounds = np.append(np.flatnonzero(starts), S)
    for number in np.unique(session[kinds == "add_to_cart"]):
        steps = range(bounds[number], bounds[number + 1])
        cart, _, _ = replay_cart(
            (int(items[t]), kinds[t], int(quantities[t]) if quantities is not None else 1, t) for t in steps
        )
        ends_with_cart[number] = bool(cart)
    labels["abandon"] = (ends_with_cart[session] & (after == 0)).astype(np.int8)
    if item_category is not None:
        following = np.full(S, -1, np.int64)
        following[:-1] = np.asarray(item_category)[items[1:].astype(np.int64)]
        labels["next_category"] = np.where(last | (following <= 0), -1, following)  # 0: unknown, no label
    return labels


def available_heads(labels: dict[str, np.ndarray]) -> dict[str, str | None]:
    """head -> None when it can learn from these labels, else the reason it cannot."""
    out = {}
    for head in HEADS:
        values = labels.get(head)
        if values is None:
            out[head] = "the items have no categories (items.parquet: category_id)"
        elif head == "next_category":
            out[head] = None if (values >= 0).any() else "no session has a second step"
        elif head in ("purchase", "abandon") and not values.any():
            out[head] = "the data has no purchase events" if head == "purchase" else "no session ends with a cart"
        elif not values.any() or values.all():
            out[head] = f"every step has the same {head} label"
        else:
            out[head] = None
    return out


def own_steps(split, name: str, split_info: dict) -> np.ndarray:
    """(S,) bool: the steps of a prepared split that belong to it. Train: all. A temporal split's val/test
    rows carry the history before their period, which is left out (the baseline learnt from it); a
    predefined split's rows are whole sequences of their own. Leave-last-out is refused: it cuts the last
    two targets off every train row (so train sessions end where they do not) and evaluates one step a row."""
    from intentrec.errors import DataError

    kind = split_info.get("type")
    if kind not in ("temporal", "predefined"):
        raise DataError(
            f"intent signals need whole sessions, which data.split.type={kind} does not keep (it cuts the last two "
            "targets off every train sequence and evaluates one step of each); prepare the data with "
            "data.split.type=temporal (or use a predefined split)"
        )
    S = len(split.steps["item_ids"])
    if name == "train" or kind == "predefined":
        return np.ones(S, bool)
    times = split.steps["timestamps"].astype(np.int64)
    if name == "val":
        return (times >= split_info["val_cutoff_ms"]) & (times < split_info["test_cutoff_ms"])
    return times >= split_info["test_cutoff_ms"]


def item_categories(data) -> np.ndarray | None:
    """(N + 1,) each item's category code of prepared data (training.datamodule.PreparedData), or None when no
    item has a category (the next-category head is then off)."""
    if "category_idx" not in data.items:
        return None
    category = data.padded("category_idx").astype(np.int64)
    return category if category.max(initial=0) > 0 else None
