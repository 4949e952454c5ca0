"""Web API and playground: the Triton models as JSON a web front end calls directly, and a page to watch them.

    intentrec web triton=127.0.0.1:8001 collector=http://127.0.0.1:8700 bundle=<bundle> port=8800 \\
        allow_origins=https://shop.example.com,https://www.shop.example.com

A thin facade: every answer comes from the Triton models over gRPC (`serving.client`), so the limits, the
refusals and their words are the models' own (serving.request). Routes (OpenAPI at /openapi.json):

- `POST /v1/recommend`, `/v1/intent`, `/v1/banners`: one request, the fields of `serving.client.RecommendRequest`
  as JSON (`identity` reads the profile store the repository was built with) -> `{"item_ids", "scores", "info",
  "recommendation_id", "model_version", "experiment", "arm"}`. `recommend` with `"offers": true` and a
  collector also checks the on-site trigger rules (`rules=`, conf/triggers/default.yaml: `exit_offer`) on the
  shopper's profile and the signals it answered, and adds `offers`: `[{"rule", "message_id", "item_ids"}]`,
  each rule at most once per session (serving.triggers.onsite_offers: the trigger command's rules).
- `POST /v1/similar` `{"item_ids": [...], "k": 10}`.
- `POST /v1/events`: forwarded to the collector (`collector=`; its token, INTENTREC_COLLECTOR_TOKEN, is added
  here, so a page never holds it); the collector's answer and status come back as they are.
- `GET /v1/catalogue?category=<name>&limit=24`: the bundle's items (id, category, brand, price), most trained
  first, and the category names: what the playground shows.
- `GET /` the playground page (serving/playground/); `GET /healthz`.

Errors, as JSON `{"error": message}`: 400 for what the model refuses (its message: the field, the value, what is
expected) and for a body that is not JSON; 422 for a body that is not the request's schema (each field named);
401 without the bearer token when one is set (INTENTREC_WEB_TOKEN or `token_file=`; required beyond loopback);
413 over `max_body_bytes`; 503 when Triton or the collector cannot be reached (retry); 502 for another failure
of theirs. CORS: only the origins in `allow_origins` get CORS headers (a page elsewhere cannot read answers) and
a preflight from another origin is refused (400). Binds 127.0.0.1 unless told `host=`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from intentrec.serving.cli import key_value_flags
from intentrec.serving.client import AsyncClient, RecommendRequest, ServingError
from intentrec.serving.events.app import Guard, read_json_body
from intentrec.serving.events.schema import shorten

log = logging.getLogger(__name__)
PLAYGROUND = Path(__file__).resolve().parent / "playground"
TOKEN_ENV = "INTENTREC_WEB_TOKEN"
REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(RecommendRequest))
FIRED_KEPT = 100_000  # on-site offers remembered (once per session), oldest forgotten first


@dataclass
class WebSettings:
    triton: str = "127.0.0.1:8001"  # the Triton server's gRPC host:port
    collector: str | None = None  # the event collector's URL (events, profiles for offers)
    collector_token: str | None = None  # sent to the collector; never to the browser
    token: str | None = None  # required on /v1 calls when set
    allow_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 64 * 1024
    max_json_depth: int = 8
    timeout_s: float = 10.0
    bundle: Path | None = None  # for /v1/catalogue (the playground)
    rules: Path | None = None  # trigger rules whose on-site ones `offers` checks


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status(error: ServingError) -> int:
    if error.code == "INVALID_ARGUMENT":
        return 400
    return 503 if error.retryable else 502


class Catalogue:
    """The bundle's items for the page: ids, categories, brands, prices, most trained first."""

    def __init__(self, bundle_dir: Path):
        from intentrec.serving.bundle import load_bundle

        items = load_bundle(bundle_dir, verify=False).items
        order = np.argsort(-np.asarray(items["train_count"]), kind="stable")
        column = lambda name: np.asarray(items[name])[order].tolist() if name in items else [None] * len(order)  # noqa: E731
        self.rows = [
            {"item_id": str(i), "category": str(c), "brand": None if b is None else str(b), "price": p}
            for i, c, b, p in zip(column("item_id"), column("category"), column("brand"), column("price"))
        ]
        for row in self.rows:
            row["price"] = (
                None if row["price"] is None or not np.isfinite(row["price"]) else round(float(row["price"]), 2)
            )
        self.categories = sorted({r["category"] for r in self.rows if r["category"]})
        self.by_id = {r["item_id"]: r for r in self.rows}


