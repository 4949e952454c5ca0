"""The collector's event and identify payloads: validation with a reason per rejected field.

Events follow the canonical schema of `data.schema.EVENT_SCHEMA` (the same names, enumerations and
meaning), as JSON: `event_time` is epoch milliseconds or an ISO 8601 string (UTC when no offset is
given) and defaults to the time the collector received the event. Unknown fields are rejected rather
than dropped, so a misspelt field (`evnt_type`) is reported instead of silently losing data.

Feedback on served lists (schema version 2) is one event per item: an `impression` for each item of a
list the shopper was shown (`recommendation_id`, `position`, `placement` required; the experiment,
arm, model version and propensity the server returned with the list), a `click` for the item chosen
(`recommendation_id` required). Any other event may carry the `recommendation_id` of the list that led
to it (an add-to-cart or purchase after a click). `serving.client.impression_events` builds them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from intentrec.data.features import MAX_EVENT_TIME_MS, MIN_EVENT_TIME_MS
from intentrec.data.schema import (
    CHANNELS,
    DEVICE_TYPES,
    EVENT_SCHEMA,
    EVENT_TYPES,
    FEEDBACK_TYPES,
    PLACEMENTS,
    RECOMMENDATION_COLUMNS,
    REFERRERS,
)

ID_MAX_LENGTH = 200
MAX_POSITION = 1000

Id = Field(default=None, min_length=1, max_length=ID_MAX_LENGTH)
# The columns of a stored event, in canonical order.
EVENT_FIELDS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)
# What each feedback type must carry; the list columns other than recommendation_id belong to feedback only.
FEEDBACK_REQUIRES = {"impression": ("recommendation_id", "position", "placement"), "click": ("recommendation_id",)}
FEEDBACK_ONLY = tuple(c for c in RECOMMENDATION_COLUMNS if c != "recommendation_id")


class Event(BaseModel):
    """One shopper action (canonical event schema)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: str = Field(min_length=1, max_length=ID_MAX_LENGTH, description="unique per event; idempotency key")
    event_time: int | str | None = Field(
        default=None, description="epoch milliseconds or ISO 8601; default: the time the collector received it"
    )
    session_id: str | None = Id
    customer_id: str | None = Id
    device_id: str | None = Id
    item_id: str = Field(min_length=1, max_length=ID_MAX_LENGTH)
    event_type: Literal[EVENT_TYPES + FEEDBACK_TYPES]  # type: ignore[valid-type]
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False, description="unit price, >= 0")
    quantity: int | None = Field(default=None, ge=1, le=100_000, description=">= 1 for cart and purchase events")
    channel: Literal[CHANNELS] | None = None  # type: ignore[valid-type]
    device_type: Literal[DEVICE_TYPES] | None = None  # type: ignore[valid-type]
    referrer: Literal[REFERRERS] | None = None  # type: ignore[valid-type]
    region: str | None = Field(default=None, max_length=64)
    recommendation_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=ID_MAX_LENGTH,
        description="the served list this event answers (the recommendation_id of the response)",
    )
    position: int | None = Field(default=None, ge=1, le=MAX_POSITION, description="1-based rank in the list")
    placement: Literal[PLACEMENTS] | None = None  # type: ignore[valid-type]
    experiment: str | None = Field(default=None, min_length=1, max_length=ID_MAX_LENGTH)
    arm: str | None = Field(default=None, min_length=1, max_length=ID_MAX_LENGTH)
    model_version: str | None = Field(default=None, min_length=1, max_length=ID_MAX_LENGTH)
    propensity: float | None = Field(
        default=None, gt=0, le=1, allow_inf_nan=False, description="probability the policy showed this item here"
    )

    @field_validator("event_time")
    @classmethod
    def _time(cls, value: int | str | None) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("expected epoch milliseconds (an integer) or an ISO 8601 string")
        if isinstance(value, str):
            value = iso_ms(value)
        if not MIN_EVENT_TIME_MS <= value < MAX_EVENT_TIME_MS:
            raise ValueError(
                "expected epoch milliseconds between 2000 and 2100 (a value in seconds must be multiplied by 1000)"
            )
        return value

    @model_validator(mode="after")
    def _someone(self) -> Event:
        if not (self.session_id or self.customer_id or self.device_id):
            raise ValueError("an event needs at least one of session_id, customer_id, device_id to know whose it is")
        return self


class EventBatch(BaseModel):
    """`POST /v1/events` body. Each event is validated on its own: valid ones are stored, bad ones listed."""

    events: list[dict[str, Any]] = Field(
        description="events in the canonical schema (see the Event schema)",
        json_schema_extra={"items": Event.model_json_schema()},
    )


class Rejection(BaseModel):
    index: int = Field(description="position of the event in the batch")
    event_id: str | None
    field: str = Field(description="the offending field ('' for the event as a whole)")
    value: Any = None
    reason: str


class Conflict(BaseModel):
    index: int = Field(description="position of the event in the batch")
    event_id: str
    fields: dict[str, dict[str, Any]] = Field(description="each differing field: its stored and its sent value")


