"""Python SDK and command line for the Triton `recommend` and `similar_items` models (HTTP or gRPC, sync or async).

    from intentrec.serving.client import Client, RecommendRequest
    with Client("127.0.0.1:8001") as client:                  # gRPC; Client("127.0.0.1:8000", "http") for HTTP
        reply = client.recommend(RecommendRequest(item_ids=["i35", "i7"], device_type="mobile", k=10))
        reply.item_ids, reply.scores, reply.info               # info: unknown_items, truncated, fallback, ...
        reply.recommendation_id, reply.model_version, reply.arm  # send the id with impressions and clicks
        reply.impressions("home", session_id="s1")             # collector events for the shown list
        reply.click("i12", session_id="s1")
        client.similar_items(["i35"], k=5)

    async with AsyncClient("127.0.0.1:8001") as client:
        reply = await client.recommend(RecommendRequest(item_ids=["i35"]))

    python -m serving.client recommend --items i35,i7 --event-types view,add_to_cart --device-type mobile --k 5
    python -m serving.client similar --items i35 --k 5 --protocol http --url 127.0.0.1:8000
    python -m serving.client recommend --identity customer:c1 --device-type mobile   # profile store

Several requests in one call (`recommend([r1, r2])`) travel as rows of one inference request.
A request the server refuses raises `ServingError` with the server's message (which input, which
value, what is expected) and `code`: "INVALID_ARGUMENT" for a request that can never succeed as sent
(do not retry it), "UNAVAILABLE" / "DEADLINE_EXCEEDED" when the server cannot be reached in time,
"INTERNAL" for a fault of the server (the same names over HTTP: 400 -> INVALID_ARGUMENT, 500 ->
INTERNAL). In a call of several requests where only some are refused, the others are answered and
each refused one comes back with no items and its message in `Recommendation.error`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np

from intentrec.errors import IntentrecError
from intentrec.serving.request import LABELS
from intentrec.serving.request import Query as RecommendRequest

__all__ = ["AsyncClient", "Client", "Recommendation", "RecommendRequest", "ServingError"]


class ServingError(IntentrecError):
    """The server refused a request or could not be reached; `code` says which (gRPC status names)."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.code = code

    @property
    def retryable(self) -> bool:
        """Whether sending the same request again may succeed."""
        return self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")


HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 500: "INTERNAL", 503: "UNAVAILABLE"}


@dataclass
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    info: dict
    error: str | None = None  # set when this request (a row of a batch) was refused; item_ids is then empty
    recommendation_id: str | None = None  # names this list: send it with the impression, click, cart and purchase
    model_version: str | None = None  # the Triton model version that answered
    experiment: str | None = None  # the experiment the shopper is in and their arm (None outside one)
    arm: str | None = None

    @property
    def intent(self) -> dict | None:
        """The shopper's intent signals (a model with intent heads): {"purchase": p, "exit": p, "abandon": p,
        "next_category": [{"category": c, "p": p}, ...]}, heads that are off left out; None without heads."""
        return self.info.get("intent")

    def impressions(
        self,
        placement: str,
        *,
        shown: int | None = None,
        propensities: list[float] | None = None,
        event_time: int | str | None = None,
        **who: str,
    ) -> list[dict]:
        """Collector events (`POST /v1/events`) saying the first `shown` items (all by default) were shown
        at `placement`; `who` names the shopper (session_id, customer_id, device_id). Event ids derive from
        the list and the position, so sending them twice stores them once."""
        if self.recommendation_id is None:
            raise ValueError("this list has no recommendation_id (a refused request): there is nothing to log")
        shown = len(self.item_ids) if shown is None else min(shown, len(self.item_ids))
        labels = self._labels()
        if propensities is None:
            propensities = self.info.get("propensities")  # logged by an exploring arm
        events = []
        for position, item in enumerate(self.item_ids[:shown], start=1):
            event = {
                "event_id": f"{self.recommendation_id}:impression:{position}",
                "event_type": "impression",
                "item_id": item,
                "recommendation_id": self.recommendation_id,
                "position": position,
                "placement": placement,
                **labels,
                **who,
            }
            if propensities is not None:
                event["propensity"] = float(propensities[position - 1])
            if event_time is not None:
                event["event_time"] = event_time
            events.append(event)
        return events

    def _labels(self) -> dict:
        return {name: getattr(self, name) for name in ("experiment", "arm", "model_version") if getattr(self, name)}

    def click(
        self, item_id: str, placement: str | None = None, event_time: int | str | None = None, **who: str
    ) -> dict:
        """The collector event of a click on `item_id` in this list (one per list and item: a second click
        on the same item is a duplicate)."""
        if self.recommendation_id is None or item_id not in self.item_ids:
            raise ValueError(f"item {item_id!r} is not in this list ({self.item_ids[:10]}...)")
        event = {
            "event_id": f"{self.recommendation_id}:click:{item_id}",
            "event_type": "click",
            "item_id": item_id,
            "recommendation_id": self.recommendation_id,
            "position": self.item_ids.index(item_id) + 1,
            **self._labels(),
            **who,
        }
        if placement is not None:
            event["placement"] = placement
        if event_time is not None:
            event["event_time"] = event_time
        return event