def create_app(settings: WebSettings) -> FastAPI:
    import httpx
    from starlette.middleware.cors import CORSMiddleware

    triton: list[AsyncClient] = []  # made on the first request, inside the server's event loop (grpc.aio)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        for opened in triton:
            await opened.close()

    app = FastAPI(
        title="intentrec web API",
        version="1",
        description="JSON recommend / similar / intent / banners over the Triton models (see serving/web.py).",
        lifespan=lifespan,
    )
    app.add_middleware(Guard, settings=settings)
    app.add_middleware(  # outermost: a preflight is answered (or refused: origin not allowed) before the token
        CORSMiddleware,
        allow_origins=settings.allow_origins,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )

    def client() -> AsyncClient:
        if not triton:
            triton.append(AsyncClient(settings.triton, timeout_s=settings.timeout_s))
        return triton[0]

    collector = (
        httpx.Client(
            base_url=settings.collector,
            timeout=settings.timeout_s,
            headers={"Authorization": f"Bearer {settings.collector_token}"} if settings.collector_token else {},
        )
        if settings.collector
        else None
    )
    catalogue = Catalogue(settings.bundle) if settings.bundle else None
    rules = []
    if settings.rules is not None:
        from intentrec.serving.triggers import load_rules

        rules = [r for r in load_rules(settings.rules) if r.action == "exit_offer"]
    fired: set[str] = set()  # on-site offers sent (message ids), the oldest forgotten past FIRED_KEPT
    order: deque[str] = deque()
    fired_lock = threading.Lock()
    adapter = TypeAdapter(RecommendRequest)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException):
        return _error(error.status_code, str(error.detail))

    def parse(payload, extra: tuple[str, ...] = ()) -> RecommendRequest:
        if not isinstance(payload, dict):
            raise HTTPException(422, f"expected a JSON object with the request's fields, got {type(payload).__name__}")
        unknown = sorted(set(payload) - set(REQUEST_FIELDS) - set(extra))
        if unknown:
            raise HTTPException(
                422, f"unknown field(s) {shorten(unknown)}; a request has the fields {list(REQUEST_FIELDS)}"
            )
        try:
            return adapter.validate_python({k: v for k, v in payload.items() if k not in extra})
        except ValidationError as error:
            problems = [
                f"{'.'.join(str(part) for part in detail['loc']) or 'body'}: {detail['msg']} "
                f"(got {shorten(detail.get('input'))!r})"
                for detail in error.errors(include_url=False)[:10]
            ]
            raise HTTPException(422, "; ".join(problems)) from None

    def answer(reply, items: bool = True, **extra) -> JSONResponse:
        """The wire form of a model's answer (plain JSON types already: no encoder pass)."""
        if reply.error:
            return _error(400, reply.error)
        out = {"item_ids": reply.item_ids, "scores": reply.scores, "info": reply.info}
        out.update({name: getattr(reply, name) for name in ("recommendation_id", "model_version", "experiment", "arm")})
        if catalogue is not None and items:  # what a page shows of each item
            out["items"] = [catalogue.by_id.get(i, {"item_id": i}) for i in reply.item_ids]
        return JSONResponse({**out, **extra})

    async def call(method: str, *args):
        """The AsyncClient's `method` on `args`, or the JSON error its ServingError maps to."""
        try:
            return await getattr(client(), method)(*args)
        except ServingError as error:
            return _error(_status(error), str(error))

    def offers_for(request: RecommendRequest, reply) -> list[dict]:
        from intentrec.serving.triggers import onsite_offers

        if not rules or collector is None or not request.identity or reply.error:
            return []
        found = collector.get(f"/v1/profile/{request.identity}")
        if found.status_code != 200:
            return []
        profile = found.json()
        shopper = f"customer:{profile['customer_id']}" if profile.get("customer_id") else profile["key"]
        traits = {"loyalty_member": profile.get("loyalty_member"), "email": profile.get("email")}
        with fired_lock:
            fire = onsite_offers(
                rules, profile["recent_events"], shopper, reply.intent, fired, profile.get("cart"), traits
            )
            order.extend(message_id for _, message_id in fire)
            while len(order) > FIRED_KEPT:
                fired.discard(order.popleft())
        return [{"rule": r.name, "message_id": message_id, "item_ids": reply.item_ids[: r.k]} for r, message_id in fire]

    @app.post("/v1/recommend")
    async def recommend(request: Request):
        payload = await read_json_body(request, settings.max_json_depth)
        offers = isinstance(payload, dict) and payload.get("offers") is True
        query = parse(payload, extra=("offers",))
        reply = await call("recommend", query)
        if isinstance(reply, JSONResponse):
            return reply
        if not offers or reply.error:
            return answer(reply)
        try:
            return answer(reply, offers=await run_in_threadpool(offers_for, query, reply))
        except httpx.HTTPError as error:  # the list stands; the offers need the collector
            reply.info["offers_error"] = f"collector unreachable ({type(error).__name__})"
            return answer(reply, offers=[])

    @app.post("/v1/intent")
    async def intent(request: Request):
        reply = await call("intent", parse(await read_json_body(request, settings.max_json_depth)))
        return reply if isinstance(reply, JSONResponse) else answer(reply, items=False)

    @app.post("/v1/banners")
    async def banners(request: Request):
        reply = await call("banners", parse(await read_json_body(request, settings.max_json_depth)))
        return reply if isinstance(reply, JSONResponse) else answer(reply, items=False)

    @app.post("/v1/similar")
    async def similar(request: Request):
        payload = await read_json_body(request, settings.max_json_depth)
        if not isinstance(payload, dict) or set(payload) - {"item_ids", "k"} or "item_ids" not in payload:
            return _error(422, 'expected {"item_ids": ["<item id>", ...], "k": <1-100>}')
        ids, k = payload["item_ids"], payload.get("k", 10)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _error(422, f"item_ids: expected a list of item id strings, got {shorten(ids)!r}")
        if isinstance(k, bool) or not isinstance(k, int):
            return _error(422, f"k: expected an integer, got {shorten(k)!r}")
        reply = await call("similar_items", ids, k)
        return reply if isinstance(reply, JSONResponse) else answer(reply)

    @app.post("/v1/events")
    async def events(request: Request):
        if collector is None:
            return _error(404, "no collector is configured; start the web API with collector=<collector URL>")
        body = await request.body()
        try:
            forwarded = await run_in_threadpool(
                collector.post, "/v1/events", content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as error:
            return _error(503, f"the collector cannot be reached ({type(error).__name__}); resend the events")
        return JSONResponse(forwarded.json(), status_code=forwarded.status_code)

    @app.get("/v1/catalogue")
    async def items(category: str | None = None, limit: int = 24):
        if catalogue is None:
            return _error(404, "no catalogue is loaded; start the web API with bundle=<bundle>")
        if not 1 <= limit <= 500:
            return _error(422, f"limit={limit}; expected 1 to 500")
        if category is not None and category not in catalogue.categories:
            return _error(404, f"category {shorten(category)!r} is not in the catalogue; known: {catalogue.categories}")
        rows = [r for r in catalogue.rows if category is None or r["category"] == category][:limit]
        return {"categories": catalogue.categories, "items": rows}

    @app.get("/healthz")
    async def health():
        ready = await client().ready()
        return JSONResponse({"status": "ok" if ready else "triton unreachable"}, status_code=200 if ready else 503)

    @app.get("/")
    async def page():
        return FileResponse(PLAYGROUND / "index.html")

    @app.get("/playground/{name}")
    async def asset(name: str):
        path = PLAYGROUND / name
        if name not in {p.name for p in PLAYGROUND.iterdir()} or not path.is_file():
            return _error(404, f"no playground file {shorten(name)!r}")
        return FileResponse(path)

    return app


KEY_FLAGS = {
    "triton": "--triton",
    "collector": "--collector",
    "bundle": "--bundle",
    "rules": "--rules",
    "host": "--host",
    "port": "--port",
    "allow_origins": "--allow-origins",
    "token": "--token",
    "token_file": "--token-file",
    "max_body_bytes": "--max-body-bytes",
}


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton", default="127.0.0.1:8001", help="the Triton server's gRPC host:port")
    parser.add_argument("--collector", default=None, help="the event collector's URL, e.g. http://127.0.0.1:8700")
    parser.add_argument("--bundle", type=Path, default=None, help="export bundle: the playground's catalogue")
    parser.add_argument("--rules", type=Path, default=None, help="trigger rules for on-site offers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument("--allow-origins", default="", help="comma-separated origins allowed by CORS")
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused: see collector_token
    parser.add_argument("--token-file", type=Path, default=None, help=f"bearer token file (or set {TOKEN_ENV})")
    parser.add_argument("--max-body-bytes", type=int, default=64 * 1024)
    args = parser.parse_args(key_value_flags(sys.argv[1:] if argv is None else argv, KEY_FLAGS))
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from intentrec.errors import IntentrecError
    from intentrec.serving.events.__main__ import TOKEN_ENV as COLLECTOR_TOKEN_ENV
    from intentrec.serving.events.__main__ import collector_token

    origins = [o.strip().rstrip("/") for o in args.allow_origins.split(",") if o.strip()]
    try:
        token = collector_token(args.host, args.token, args.token_file, env=TOKEN_ENV, what="web API")
        bad = [o for o in origins if o != "*" and not o.startswith(("http://", "https://"))]
        if bad:
            raise IntentrecError(
                f"allow_origins: {bad} are not origins; give scheme://host[:port], e.g. https://shop.example.com"
            )
        if args.rules is not None:
            from intentrec.serving.triggers import load_rules

            load_rules(args.rules)
        settings = WebSettings(
            triton=args.triton,
            collector=args.collector,
            collector_token=os.environ.get(COLLECTOR_TOKEN_ENV) or None,
            token=token,
            allow_origins=origins,
            max_body_bytes=args.max_body_bytes,
            bundle=args.bundle,
            rules=args.rules,
        )
        app = create_app(settings)
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    print(f"[web] http://{args.host}:{args.port} -> Triton {args.triton}, collector {args.collector}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
