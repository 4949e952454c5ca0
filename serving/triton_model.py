"""The Triton python-backend models `recommend`, `similar_items` and `intent` (one Python hop per batch).

Each model version folder holds `model.py` (which imports the classes below) and `bundle/` (the
export bundle of that version). Requests Triton batches together are answered with one ONNX call
and one FAISS search. Nothing a client sends can raise out of `execute`.

Inputs of `recommend` (first dimension: rows of the request, each row one shopper; "" pads ids):
  item_ids BYTES [-1], event_types BYTES [-1] (optional, default view), timestamps INT64 [-1]
  (optional, ms), channels, session_ids BYTES [-1] (optional); now INT64 [1]; device_type, referrer, region,
  loyalty BYTES [1]; hour, day_of_week INT64 [1]; past_purchases BYTES [-1]; k INT64 [1];
  exclude_purchased, exclude_in_cart BOOL [1]; categories BYTES [-1]; identity BYTES [1] (a shopper
  whose stored profile is read when the repository has a profile store); shopper BYTES [1] (the experiment
  unit of a request that sends its events); min_price, max_price FP32 [1] (all optional except item_ids).
Outputs: item_ids BYTES [-1], scores FP32 [-1] (rows padded with "" / NaN to the longest), info BYTES [1] (JSON:
the diagnostics of `Result.info` plus the list's `recommendation_id`, `model_version`, `experiment`, `arm`; with
intent heads, `intent`: the shopper's purchase, exit and abandonment propensity and next categories).
`intent` (served when the bundle has intent heads) takes the inputs of `recommend` and answers `info.intent` alone;
`banners` (served with a banner catalogue) takes them too and answers the banners ranked for the shopper.
Integers are INT64 so that no value a client sends (a JSON `k` of 4294967301) wraps into range.

Errors, per request and per row (the contract the client relies on):
- A request the model refuses (a value out of range, inputs whose shapes disagree, a row past a
  limit of `RequestLimits`) fails with Triton's INVALID_ARG: gRPC `INVALID_ARGUMENT`, HTTP 400. The
  message names the input, the value and what is expected; with several rows each refused row is
  named (`row 2: k=0; ...`). Resending it unchanged can never succeed.
- In a request of several rows where only some rows are refused, the good rows are answered and a
  refused row comes back empty (ids "", scores NaN) with `info = {"error": "<message>"}`.
- A service the request needs being down (the profile store, for a request naming a shopper) is
  UNAVAILABLE: gRPC `UNAVAILABLE`, HTTP 503; the same request may succeed later. Rows of the same
  request that do not need it are answered.
- A fault of the server (a bug, a broken bundle) is INTERNAL: gRPC `INTERNAL`, HTTP 500.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

try:  # only inside the Triton python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton for documentation and tests
    pb_utils = None

from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query, RequestError, RequestLimits, Unavailable

SEQUENCE_INPUTS = ("item_ids", "event_types", "timestamps", "channels", "session_ids", "quantities")
NUMERIC_SEQUENCES = ("timestamps", "quantities")
SCALAR_INPUTS = {
    "now": int,
    "device_type": str,
    "referrer": str,
    "region": str,
    "loyalty": str,
    "hour": int,
    "day_of_week": int,
    "k": int,
    "exclude_purchased": bool,
    "exclude_in_cart": bool,
    "identity": str,
    "shopper": str,
    "min_price": float,
    "max_price": float,
}
LIST_INPUTS = ("past_purchases", "categories")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


OUTPUT_OF = {"query_encoder": "query", "ranker": "logits"}


def _bls(model: str, feed: dict, outputs: list[str] | None = None):
    """Run `model` (an onnxruntime-backend model of the same repository) through Triton BLS: its output, or
    the list of the named `outputs`.

    Used by the production repository (`pipeline: bls`); generated and validated here, but not
    executed on this machine: the pytriton wheel has no onnxruntime backend and there is no GPU.
    """
    inputs = [
        pb_utils.Tensor(name, value.reshape(-1, 1) if value.ndim == 1 else np.ascontiguousarray(value))
        for name, value in feed.items()
    ]
    names = list(outputs) if outputs else [OUTPUT_OF[model]]
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=names, inputs=inputs)
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    values = [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in names]
    return values if outputs else values[0]


def _refused(message: str):
    """The error a client caused: INVALID_ARG (gRPC INVALID_ARGUMENT, HTTP 400)."""
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)


def _unavailable(message: str):
    """A service the request needs is down: UNAVAILABLE (gRPC UNAVAILABLE, HTTP 503); a retry may succeed."""
    return pb_utils.TritonError(message, pb_utils.TritonError.UNAVAILABLE)


def _fault(message: str):
    """A fault of the server: INTERNAL (gRPC INTERNAL, HTTP 500)."""
    return pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)


def _texts(values: np.ndarray) -> list[list[str]]:
    """A (rows, n) BYTES tensor as lists of str (invalid UTF-8 replaced, not an error)."""
    return [[_text(x) for x in row] for row in values.tolist()]


class _Base:
    timing_stages = False
    retrieval = True  # whether the model loads the index and ranker (the intent model does not)

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        bundle = Path(args["model_repository"]) / args["model_version"] / "bundle"
        experiment = None
        if params.get("experiment"):
            from intentrec.serving.experiments import Experiment

            experiment = Experiment.from_dict(json.loads(params["experiment"]), "parameter experiment")
        arm_bundles = {
            version: Path(args["model_repository"]) / version / "bundle"
            for version in (experiment.versions() if experiment else ())
            if (Path(args["model_repository"]) / version / "bundle").is_dir()
        }
        kind = args.get("model_instance_kind", "CPU")
        limits = RequestLimits(
            **{name: int(params.get(name, getattr(RequestLimits, name))) for name in RequestLimits.__dataclass_fields__}
        )
        self.recommender = Recommender(
            bundle,
            threads=int(params.get("threads", "1")),
            use_gpu=kind == "GPU",
            verify=params.get("verify_bundle", "true") == "true",
            remote=_bls if params.get("pipeline", "inprocess") == "bls" else None,
            profile_store=params.get("profile_store") or None,
            complement_slots=int(params.get("complement_slots", "2")),
            complement_window_hours=float(params.get("complement_window_hours", "24")),
            limits=limits,
            model_version=args["model_version"],
            experiment=experiment if self.retrieval else None,
            arm_bundles=arm_bundles if self.retrieval else {},
            retrieval=self.retrieval,
            banners=json.loads(params["banners"]) if params.get("banners") else None,
        )

    @staticmethod
    def _inputs(request) -> dict[str, np.ndarray]:
        """Every input tensor of the request, read once (a lookup by name walks all inputs each time)."""
        return {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}

    def _respond(self, rows: list, server_ms: dict) -> object:
        """rows: Result per row (or RequestError) -> one response with padded outputs.

        Every row refused: the request fails (INVALID_ARG). Some rows refused: those rows are empty and
        their info is `{"error": ...}`. Each answered row's info carries `server_ms`: the execute call's
        milliseconds reading the requests (`parse`) and in each pipeline stage, and the rows it answered
        together (`rows`)."""
        if all(isinstance(r, RequestError) for r in rows):
            message = str(rows[0]) if len(rows) == 1 else "; ".join(f"row {i}: {r}" for i, r in enumerate(rows))
            retry = all(isinstance(r, Unavailable) for r in rows)
            return pb_utils.InferenceResponse(output_tensors=[], error=(_unavailable if retry else _refused)(message))
        width = max([len(r.item_ids) for r in rows if not isinstance(r, RequestError)] + [1])
        ids = np.full((len(rows), width), b"", dtype=object)
        scores = np.full((len(rows), width), np.nan, dtype=np.float32)
        info = np.empty((len(rows), 1), dtype=object)
        for i, r in enumerate(rows):
            if isinstance(r, RequestError):
                retryable = isinstance(r, Unavailable)
                info[i, 0] = json.dumps(
                    {"error": str(r), "retryable": retryable, "model_version": self.recommender.model_version}
                ).encode()
                continue
            ids[i, : len(r.item_ids)] = [x.encode() for x in r.item_ids]
            scores[i, : len(r.scores)] = r.scores
            info[i, 0] = json.dumps({**r.info, **r.labels(), "server_ms": server_ms}).encode()
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("item_ids", ids),
                pb_utils.Tensor("scores", scores),
                pb_utils.Tensor("info", info),
            ]
        )

    def execute(self, requests):
        started = time.perf_counter()
        parsed = []  # per request: a list with a row (or a row's RequestError) per row, or the request's RequestError
        for request in requests:
            try:
                parsed.append(self._parse(request))
            except RequestError as error:
                parsed.append(error)
            except Exception as error:  # a malformed request must not take the batch down
                parsed.append(RequestError(f"could not read the request: {type(error).__name__}: {error}"))
        flat = [
            row for p in parsed if not isinstance(p, RequestError) for row in p if not isinstance(row, RequestError)
        ]
        parsed_at = time.perf_counter()
        try:
            answers = iter(self._answer(flat) if flat else [])
            server_ms = {"rows": len(flat), "parse": round((parsed_at - started) * 1000, 3)}
            server_ms.update(self.recommender.timing if self.timing_stages else {})
            server_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
        except Exception as error:  # a bug: report it to every caller of the batch, keep serving
            # The traceback (file paths, code) goes to the server's log only; the caller gets an id to quote.
            incident = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-{id(error) % 10_000:04d}"
            print(f"intentrec internal error {incident}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            message = f"internal error {incident} ({type(error).__name__}); the server's log has its traceback"
            return [pb_utils.InferenceResponse(output_tensors=[], error=_fault(message)) for _ in requests]
        responses = []
        for p in parsed:
            if isinstance(p, RequestError):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_refused(str(p))))
                continue
            rows = [row if isinstance(row, RequestError) else next(answers) for row in p]
            responses.append(self._respond(rows, server_ms))
        return responses

    def finalize(self):
        self.recommender = None


class RecommendModel(_Base):
    timing_stages = True  # recommend() records its stages in Recommender.timing

    def _parse(self, request) -> list[Query | RequestError]:
        """One Query per row, or the row's RequestError; a RequestError for the request as a whole.

        Sizes are checked on the tensors' shapes before any value is decoded, so an oversized request
        costs nothing to refuse."""
        inputs = self._inputs(request)
        ids = inputs.get("item_ids")
        if ids is None or ids.ndim != 2:
            raise RequestError("item_ids must be a BYTES tensor of shape [rows, events].")
        rows = ids.shape[0]
        self.recommender.limits.events(ids.shape[1])
        sequences = {name: inputs.get(name) for name in SEQUENCE_INPUTS}
        for name, value in sequences.items():
            if value is not None and value.shape != ids.shape:
                raise RequestError(f"{name} has shape {list(value.shape)}; expected {list(ids.shape)} like item_ids.")
        scalars = {name: inputs.get(name) for name in SCALAR_INPUTS}
        lists = {name: inputs.get(name) for name in LIST_INPUTS}
        for name, value in scalars.items():
            if value is not None and value.shape[0] != rows:
                raise RequestError(f"{name} has {value.shape[0]} rows; item_ids has {rows}.")
        for name, value in lists.items():
            if value is not None:
                if value.shape[0] != rows:
                    raise RequestError(f"{name} has {value.shape[0]} rows; item_ids has {rows}.")
                self.recommender.limits.items(name, value.reshape(rows, -1).shape[1])
        texts = {
            name: _texts(value)
            for name, value in sequences.items()
            if value is not None and name not in NUMERIC_SEQUENCES
        }
        stamps = sequences["timestamps"].tolist() if sequences["timestamps"] is not None else None
        if sequences["quantities"] is not None:
            texts["quantities"] = sequences["quantities"].tolist()
        queries = []
        for row in range(rows):
            try:
                queries.append(self._row(row, texts, stamps, scalars, lists))
            except RequestError as error:
                queries.append(error)
        return queries

    def _row(self, row: int, texts: dict, stamps: list | None, scalars: dict, lists: dict) -> Query:
        item_row = texts["item_ids"][row]
        present = [j for j, x in enumerate(item_row) if x != ""]
        pick = (
            (lambda values: values) if len(present) == len(item_row) else (lambda values: [values[j] for j in present])
        )
        q = Query(item_ids=pick(item_row))
        for name in ("event_types", "channels", "session_ids", "quantities"):
            if name in texts:
                setattr(q, name, pick(texts[name][row]))
        if stamps is not None:
            given = pick(stamps[row])
            if any(t >= 0 for t in given):  # all -1: no times for this row
                if any(t < 0 for t in given):
                    at = next(j for j, t in enumerate(given) if t < 0)
                    raise RequestError(
                        f"timestamps[{at}]={given[at]} but other events of the row have times; send a time for "
                        "every event of the row, or -1 for all of them."
                    )
                q.timestamps = given
        for name, kind in SCALAR_INPUTS.items():
            value = scalars[name]
            if value is None:
                continue
            item = value[row].reshape(-1)[0]
            if kind is str:
                setattr(q, name, _text(item) or None)
            elif name in ("now", "hour", "day_of_week") and int(item) == -1:
                continue  # -1: not given for this row (the default applies); other values are checked
            elif kind is float and np.isnan(item):
                continue  # NaN: no bound for this row
            else:
                setattr(q, name, kind(item))
        for name in LIST_INPUTS:
            value = lists[name]
            if value is not None:
                setattr(q, name, [t for t in (_text(x) for x in value[row].reshape(-1)) if t != ""])
        return q

    def _answer(self, queries):
        return self.recommender.recommend(queries)


class IntentModel(RecommendModel):
    """`intent`: the same inputs as `recommend`, answered with the intent signals alone (no retrieval): each
    row's `info` holds `intent` (serving.intent), `item_ids` and `scores` are empty."""

    timing_stages = False
    retrieval = False

    def _answer(self, queries):
        return self.recommender.intent(queries)


class BannersModel(RecommendModel):
    """`banners`: the same inputs as `recommend`; `item_ids` are the banner ids best first (`k` of them),
    `scores` their scores, `info.banners` their titles (serving.banners)."""

    timing_stages = False

    def _answer(self, queries):
        return self.recommender.banners(queries)


class SimilarItemsModel(_Base):
    def _parse(self, request) -> list[tuple[list[str], int]]:
        inputs = self._inputs(request)
        ids = inputs.get("item_ids")
        if ids is None or ids.ndim != 2:
            raise RequestError("item_ids must be a BYTES tensor of shape [rows, items].")
        self.recommender.limits.items("item_ids", ids.shape[1])
        k = inputs.get("k")
        if k is not None and k.shape[0] != ids.shape[0]:
            raise RequestError(f"k has {k.shape[0]} rows; item_ids has {ids.shape[0]}.")
        return [
            ([x for x in row if x != ""], int(k[i].reshape(-1)[0]) if k is not None else 10)
            for i, row in enumerate(_texts(ids))
        ]

    def _answer(self, rows):
        return self.recommender.similar([r[0] for r in rows], [r[1] for r in rows])