TRITON_TYPES = {
    np.dtype(object): "BYTES",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(bool): "BOOL",
    np.dtype(np.float32): "FP32",
}
NUMPY_TYPES = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "BOOL": bool}
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
GRPC_OPTIONS = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]


def _module(protocol: str, aio: bool):
    if protocol == "grpc":
        import tritonclient.grpc as module
        import tritonclient.grpc.aio as aio_module
    elif protocol == "http":
        import tritonclient.http as module
        import tritonclient.http.aio as aio_module
    else:
        raise ServingError(f"protocol={protocol!r}; expected grpc or http.")
    return aio_module if aio else module


def _tensor(module, name: str, values: np.ndarray):
    kind = TRITON_TYPES[values.dtype]
    tensor = module.InferInput(name, list(values.shape), kind)
    tensor.set_data_from_numpy(values)
    return tensor


def _rows(values: list[list], fill, dtype) -> np.ndarray:
    width = max([len(v) for v in values] + [1])
    out = np.full((len(values), width), fill, dtype=dtype)
    for i, row in enumerate(values):
        out[i, : len(row)] = [x.encode() if dtype is object else x for x in row]
    return out


def recommend_arrays(requests: list[RecommendRequest]) -> dict[str, np.ndarray]:
    """The `recommend` input tensors for a batch of requests (rows); optional inputs only when some row sets them."""
    arrays = {"item_ids": _rows([[str(i) for i in r.item_ids] for r in requests], b"", object)}
    if any(r.event_types is not None for r in requests):
        types = [list(r.event_types) if r.event_types is not None else ["view"] * len(r.item_ids) for r in requests]
        arrays["event_types"] = _rows(types, b"", object)
    if any(r.timestamps is not None for r in requests):
        # -1 = no timestamps for that row (the server then treats its gaps as unknown)
        stamps = [
            list(map(int, r.timestamps)) if r.timestamps is not None else [-1] * len(r.item_ids) for r in requests
        ]
        arrays["timestamps"] = _rows(stamps, -1, np.int64)
    if any(r.channels is not None for r in requests):
        channels = [list(r.channels) if r.channels is not None else ["web"] * len(r.item_ids) for r in requests]
        arrays["channels"] = _rows(channels, b"", object)
    if any(r.session_ids is not None for r in requests):
        sessions = [
            list(map(str, r.session_ids)) if r.session_ids is not None else [""] * len(r.item_ids) for r in requests
        ]
        arrays["session_ids"] = _rows(sessions, b"", object)
    if any(r.quantities is not None for r in requests):  # 0 = 1 unit (also the padding)
        quantities = [
            list(map(int, r.quantities)) if r.quantities is not None else [0] * len(r.item_ids) for r in requests
        ]
        arrays["quantities"] = _rows(quantities, 0, np.int64)
    for name in ("device_type", "referrer", "region", "loyalty", "identity", "shopper"):
        if any(getattr(r, name) for r in requests):
            arrays[name] = np.asarray([[(getattr(r, name) or "").encode()] for r in requests], dtype=object)
    for name, dtype in (("now", np.int64), ("hour", np.int64), ("day_of_week", np.int64)):
        if any(getattr(r, name) is not None for r in requests):
            values = [[-1 if getattr(r, name) is None else int(getattr(r, name))] for r in requests]
            arrays[name] = np.asarray(values, dtype=dtype)
    for name in ("min_price", "max_price"):  # NaN = no bound for that row
        if any(getattr(r, name) is not None for r in requests):
            values = [[np.nan if getattr(r, name) is None else float(getattr(r, name))] for r in requests]
            arrays[name] = np.asarray(values, dtype=np.float32)
    arrays["k"] = np.asarray([[int(r.k)] for r in requests], np.int64)
    arrays["exclude_purchased"] = np.asarray([[bool(r.exclude_purchased)] for r in requests])
    arrays["exclude_in_cart"] = np.asarray([[bool(r.exclude_in_cart)] for r in requests])
    for name in ("past_purchases", "categories"):
        if any(getattr(r, name) for r in requests):
            arrays[name] = _rows([[str(x) for x in getattr(r, name)] for r in requests], b"", object)
    assert all(a.shape[0] == len(requests) for a in arrays.values())
    return arrays


