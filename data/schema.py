"""The canonical e-commerce event schema: one definition, used by every loader and stage.

Three tables, stored as Parquet with the explicit Arrow schemas below:

- events: one row per shopper action (view, cart change, purchase, email open/click, store purchase),
  and, from schema version 2, one row per item of a served list the shopper was shown (`impression`)
  or clicked (`click`): the feedback that attribution and experiments read (FEEDBACK_TYPES).
- items: the catalogue (category, brand, price, optional attributes).
- customers: known shoppers (loyalty membership, optional attributes).

Raw ids (`session_id`, `customer_id`, `device_id`, `item_id`, ...) are strings exactly as the source
gives them. They are mapped to contiguous integers in `data.prepare` and back at serving; they never
leak inward.

Only `item_id` is required in every dataset, plus at least one of `session_id` / `customer_id` to
group events into sequences. Every other column may be absent (a dataset without timestamps keeps file
order as time order; one without `event_type` treats each row as the dataset's default event type).
"""

from __future__ import annotations

import pyarrow as pa

# 1: shopper actions. 2: adds the feedback on served lists (FEEDBACK_TYPES) and the columns that tie an
# event to the list it came from (RECOMMENDATION_COLUMNS). Files and stores written at version 1 load
# unchanged: the new columns are absent there, which every reader treats as empty.
SCHEMA_VERSION = 2

# Live event times must lie in data.features' MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS (2000-2100).
# Loaded datasets may be older (MovieLens-100k is from 1997); before 1990 is still a unit mistake.
MIN_SOURCE_TIME_MS = 631_152_000_000  # 1990-01-01

# Enumerations. Their order is the integer code used in prepared data (0 is reserved for
# padding/unknown), so only append new values; never reorder.
EVENT_TYPES: tuple[str, ...] = (
    "view",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "email_open",
    "email_click",
    "store_purchase",
)
# Feedback on served lists. Not shopper intent: they never enter a model's event vocabulary
# (EVENT_TYPES, whose codes prepared data uses), and data preparation and profiles skip them.
FEEDBACK_TYPES: tuple[str, ...] = ("impression", "click")
# Where a list was shown (product = a product page; store_app = the app used inside a shop).
PLACEMENTS: tuple[str, ...] = ("home", "product", "cart", "email", "push", "store_app", "exit_offer")
CHANNELS: tuple[str, ...] = ("web", "app", "email", "store")
DEVICE_TYPES: tuple[str, ...] = ("desktop", "mobile", "tablet")
REFERRERS: tuple[str, ...] = ("direct", "search", "email", "social", "ads", "other")

# Which enumeration each categorical event column must take its values from.
ENUMS: dict[str, tuple[str, ...]] = {
    "event_type": EVENT_TYPES,
    "channel": CHANNELS,
    "device_type": DEVICE_TYPES,
    "referrer": REFERRERS,
}

EVENT_TIME_TYPE = pa.timestamp("ms", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False, metadata={"doc": "unique per event; idempotency key"}),
        pa.field("event_time", EVENT_TIME_TYPE, metadata={"doc": "UTC; null when the source has no time"}),
        pa.field("session_id", pa.string(), metadata={"doc": "visit id; null when the source has none"}),
        pa.field("customer_id", pa.string(), metadata={"doc": "known shopper; null for anonymous events"}),
        pa.field("device_id", pa.string(), metadata={"doc": "browser/app install; null in store"}),
        pa.field("item_id", pa.string(), nullable=False, metadata={"doc": "raw item id"}),
        pa.field("event_type", pa.string(), nullable=False, metadata={"doc": "one of EVENT_TYPES"}),
        pa.field("price", pa.float64(), metadata={"doc": "unit price paid or shown, >= 0"}),
        pa.field("quantity", pa.int32(), metadata={"doc": ">= 1 for cart and purchase events"}),
        pa.field("channel", pa.string(), metadata={"doc": "one of CHANNELS"}),
        pa.field("device_type", pa.string(), metadata={"doc": "one of DEVICE_TYPES"}),
        pa.field("referrer", pa.string(), metadata={"doc": "one of REFERRERS"}),
        pa.field("region", pa.string(), metadata={"doc": "free-form region code"}),
        pa.field(
            "recommendation_id",
            pa.string(),
            metadata={"doc": "the served list this event answers (required on impression and click); version 2"},
        ),
        pa.field("position", pa.int32(), metadata={"doc": "1-based rank of item_id in that list; version 2"}),
        pa.field("placement", pa.string(), metadata={"doc": "one of PLACEMENTS; version 2"}),
        pa.field("experiment", pa.string(), metadata={"doc": "experiment that assigned the list; version 2"}),
        pa.field("arm", pa.string(), metadata={"doc": "the experiment's arm; version 2"}),
        pa.field("model_version", pa.string(), metadata={"doc": "model version that made the list; version 2"}),
        pa.field(
            "propensity",
            pa.float64(),
            metadata={"doc": "probability that the policy showed item_id at this position, in (0, 1]; version 2"},
        ),
    ],
    metadata={"intentrec.table": "events", "intentrec.schema_version": str(SCHEMA_VERSION)},
)

ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category_id", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
    ],
    metadata={"intentrec.table": "items", "intentrec.schema_version": str(SCHEMA_VERSION)},
)

CUSTOMER_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("loyalty_member", pa.bool_()),
    ],
    metadata={"intentrec.table": "customers", "intentrec.schema_version": str(SCHEMA_VERSION)},
)

# The version-2 columns, in schema order: what ties an event to a served list.
RECOMMENDATION_COLUMNS: tuple[str, ...] = (
    "recommendation_id",
    "position",
    "placement",
    "experiment",
    "arm",
    "model_version",
    "propensity",
)
assert EVENT_SCHEMA.names[-len(RECOMMENDATION_COLUMNS) :] == list(RECOMMENDATION_COLUMNS)

REQUIRED_EVENT_COLUMNS = ("item_id",)
SEQUENCE_KEY_COLUMNS = ("session_id", "customer_id")


def enum_code(values: tuple[str, ...], value: str) -> int:
    """Integer code of an enumeration value in prepared data (1-based; 0 is unknown/padding)."""
    return values.index(value) + 1


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table to the canonical schema, keeping only the canonical columns present.

    Extra columns are kept after the canonical ones (optional attributes such as `color`), and
    canonical columns that are absent stay absent: the rest of the stack copes with missing
    optional fields. Casting errors are the loader's job to prevent; this is the last step.
    """
    names = [f.name for f in schema if f.name in table.column_names]
    extra = [n for n in table.column_names if schema.get_field_index(n) < 0]
    columns = [table.column(n).cast(schema.field(n).type) for n in names]
    fields = [schema.field(n) for n in names]
    for n in extra:
        columns.append(table.column(n))
        fields.append(table.schema.field(n))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))
