"""The event collector: a FastAPI app over an `EventStore`.

    python -m serving.events serve store=sqlite:///artifacts/events.db port=8700
    curl -s localhost:8700/openapi.json

Endpoints (OpenAPI at /openapi.json, docs at /docs):
- `POST /v1/events` `{"events": [...]}`: canonical events, idempotent by `event_id`. Each event is
  validated on its own; valid events are stored (durably, before the reply) and the reply lists every
  rejected event with its index, field, value and reason. 413 when the body or the batch is too large,
  400 when the body is not JSON, 422 when it is not `{"events": [...]}`, 503 when the store fails
  (then nothing of the batch was acknowledged; resend it, duplicates are skipped).
- `POST /v1/identify`: a login; links the device and session to the customer, merges customers.
- `GET /v1/profile/{identity}`: `customer:<id>`, `device:<id>`, `session:<id>` (a bare id is looked
  up as a customer, then as a device).
- `GET /healthz`.
With a token configured, every `/v1` call needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.events.profile import build_profile
from serving.events.schema import EventBatch, Identify, IngestResult, validate_events
from serving.events.store import KINDS, EventStore, now_ms

log = logging.getLogger(__name__)


@dataclass
class CollectorSettings:
    max_body_bytes: int = 1 << 20  # 1 MiB
    max_batch_events: int = 1000
    token: str | None = None
    abandon_after_minutes: float = 30.0
    profile_recent: int = 50


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


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

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if settings.token is not None:
                header = request.headers.get("authorization", "")
                if not (header.startswith("Bearer ") and hmac.compare_digest(header[7:], settings.token)):
                    return JSONResponse(
                        {"error": "missing or wrong bearer token; send 'Authorization: Bearer <token>'"},
                        status_code=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
                return _error(
                    413,
                    f"request body of {int(declared)} bytes exceeds the limit of {settings.max_body_bytes} bytes; "
                    "split the batch",
                )
        return await call_next(request)

    async def read_json(request: Request):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise HTTPException(
                    413, f"request body exceeds the limit of {settings.max_body_bytes} bytes; split the batch"
                )
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HTTPException(400, f"request body is not valid JSON: {error}") from None

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException):
        return _error(error.status_code, str(error.detail))

    @app.post(
        "/v1/events",
        response_model=IngestResult,
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
            got = type(payload).__name__ if not isinstance(payload, dict) else f"an object with keys {sorted(payload)}"
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
        return IngestResult(accepted=result.accepted, duplicates=result.duplicates, rejected=rejected)

    @app.post("/v1/identify")
    async def identify(body: Identify):
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
                f"identity {identity!r}: expected one of {[f'{k}:<id>' for k in KINDS]} or a bare id",
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
            return _error(404, f"no events or links for {kind}:{value}")
        return found.as_dict()

    @app.get("/healthz")
    async def health():
        count = await run_in_threadpool(store.count)
        return {"status": "ok", "store": store.url.split("@")[-1], "events": count}

    return app


def _guess_kind(store: EventStore, value: str) -> tuple[str, str]:
    if store.members(store.owner("customer", value)):
        return "customer", value
    return "device", value