def similar_arrays(item_ids: list[list[str]], ks: list[int]) -> dict[str, np.ndarray]:
    return {
        "item_ids": _rows([[str(i) for i in ids] for ids in item_ids], b"", object),
        "k": np.asarray([[int(k)] for k in ks], np.int64),
    }


def infer_request_bytes(model: str, arrays: dict[str, np.ndarray]) -> bytes:
    """A serialized KServe v2 gRPC ModelInferRequest with raw (binary) input contents."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    request = service_pb2.ModelInferRequest(model_name=model)
    for name, values in arrays.items():
        kind = TRITON_TYPES[values.dtype]
        request.inputs.add(name=name, datatype=kind, shape=list(values.shape))
        data = serialize_byte_tensor(values).item() if kind == "BYTES" else np.ascontiguousarray(values).tobytes()
        request.raw_input_contents.append(data)
    return request.SerializeToString()


class GrpcReply:
    """A parsed ModelInferResponse with tritonclient's `as_numpy(name)`."""

    def __init__(self, payload: bytes):
        from tritonclient.grpc import service_pb2
        from tritonclient.utils import deserialize_bytes_tensor

        reply = service_pb2.ModelInferResponse.FromString(payload)
        self.model_name = reply.model_name
        self.arrays = {}
        for output, raw in zip(reply.outputs, reply.raw_output_contents):
            shape = list(output.shape)
            if output.datatype == "BYTES":
                values = deserialize_bytes_tensor(raw)
            else:
                values = np.frombuffer(raw, dtype=NUMPY_TYPES[output.datatype])
            self.arrays[output.name] = values.reshape(shape)

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name)


def _grpc_error(model: str, error) -> ServingError:
    details = error.details() if hasattr(error, "details") else str(error)
    code = error.code().name if hasattr(error, "code") and error.code() is not None else "UNKNOWN"
    return ServingError(f"{model}: {details}", code)


def _http_error(model: str, error) -> ServingError:
    status = error.status()
    code = HTTP_CODES.get(int(status), "UNKNOWN") if status and str(status).isdigit() else "UNAVAILABLE"
    return ServingError(f"{model}: {error.message()}", code)


def _raw_infer_method(url: str, aio: bool):
    """(channel, ModelInfer callable taking and returning bytes). Inference goes over this one raw gRPC
    method: the request is serialized straight from the numpy arrays and the reply parsed once
    (tritonclient's InferInput/InferResult layers cost about 0.3 ms per call on this machine)."""
    import grpc

    channel = (grpc.aio if aio else grpc).insecure_channel(url, options=GRPC_OPTIONS)
    return channel, channel.unary_unary(GRPC_INFER, request_serializer=None, response_deserializer=None)


