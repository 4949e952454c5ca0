"""The Triton python-backend models `recommend` and `similar_items` (one Python hop per batch).

Each model version folder holds `model.py` (which imports the classes below) and `bundle/` (the
export bundle of that version). Requests Triton batches together are answered with one ONNX call
and one FAISS search; a request that fails validation gets its own error response and the others
in the batch are answered normally. Nothing a client sends can raise out of `execute`.

Inputs of `recommend` (first dimension: rows of the request, each row one shopper; "" pads ids):
  item_ids BYTES [-1], event_types BYTES [-1] (optional, default view), timestamps INT64 [-1]
  (optional, ms), channels, session_ids BYTES [-1] (optional); now INT64 [1]; device_type, referrer, region,
  loyalty BYTES [1]; hour, day_of_week INT32 [1]; past_purchases BYTES [-1]; k INT32 [1];
  exclude_purchased, exclude_in_cart BOOL [1]; categories BYTES [-1]; identity BYTES [1] (a shopper
  whose stored profile is read when the repository has a profile store); min_price, max_price FP32 [1] (all optional except item_ids).
Outputs: item_ids BYTES [-1], scores FP32 [-1] (rows padded with "" / NaN to the longest), info BYTES [1] (JSON).
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

import numpy as np

try:  # only inside the Triton python backend
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - imported outside Triton for documentation and tests
    pb_utils = None

from serving.recommender import Query, Recommender, RequestError

SEQUENCE_INPUTS = ("item_ids", "event_types", "timestamps", "channels", "session_ids")
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
    "min_price": float,
    "max_price": float,
}
LIST_INPUTS = ("past_purchases", "categories")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


OUTPUT_OF = {"query_encoder": "query", "ranker": "logits"}


def _bls(model: str, feed: dict) -> np.ndarray:
    """Run `model` (an onnxruntime-backend model of the same repository) through Triton BLS.

    Used by the production repository (`pipeline: bls`); generated and validated here, but not
    executed on this machine: the pytriton wheel has no onnxruntime backend and there is no GPU.
    """
    inputs = [
        pb_utils.Tensor(name, value.reshape(-1, 1) if value.ndim == 1 else np.ascontiguousarray(value))
        for name, value in feed.items()
    ]
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=[OUTPUT_OF[model]], inputs=inputs)
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return pb_utils.get_output_tensor_by_name(response, OUTPUT_OF[model]).as_numpy()


class _Base:
    timing_stages = False

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        bundle = Path(args["model_repository"]) / args["model_version"] / "bundle"
        kind = args.get("model_instance_kind", "CPU")
        self.recommender = Recommender(
            bundle,
            threads=int(params.get("threads", "1")),
            use_gpu=kind == "GPU",
            verify=params.get("verify_bundle", "true") == "true",
            remote=_bls if params.get("pipeline", "inprocess") == "bls" else None,
            profile_store=params.get("profile_store") or None,
            complement_slots=int(params.get("complement_slots", "2")),
            complement_window_hours=float(params.get("complement_window_hours", "24")),
        )
        self.version = args["model_version"]

    @staticmethod
    def _inputs(request) -> dict[str, np.ndarray]:
        """Every input tensor of the request, read once (a lookup by name walks all inputs each time)."""
        return {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}

    def _respond(self, rows: list, server_ms: dict) -> object:
        """rows: Result per row (or RequestError) -> one response with padded outputs.

        Each row's info carries `server_ms`: the execute call's milliseconds reading the requests
        (`parse`) and in each pipeline stage, and the rows it answered together (`rows`)."""
        errors = [r for r in rows if isinstance(r, RequestError)]
        if errors:
            message = "; ".join(f"row {i}: {r}" for i, r in enumerate(rows) if isinstance(r, RequestError))
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
        width = max([len(r.item_ids) for r in rows] + [1])
        ids = np.full((len(rows), width), b"", dtype=object)
        scores = np.full((len(rows), width), np.nan, dtype=np.float32)
        for i, r in enumerate(rows):
            ids[i, : len(r.item_ids)] = [x.encode() for x in r.item_ids]
            scores[i, : len(r.scores)] = r.scores
        info = np.asarray(
            [[json.dumps({**r.info, "model_version": self.version, "server_ms": server_ms}).encode()] for r in rows],
            dtype=object,
        )
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("item_ids", ids),
                pb_utils.Tensor("scores", scores),
                pb_utils.Tensor("info", info),
            ]
        )

    def execute(self, requests):
        started = time.perf_counter()
        responses = []
        parsed = []
        for request in requests:
            try:
                parsed.append(self._parse(request))
            except RequestError as error:
                parsed.append(error)
            except Exception as error:  # a malformed request must not take the batch down
                parsed.append(RequestError(f"could not read the request: {type(error).__name__}: {error}"))
        flat = [row for p in parsed if not isinstance(p, RequestError) for row in p]
        parsed_at = time.perf_counter()
        try:
            answers = self._answer(flat) if flat else []
            server_ms = {"rows": len(flat), "parse": round((parsed_at - started) * 1000, 3)}
            server_ms.update(self.recommender.timing if self.timing_stages else {})
            server_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
        except Exception:  # a bug: report it to every caller of the batch, keep serving
            message = "internal error: " + traceback.format_exc(limit=3)
            return [
                pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)) for _ in requests
            ]
        cursor = 0
        for p in parsed:
            if isinstance(p, RequestError):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(p))))
                continue
            responses.append(self._respond(answers[cursor : cursor + len(p)], server_ms))
            cursor += len(p)
        return responses

    def finalize(self):
        self.recommender = None


class RecommendModel(_Base):
    timing_stages = True  # recommend() records its stages in Recommender.timing

    def _parse(self, request) -> list[Query]:
        inputs = self._inputs(request)
        ids = inputs.get("item_ids")
        if ids is None or ids.ndim != 2:
            raise RequestError("item_ids must be a BYTES tensor of shape [rows, events].")
        rows = ids.shape[0]
        sequences = {name: inputs.get(name) for name in SEQUENCE_INPUTS}
        for name, value in sequences.items():
            if value is not None and value.shape != ids.shape:
                raise RequestError(f"{name} has shape {list(value.shape)}; expected {list(ids.shape)} like item_ids.")
        scalars = {name: inputs.get(name) for name in SCALAR_INPUTS}
        lists = {name: inputs.get(name) for name in LIST_INPUTS}
        for name, value in scalars.items():
            if value is not None and value.shape[0] != rows:
                raise RequestError(f"{name} has {value.shape[0]} rows; item_ids has {rows}.")
        queries = []
        for row in range(rows):
            present = [j for j in range(ids.shape[1]) if _text(ids[row, j]) != ""]
            q = Query(item_ids=[_text(ids[row, j]) for j in present])
            if sequences["event_types"] is not None:
                q.event_types = [_text(sequences["event_types"][row, j]) for j in present]
            if sequences["timestamps"] is not None:
                stamps = [int(sequences["timestamps"][row, j]) for j in present]
                q.timestamps = stamps if any(t >= 0 for t in stamps) else None  # all -1: none for this row
            if sequences["channels"] is not None:
                q.channels = [_text(sequences["channels"][row, j]) for j in present]
            if sequences["session_ids"] is not None:
                q.session_ids = [_text(sequences["session_ids"][row, j]) for j in present]
            for name, kind in SCALAR_INPUTS.items():
                value = scalars[name]
                if value is None:
                    continue
                item = value[row].reshape(-1)[0]
                if kind is str:
                    setattr(q, name, _text(item) or None)
                elif name in ("now", "hour", "day_of_week") and int(item) < 0:
                    continue  # -1: not given for this row (the default applies)
                elif kind is float and np.isnan(item):
                    continue  # NaN: no bound for this row
                else:
                    setattr(q, name, kind(item))
            for name in LIST_INPUTS:
                value = lists[name]
                if value is not None:
                    setattr(q, name, [_text(x) for x in value[row].reshape(-1) if _text(x) != ""])
            queries.append(q)
        return queries

    def _answer(self, queries):
        return self.recommender.recommend(queries)


class SimilarItemsModel(_Base):
    def _parse(self, request) -> list[tuple[list[str], int]]:
        inputs = self._inputs(request)
        ids = inputs.get("item_ids")
        if ids is None or ids.ndim != 2:
            raise RequestError("item_ids must be a BYTES tensor of shape [rows, items].")
        k = inputs.get("k")
        rows = []
        for row in range(ids.shape[0]):
            rows.append(
                ([_text(x) for x in ids[row] if _text(x) != ""], int(k[row].reshape(-1)[0]) if k is not None else 10)
            )
        return rows

    def _answer(self, rows):
        return self.recommender.similar([r[0] for r in rows], [r[1] for r in rows])
