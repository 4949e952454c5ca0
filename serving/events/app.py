"""The event collector: a FastAPI app over an `EventStore`.

    INTENTREC_COLLECTOR_TOKEN=$(cat token) python -m serving.events serve store=sqlite:///artifacts/events.db port=8700
    curl -s localhost:8700/openapi.json

Endpoints (OpenAPI at /openapi.json, docs at /docs):
- `POST /v1/events` `{"events": [...]}`: canonical events, idempotent by `event_id`. Each event is
  validated on its own; valid events are stored (durably, before the reply) and the reply lists every
  rejected event with its index, field, value and reason. An `event_id` stored already with the same
  payload counts as a duplicate; with a different payload it is a conflict: not stored, listed in
  `conflicts` with the differing fields, and the reply is 409 (the batch's other events are stored).
  413 when the body or the batch is too large, 400 when the body is not JSON or nests deeper than
  `max_json_depth`, 422 when it is not `{"events": [...]}`, 503 when the store fails (then nothing of
  the batch was acknowledged; resend it, duplicates are skipped).
- `POST /v1/identify`: a login; links the device and session to the customer, merges customers.
- `GET /v1/profile/{identity}`: `customer:<id>`, `device:<id>`, `session:<id>` (a bare id is looked
  up as a customer, then as a device).
- `GET /healthz`: status, store kind and event count (no paths).
Every request body, on every route, is cut off at `max_body_bytes` however it is sent (a declared
length or chunks). With a token configured, every `/v1` call needs `Authorization: Bearer <token>`
(see docs/security.md).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from intentrec.serving.events.profile import build_profile
from intentrec.serving.events.schema import (
    INDEX,
    EventBatch,
    Identify,
    IngestResult,
    Unmatched,
    shorten,
    validate_events,
)
from intentrec.serving.events.store import KINDS, EventStore, now_ms

log = logging.getLogger(__name__)


@dataclass
class CollectorSettings:
    max_body_bytes: int = 1 << 20  # 1 MiB, on every route, whatever the transfer encoding
    max_batch_events: int = 1000
    max_json_depth: int = 32  # nesting of objects and arrays (an event batch needs 3)
    token: str | None = None
    abandon_after_minutes: float = 30.0
    profile_recent: int = 50


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, declared: int | None = None):
        size = f"request body of {declared} bytes exceeds" if declared is not None else "request body exceeds"
        super().__init__(413, f"{size} the limit of {limit} bytes (max_body_bytes); split the batch")


class Guard:
    """ASGI middleware in front of every route: the bearer token on /v1, and the body-size limit.

    The limit holds for every body: a declared Content-Length over it is refused before reading, and
    the bytes actually received (chunked or streamed bodies too) are counted as they arrive, so no
    more than max_body_bytes is ever read or kept."""

    def __init__(self, app, settings):  # CollectorSettings or serving.web.WebSettings: max_body_bytes, token
        self.app, self.settings = app, settings
        self.token = settings.token.encode() if settings.token is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        limit = self.settings.max_body_bytes
        if self.token is not None and scope["path"].startswith("/v1/"):
            header = headers.get(b"authorization", b"")
            if not (header.startswith(b"Bearer ") and hmac.compare_digest(header[7:], self.token)):
                response = JSONResponse(
                    {"error": "missing or wrong bearer token; send 'Authorization: Bearer <token>'"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:  # the server (h11) refuses a malformed length itself
            return await _error(413, BodyTooLarge(limit, int(declared)).detail)(scope, receive, send)
        received = 0

        async def counted():
            # Raised inside the route that reads the body, where the app's HTTPException handler answers it.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


async def read_json_body(request: Request, max_json_depth: int):
    """The request's JSON body (Guard has cut it at max_body_bytes); HTTP 400 naming the problem when it is not
    JSON or nests deeper than `max_json_depth`."""
    body = await request.body()
    too_deep = HTTPException(400, f"request body nests objects/arrays deeper than max_json_depth={max_json_depth}")
    try:
        payload = json.loads(body)
    except RecursionError:
        raise too_deep from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HTTPException(400, f"request body is not valid JSON: {shorten(str(error))}") from None
    if _too_deep(payload, max_json_depth):
        raise too_deep
    return payload


def _too_deep(value, limit: int) -> bool:
    """Whether objects/arrays nest deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def create_app(
    store: EventStore, settings: CollectorSettings | None = None, categories: Mapping[str, str] | None = None
) -> FastAPI:
    settings = settings or CollectorSettings()
    app = FastAPI(
        title="intentrec event collector",
        version="1",
        description="Real-time events, identity and profiles for intentrec (see serving/events/app.py).",
    )
    app.state.store = store
    app.add_middleware(Guard, settings=settings)

    async def read_json(request: Request):
        return await read_json_body(request, settings.max_json_depth)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException):
        return _error(error.status_code, str(error.detail))

    @app.post(
        "/v1/events",
        response_model=IngestResult,
        responses={409: {"model": IngestResult, "description": "some event_ids were stored with another payload"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EventBatch.model_json_schema()}},
            }
        },
    )
    async def ingest(request: Request):
        received = now_ms()
        payload = await read_json(request)
        if not isinstance(payload, dict) or not isinstance(payload.get("events"), list) or set(payload) != {"events"}:
            got = (
                type(payload).__name__
                if not isinstance(payload, dict)
                else f"an object with keys {shorten(sorted(payload))}"
            )
            return _error(422, f'expected {{"events": [event, ...]}}, got {got}')
        raw = payload["events"]
        if len(raw) > settings.max_batch_events:
            return _error(
                413,
                f"batch of {len(raw)} events exceeds max_batch_events={settings.max_batch_events}; split the batch",
            )
        events, rejected = validate_events(raw, received)
        try:
            result = await run_in_threadpool(store.append, events)
        except Exception as error:  # the store is down or full: acknowledge nothing
            log.exception("event store failed")
            return _error(
                503, f"event store failed ({type(error).__name__}: {error}); nothing was stored, resend the batch"
            )
        conflicts = [{**c, "index": events[c["index"]][INDEX]} for c in result.conflicts]
        try:
            unmatched = await run_in_threadpool(unmatched_feedback, store, events)
        except Exception:  # stored already; the flag is advice, so a failed check costs only the flag
            log.exception("event store failed while matching recommendation ids")
            unmatched = []
        reply = IngestResult(
            accepted=result.accepted,
            duplicates=result.duplicates,
            rejected=rejected,
            conflicts=conflicts,
            unmatched=unmatched,
        )
        if result.conflicts:
            log.warning("%d event_id conflicts, e.g. %s", len(result.conflicts), result.conflicts[0]["event_id"])
            return JSONResponse(reply.model_dump(), status_code=409)
        return reply

    @app.post(
        "/v1/identify",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": Identify.model_json_schema()}}}
        },
    )
    async def identify(request: Request):
        try:
            body = Identify.model_validate(await read_json(request))
        except ValidationError as error:
            problems = [
                f"{'.'.join(str(part) for part in detail['loc']) or 'body'}: {detail['msg']}"
                for detail in error.errors(include_url=False)[:10]
            ]
            return _error(422, "; ".join(problems))
        merge = [c for c in body.merge_customer_ids if c]
        traits = {"loyalty_member": body.loyalty_member, "email": body.email}
        try:
            customer = await run_in_threadpool(
                store.identify, body.customer_id, body.device_id, body.session_id, merge, traits
            )
        except Exception as error:
            log.exception("event store failed")
            return _error(503, f"event store failed ({type(error).__name__}: {error}); resend the request")
        members = await run_in_threadpool(store.members, customer)
        return {"customer_id": customer, "identities": sorted(members)}

    @app.get("/v1/profile/{identity}")
    async def profile(identity: str):
        kind, sep, value = identity.partition(":")
        if sep and kind in KINDS and value:
            pass
        elif sep:
            return _error(
                404 if kind in KINDS else 422,
                f"identity {shorten(identity)!r}: expected one of {[f'{k}:<id>' for k in KINDS]} or a bare id",
            )
        else:
            kind, value = await run_in_threadpool(_guess_kind, store, identity)
        found = await run_in_threadpool(
            lambda: build_profile(
                store,
                kind,
                value,
                abandon_after_ms=int(settings.abandon_after_minutes * 60_000),
                recent=settings.profile_recent,
                categories=categories,
            )
        )
        if found.customer_id is None and not found.recent_events:
            return _error(404, f"no events or links for {kind}:{shorten(value)}")
        return found.as_dict()

    @app.get("/healthz")
    async def health():
        count = await run_in_threadpool(store.count)
        return {"status": "ok", "store": store.url.partition(":")[0], "events": count}

    return app


def unmatched_feedback(store: EventStore, events: list[dict]) -> list[Unmatched]:
    """The events (other than impressions) whose recommendation_id has no impression in the store."""
    feedback = [e for e in events if e.get("recommendation_id") and e["event_type"] != "impression"]
    if not feedback:
        return []
    known = store.impressed({e["recommendation_id"] for e in feedback})
    return [
        Unmatched(
            index=e[INDEX],
            event_id=e["event_id"],
            recommendation_id=e["recommendation_id"],
            reason="no impression of this recommendation_id is stored; the event is kept (send the impressions "
            "of the list, or check the id the server returned)",
        )
        for e in feedback
        if e["recommendation_id"] not in known
    ]


def _guess_kind(store: EventStore, value: str) -> tuple[str, str]:
    if store.members(store.owner("customer", value)):
        return "customer", value
    return "device", value