class Unmatched(BaseModel):
    index: int = Field(description="position of the event in the batch")
    event_id: str
    recommendation_id: str
    reason: str


class IngestResult(BaseModel):
    accepted: int = Field(description="new events stored durably")
    duplicates: int = Field(
        description="events whose event_id was already stored with the same payload (not stored again)"
    )
    rejected: list[Rejection]
    conflicts: list[Conflict] = Field(
        default_factory=list,
        description="events whose event_id was already stored with a different payload: not stored (HTTP 409); "
        "an event_id names one event forever, so send the change as a new event with its own id",
    )
    unmatched: list[Unmatched] = Field(
        default_factory=list,
        description="stored events whose recommendation_id has no stored impression (yet): kept, and left out of "
        "attribution until the impressions arrive",
    )


class Identify(BaseModel):
    """`POST /v1/identify`: a login or sign-up ties devices and sessions to a customer."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    customer_id: str = Field(min_length=1, max_length=ID_MAX_LENGTH)
    device_id: str | None = Id
    session_id: str | None = Id
    merge_customer_ids: list[str] = Field(
        default_factory=list, description="other known customer ids of the same person, merged into customer_id"
    )
    loyalty_member: bool | None = None
    email: str | None = Field(default=None, max_length=320)


def validate_events(raw: list[Any], received_ms: int) -> tuple[list[dict], list[Rejection]]:
    """Valid events as canonical dicts (event_time filled in) and a rejection for every field of each bad one."""
    events, rejected, seen = [], [], set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            rejected.append(
                Rejection(index=index, event_id=None, field="", value=shorten(item), reason="expected a JSON object")
            )
            continue
        event_id = item.get("event_id") if isinstance(item.get("event_id"), str) else None
        try:
            event = Event.model_validate(item)
        except ValidationError as error:
            for detail in error.errors(include_url=False):
                field = ".".join(str(part) for part in detail["loc"] if not isinstance(part, int))
                # Literal errors carry the allowed values in the message; keep pydantic's wording.
                value = None if detail["type"] == "missing" else shorten(detail.get("input"))
                rejected.append(
                    Rejection(index=index, event_id=event_id, field=field, value=value, reason=detail["msg"])
                )
            continue
        if event.event_id in seen:
            rejected.append(
                Rejection(
                    index=index,
                    event_id=event.event_id,
                    field="event_id",
                    value=event.event_id,
                    reason="the same event_id appears earlier in this batch; give every event its own id",
                )
            )
            continue
        problems = feedback_problems(event)
        if problems:
            rejected.extend(
                Rejection(index=index, event_id=event.event_id, field=field, value=value, reason=reason)
                for field, value, reason in problems
            )
            continue
        seen.add(event.event_id)
        record = event.model_dump()
        record[INDEX] = index
        if record["event_time"] is None:
            record["event_time"] = received_ms
            record[TIME_DEFAULTED] = True
        events.append(record)
    return events, rejected


def iso_ms(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 time (UTC when it has no offset); ValueError naming the expected form."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("expected epoch milliseconds or an ISO 8601 time such as 2026-11-24T10:15:00Z") from None
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp() * 1000)


def feedback_problems(event: Event) -> list[tuple[str, object, str]]:
    """(field, value, reason) for each rule of the feedback fields that `event` breaks."""
    out = []
    for name in FEEDBACK_REQUIRES.get(event.event_type, ()):
        if getattr(event, name) is None:
            out.append(
                (
                    name,
                    None,
                    f"a {event.event_type} event needs {name}: send the recommendation_id the server returned with "
                    "the list"
                    + (
                        ", the item's 1-based position in it and the placement"
                        if event.event_type == "impression"
                        else ""
                    ),
                )
            )
    if event.event_type not in FEEDBACK_TYPES:
        for name in FEEDBACK_ONLY:
            value = getattr(event, name)
            if value is not None:
                out.append(
                    (
                        name,
                        shorten(value),
                        f"only {' and '.join(FEEDBACK_TYPES)} events carry {name}; a {event.event_type} event may "
                        "carry only the recommendation_id of the list that led to it",
                    )
                )
    return out


# Set on an event whose event_time is the collector's clock: a resend gets another time, which is no
# difference of payload. Stores keep only EVENT_FIELDS, so this key is never stored.
TIME_DEFAULTED = "_event_time_defaulted"
# The event's index in the batch as sent (rejected events leave gaps); never stored either.
INDEX = "_index"


def differences(sent: dict, stored: dict) -> dict[str, dict]:
    """{field: {"stored": ..., "sent": ...}} for every field in which a resent event differs from the stored one."""
    out = {}
    for name in EVENT_FIELDS:
        if name == "event_time" and sent.get(TIME_DEFAULTED):
            continue
        a, b = stored.get(name), sent.get(name)
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
            same = math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)  # Redis keeps 14 digits
        else:
            same = a == b
        if not same:
            out[name] = {"stored": shorten(a), "sent": shorten(b)}
    return out


def shorten(value: Any, limit: int = 80) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value if not isinstance(value, str) or len(value) <= limit else value[: limit - 3] + "..."
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