def _replies(result) -> list[Recommendation]:
    ids, scores, info = result.as_numpy("item_ids"), result.as_numpy("scores"), result.as_numpy("info")
    out = []
    for row in range(ids.shape[0]):
        keep = [j for j in range(ids.shape[1]) if ids[row, j] not in (b"", "")]
        details = json.loads(info[row, 0])
        out.append(
            Recommendation(
                [ids[row, j].decode() if isinstance(ids[row, j], bytes) else str(ids[row, j]) for j in keep],
                [float(scores[row, j]) for j in keep],
                details,
                details.get("error"),
                **{name: details.get(name) for name in LABELS},
            )
        )
    return out


class Client:
    """Synchronous client; `url` is host:port of the server's gRPC (default) or HTTP endpoint."""

    def __init__(self, url: str = "127.0.0.1:8001", protocol: str = "grpc", timeout_s: float = 10.0):
        self.module = _module(protocol, aio=False)
        self.protocol, self.timeout_s = protocol, timeout_s
        kwargs = {"network_timeout": timeout_s, "connection_timeout": timeout_s} if protocol == "http" else {}
        self.client = self.module.InferenceServerClient(url, **kwargs)
        self._channel, self._call = _raw_infer_method(url, aio=False) if protocol == "grpc" else (None, None)

    def _infer(self, model: str, arrays: dict[str, np.ndarray]):
        if self.protocol == "grpc":
            import grpc

            try:
                return GrpcReply(self._call(infer_request_bytes(model, arrays), timeout=self.timeout_s))
            except grpc.RpcError as error:
                raise _grpc_error(model, error) from None
        from tritonclient.utils import InferenceServerException

        try:
            return self.client.infer(model, [_tensor(self.module, name, v) for name, v in arrays.items()])
        except InferenceServerException as error:
            raise _http_error(model, error) from None
        except OSError as error:
            raise ServingError(f"{model}: cannot reach the server ({error})", "UNAVAILABLE") from None

    def recommend(self, requests: RecommendRequest | list[RecommendRequest]) -> Recommendation | list[Recommendation]:
        single = isinstance(requests, RecommendRequest)
        batch = [requests] if single else list(requests)
        replies = _replies(self._infer("recommend", recommend_arrays(batch)))
        return replies[0] if single else replies

    def similar_items(self, item_ids: list[str], k: int = 10) -> Recommendation:
        return _replies(self._infer("similar_items", similar_arrays([list(item_ids)], [k])))[0]

    def intent(self, requests: RecommendRequest | list[RecommendRequest]) -> Recommendation | list[Recommendation]:
        """The `intent` model: the signals alone (`.intent`), for the same requests as `recommend`; no items."""
        single = isinstance(requests, RecommendRequest)
        batch = [requests] if single else list(requests)
        replies = _replies(self._infer("intent", recommend_arrays(batch)))
        return replies[0] if single else replies

    def banners(self, requests: RecommendRequest | list[RecommendRequest]) -> Recommendation | list[Recommendation]:
        """The `banners` model: banner ids best first (`item_ids`), scores, titles in `info["banners"]`."""
        single = isinstance(requests, RecommendRequest)
        batch = [requests] if single else list(requests)
        replies = _replies(self._infer("banners", recommend_arrays(batch)))
        return replies[0] if single else replies

    def ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready())
        except Exception:
            return False

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self.client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """asyncio client with the same methods (awaitable)."""

    def __init__(self, url: str = "127.0.0.1:8001", protocol: str = "grpc", timeout_s: float = 10.0):
        self.module = _module(protocol, aio=True)
        self.protocol, self.timeout_s = protocol, timeout_s
        self.client = self.module.InferenceServerClient(url)
        self._channel, self._call = _raw_infer_method(url, aio=True) if protocol == "grpc" else (None, None)

    async def _infer(self, model: str, arrays: dict[str, np.ndarray]):
        if self.protocol == "grpc":
            import grpc

            try:
                return GrpcReply(await self._call(infer_request_bytes(model, arrays), timeout=self.timeout_s))
            except grpc.RpcError as error:
                raise _grpc_error(model, error) from None
        from tritonclient.utils import InferenceServerException

        try:
            inputs = [_tensor(self.module, name, v) for name, v in arrays.items()]
            return await self.client.infer(model, inputs, timeout=int(self.timeout_s))
        except InferenceServerException as error:
            raise _http_error(model, error) from None
        except OSError as error:
            raise ServingError(f"{model}: cannot reach the server ({error})", "UNAVAILABLE") from None

    async def recommend(self, requests):
        single = isinstance(requests, RecommendRequest)
        batch = [requests] if single else list(requests)
        replies = _replies(await self._infer("recommend", recommend_arrays(batch)))
        return replies[0] if single else replies

    async def similar_items(self, item_ids: list[str], k: int = 10) -> Recommendation:
        return _replies(await self._infer("similar_items", similar_arrays([list(item_ids)], [k])))[0]

    async def intent(self, requests):
        single = isinstance(requests, RecommendRequest)
        batch = [requests] if single else list(requests)
        replies = _replies(await self._infer("intent", recommend_arrays(batch)))
        return replies[0] if single else replies

    async def banners(self, requests):
        single = isinstance(requests, RecommendRequest)
        batch = [requests] if single else list(requests)
        replies = _replies(await self._infer("banners", recommend_arrays(batch)))
        return replies[0] if single else replies

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready())
        except Exception:  # unreachable: not ready
            return False

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        await self.client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [x for x in text.split(",") if x != ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["recommend", "similar", "intent", "banners"])
    parser.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8001 for grpc, :8000 for http)")
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    parser.add_argument("--items", default="", help="comma-separated raw item ids, oldest first")
    parser.add_argument("--event-types", default=None, help="comma-separated, one per item (default view)")
    parser.add_argument("--timestamps", default=None, help="comma-separated ms since epoch, one per item")
    parser.add_argument("--now", type=int, default=None, help="request time, ms since epoch (default: server clock)")
    for name in ("device-type", "referrer", "region", "loyalty"):
        parser.add_argument(f"--{name}", default=None)
    parser.add_argument("--hour", type=int, default=None, help="0-23 UTC")
    parser.add_argument("--day-of-week", type=int, default=None, help="1 = Monday ... 7 = Sunday")
    parser.add_argument("--past-purchases", default=None, help="comma-separated raw item ids")
    parser.add_argument("--categories", default=None, help="comma-separated: only these categories")
    parser.add_argument("--min-price", type=float, default=None)
    parser.add_argument("--max-price", type=float, default=None)
    parser.add_argument("--identity", default=None, help="customer:<id> | device:<id> | session:<id> (profile store)")
    parser.add_argument(
        "--shopper", default=None, help="customer:<id> | device:<id>: the experiment unit (no profile read)"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--keep-purchased", action="store_true", help="do not exclude purchased items")
    parser.add_argument("--exclude-in-cart", action="store_true", help="exclude items in the cart")
    args = parser.parse_args(argv)
    url = args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")
    try:
        with Client(url, args.protocol) as client:
            if args.model == "similar":
                reply = client.similar_items(_split(args.items) or [], args.k)
            else:
                timestamps = _split(args.timestamps)
                reply = {"intent": client.intent, "banners": client.banners}.get(args.model, client.recommend)(
                    RecommendRequest(
                        item_ids=_split(args.items) or [],
                        event_types=_split(args.event_types),
                        timestamps=[int(t) for t in timestamps] if timestamps is not None else None,
                        now=args.now,
                        device_type=args.device_type,
                        referrer=args.referrer,
                        region=args.region,
                        loyalty=args.loyalty,
                        hour=args.hour,
                        day_of_week=args.day_of_week,
                        past_purchases=_split(args.past_purchases) or [],
                        categories=_split(args.categories) or [],
                        k=args.k,
                        exclude_purchased=not args.keep_purchased,
                        exclude_in_cart=args.exclude_in_cart,
                        identity=args.identity,
                        shopper=args.shopper,
                        min_price=args.min_price,
                        max_price=args.max_price,
                    )
                )
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(reply), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
