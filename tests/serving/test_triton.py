"""End to end on the real Triton server: train tiny -> export -> serve -> query over gRPC and HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient

from intentrec.ids import id_time_ms
from intentrec.serving.bundle import add_items
from intentrec.serving.client import AsyncClient, Client, RecommendRequest, ServingError
from intentrec.serving.repository import ServingOptions, build, production, publish, validate_config
from intentrec.serving.server import TritonServer, free_port
from tests.conftest import REPO_ROOT
from tests.serving.conftest import triton_for

pytestmark = pytest.mark.triton

T0 = 1_772_000_000_000  # a Wednesday, 06:13 UTC


BANNERS = REPO_ROOT / "conf" / "banners" / "synthetic.yaml"


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """Every model: recommend, similar_items, intent (the bundle has intent heads) and banners."""
    with triton_for(bundle, tmp_path_factory.mktemp("triton"), ServingOptions(banners=str(BANNERS))) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with Client(server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def catalogue(bundle):
    from intentrec.serving.bundle import load_bundle

    b = load_bundle(bundle)
    ids, categories, counts = b.items["item_id"].astype(str), b.items["category"].astype(str), b.items["train_count"]
    order = np.argsort(-counts, kind="stable")
    by_category = {}
    for i in order:
        by_category.setdefault(categories[i], []).append(ids[i])
    return {"category_of": dict(zip(ids, categories)), "top": by_category}


def session(items, start=T0, step_s=40):
    return {"item_ids": items, "timestamps": [start + i * step_s * 1000 for i in range(len(items))]}


def test_every_generated_config_is_valid_against_tritons_schema(bundle, tmp_path):
    build(bundle, tmp_path / "cpu")
    production(bundle, tmp_path / "gpu")
    configs = sorted((tmp_path).glob("*/*/config.pbtxt"))
    assert len(configs) == 3 + 5  # recommend, similar_items, intent (+ query_encoder, ranker on the GPU)
    for path in configs:
        config = validate_config(path)
        assert config.max_batch_size == 64 and config.dynamic_batching is not None
    gpu = {p.parent.name: validate_config(p) for p in (tmp_path / "gpu").glob("*/config.pbtxt")}
    assert gpu["query_encoder"].backend == "onnxruntime" and gpu["ranker"].backend == "onnxruntime"
    assert gpu["query_encoder"].instance_group[0].kind == gpu["query_encoder"].instance_group[0].KIND_GPU
    inputs = {i.name: i for i in gpu["query_encoder"].input}
    assert list(inputs["step_items"].dims) == [-1, 32] and inputs["device_type"].HasField("reshape")
    assert gpu["recommend"].parameters["pipeline"].string_value == "bls"
    assert [o.name for o in gpu["query_encoder"].output] == ["query", "intent_binary", "intent_category"]
    assert {i.name for i in gpu["intent"].input} == {i.name for i in gpu["recommend"].input}
    (tmp_path / "bad.pbtxt").write_text('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(Exception, match=r"bad\.pbtxt: not a valid Triton model configuration"):
        validate_config(tmp_path / "bad.pbtxt")


def test_serving_options_come_from_the_config_file_with_flags_on_top(tmp_path):
    from types import SimpleNamespace

    from intentrec.errors import ConfigError
    from intentrec.serving.repository import serving_options

    defaults = serving_options(REPO_ROOT / "conf" / "serving.yaml")
    assert (defaults.instances, defaults.kind, defaults.max_queue_delay_us) == (1, "KIND_CPU", 0)
    flags = SimpleNamespace(instances=2, kind=None, max_batch_size=None, max_queue_delay_us=None, threads=None)
    assert serving_options(REPO_ROOT / "conf" / "serving.yaml", flags).instances == 2
    (tmp_path / "bad.yaml").write_text("instances: 1\nworkers: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown keys \['workers'\]"):
        serving_options(tmp_path / "bad.yaml")
    (tmp_path / "zero.yaml").write_text("instances: 0\n")
    with pytest.raises(ConfigError, match=r"instances=0; expected an integer of at least 1"):
        serving_options(tmp_path / "zero.yaml")
    assert (defaults.complement_slots, defaults.complement_window_hours) == (2, 24.0)
    (tmp_path / "negative.yaml").write_text("complement_slots: -1\n")
    with pytest.raises(ConfigError, match=r"complement_slots=-1, complement_window_hours=24.0; expected 0 or more"):
        serving_options(tmp_path / "negative.yaml")


def test_server_listens_on_loopback_only(server):
    listening = [
        c.laddr
        for c in psutil.Process(server.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert {server.http_port, server.grpc_port} <= {a.port for a in listening}
    assert {a.ip.removeprefix("::ffff:") for a in listening} == {"127.0.0.1"}  # gRPC may use the IPv4-mapped form


def test_an_intent_shift_moves_the_recommendations_to_the_new_category(client, catalogue, shop_truth):
    moved, shares = 0, []
    pairs = [(a, shop_truth["complements"][a][0]) for a in sorted(shop_truth["complements"])[:10]]
    for old, new in pairs:
        items = catalogue["top"][old][:4] + catalogue["top"][new][:2]
        reply = client.recommend(RecommendRequest(**session(items), now=T0 + 300_000, k=10))
        categories = [catalogue["category_of"][i] for i in reply.item_ids]
        moved += categories.count(new) > categories.count(old)
        shares.append(categories.count(new) / 10)
    # The last events, not the session's majority (4 of 6 views), decide.
    assert moved >= 8 and np.mean(shares) >= 0.5, (moved, shares)


def test_intent_signals_follow_the_session_in_recommend_and_in_the_intent_model(client, catalogue, shop_truth):
    """The next-category intent follows an intent shift, and the `intent` model answers what `recommend` carries."""
    followed = 0
    pairs = [(a, shop_truth["complements"][a][0]) for a in sorted(shop_truth["complements"])[:10]]
    for old, new in pairs:
        request = RecommendRequest(**session(catalogue["top"][old][:4] + catalogue["top"][new][:2]), now=T0 + 300_000)
        listed, alone = client.recommend(request), client.intent(request)
        assert alone.item_ids == [] and alone.error is None and alone.model_version == listed.model_version
        assert alone.intent == listed.intent, (alone.intent, listed.intent)
        signals = listed.intent
        assert {"purchase", "exit", "abandon", "next_category"} <= set(signals)
        assert all(0 <= signals[head] <= 1 for head in ("purchase", "exit", "abandon"))
        top = signals["next_category"]
        assert len(top) == 3 and sum(c["p"] for c in top) <= 1 + 1e-6 and top[0]["p"] >= top[1]["p"]
        followed += top[0]["category"] == new
    assert followed >= 7, followed
    # A row the model cannot read answers without signals, saying why; a malformed request is refused clearly.
    unknown = client.intent(RecommendRequest(item_ids=["never-sold"]))
    assert unknown.intent is None and "no known event" in unknown.info["fallback"]
    with pytest.raises(ServingError, match="timestamps") as caught:
        client.intent(RecommendRequest(item_ids=["a", "b"], timestamps=[T0, -1]))
    assert caught.value.code == "INVALID_ARGUMENT"


def test_the_banners_model_answers_as_in_process(client, bundle, catalogue, shop_truth):
    from intentrec.serving.recommender import Recommender

    recommender = Recommender(bundle, banners=BANNERS)
    old = sorted(shop_truth["complements"])[0]
    new = shop_truth["complements"][old][0]
    request = RecommendRequest(**session(catalogue["top"][old][:4] + catalogue["top"][new][:2]), now=T0 + 300_000)
    expected = recommender.banners([request])[0]
    reply = client.banners(request)
    assert reply.item_ids == expected.item_ids and reply.info["banners"] == expected.info["banners"]
    assert np.allclose(reply.scores, expected.scores, atol=1e-4) and len(reply.item_ids) == 10


def test_device_context_changes_the_ranking_as_the_shop_says(client, catalogue, shop_truth):
    boosts = shop_truth["context_boosts"]["device_type"]
    share = {}
    for device in ("desktop", "mobile"):
        shares = []
        for category in sorted(catalogue["top"]):
            # A shopper returning after two days: the next session's intent is open, context matters most.
            request = RecommendRequest(
                **session(catalogue["top"][category][:3]), now=T0 + 2 * 86_400_000, device_type=device, k=20
            )
            categories = [catalogue["category_of"][i] for i in client.recommend(request).item_ids]
            shares.append({d: np.mean([c in boosts[d] for c in categories]) for d in ("desktop", "mobile")})
        share[device] = {d: float(np.mean([s[d] for s in shares])) for d in ("desktop", "mobile")}
    print(share)
    assert share["mobile"]["mobile"] > share["desktop"]["mobile"]
    assert share["desktop"]["desktop"] > share["mobile"]["desktop"]


def test_business_rules_purchases_cart_and_category_filter(client, catalogue):
    shoes = catalogue["top"]["shoes"]
    events = {
        "item_ids": shoes[:4],
        "event_types": ["view", "purchase", "add_to_cart", "view"],
        "timestamps": [T0 + i * 30_000 for i in range(4)],
    }
    bought, carted = shoes[1], shoes[2]
    default = client.recommend(RecommendRequest(**events, past_purchases=[shoes[5]], now=T0 + 200_000, k=50))
    assert bought not in default.item_ids and shoes[5] not in default.item_ids
    assert carted in default.item_ids  # cart items are kept unless asked
    no_cart = client.recommend(RecommendRequest(**events, exclude_in_cart=True, now=T0 + 200_000, k=50))
    assert carted not in no_cart.item_ids
    keep = client.recommend(RecommendRequest(**events, exclude_purchased=False, now=T0 + 200_000, k=50))
    assert bought in keep.item_ids
    filtered = client.recommend(RecommendRequest(**events, categories=["bags", "watches"], now=T0 + 200_000, k=20))
    assert len(filtered.item_ids) == 20
    assert {catalogue["category_of"][i] for i in filtered.item_ids} <= {"bags", "watches"}


def test_bad_requests_get_clear_errors_or_documented_fallbacks(client, server, catalogue):
    shoes = catalogue["top"]["shoes"]
    with pytest.raises(ServingError, match=r"k=0; expected an integer from 1 to 100"):
        client.recommend(RecommendRequest(item_ids=shoes[:2], k=0))
    with pytest.raises(ServingError, match=r"k=101; expected an integer from 1 to 100"):
        client.recommend(RecommendRequest(item_ids=shoes[:2], k=101))
    with pytest.raises(ServingError, match=r"hour=24; expected 0-23"):
        client.recommend(RecommendRequest(item_ids=shoes[:2], hour=24))
    with pytest.raises(ServingError, match=r"event_types\[1\]='clicked' is not an event type; expected one of"):
        client.recommend(RecommendRequest(item_ids=shoes[:2], event_types=["view", "clicked"]))
    with pytest.raises(ServingError, match=r"categories=\['spaceships'\] not in the catalogue"):
        client.recommend(RecommendRequest(item_ids=shoes[:2], categories=["spaceships"]))
    # Unknown ids are ignored and counted; unknown context values fall back to "unknown" and are listed.
    reply = client.recommend(RecommendRequest(item_ids=["nope-1", *shoes[:2], "nope-2"], device_type="fridge", k=5))
    assert reply.info["unknown_items"] == 2 and reply.info["unknown_context"] == ["device_type='fridge'"]
    assert len(reply.item_ids) == 5 and reply.info["fallback"] is None
    # Every answered list is named, with the model version that made it (no experiment configured here).
    assert (
        id_time_ms(reply.recommendation_id) is not None and reply.info["recommendation_id"] == reply.recommendation_id
    )
    assert reply.model_version == "1" and reply.experiment is None and reply.arm is None
    # The model reports its own time per stage of the execute call that answered.
    timing = reply.info["server_ms"]
    stages = ("parse", "decode", "encode", "retrieve", "rank", "rules")
    assert timing["rows"] >= 1 and all(timing[s] >= 0 for s in stages)
    assert timing["total"] >= sum(timing[s] for s in stages) - 0.01
    # No known event: the most popular items, within the rules.
    empty = client.recommend(RecommendRequest(item_ids=["nope"], k=5))
    assert empty.info["fallback"] == "popularity" and len(empty.item_ids) == 5
    # Longer than the model's window: the most recent events are kept.
    long = [shoes[i % 10] for i in range(70)]
    reply = client.recommend(RecommendRequest(**session(long), now=T0 + 3_000_000, k=5))
    assert reply.info["truncated"] == 70 - 20
    # Wrong dtype and shape never reach the model: Triton refuses them by the config.
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    wrong = grpcclient.InferInput("item_ids", [1, 2], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 2), np.float32))
    with pytest.raises(Exception, match=r"(?i)data-type|datatype|unexpected datatype"):
        raw.infer("recommend", [wrong])
    k = grpcclient.InferInput("k", [1, 2], "INT64")
    k.set_data_from_numpy(np.ones((1, 2), np.int64))
    ids = grpcclient.InferInput("item_ids", [1, 1], "BYTES")
    ids.set_data_from_numpy(np.asarray([[shoes[0].encode()]], dtype=object))
    with pytest.raises(Exception, match=r"(?i)shape"):
        raw.infer("recommend", [ids, k])


def test_after_a_hundred_malformed_requests_the_server_still_answers(client, server, catalogue):
    raw = grpcclient.InferenceServerClient(server.grpc_url)
    bad = []
    for i in range(100):
        kind = i % 4
        if kind == 0:
            t = grpcclient.InferInput("item_ids", [1, 3], "INT64")
            t.set_data_from_numpy(np.arange(3, dtype=np.int64)[None])
            bad.append([t])
        elif kind == 1:
            t = grpcclient.InferInput("timestamps", [1, 2], "INT64")
            t.set_data_from_numpy(np.zeros((1, 2), np.int64))
            bad.append([t])  # item_ids missing
        elif kind == 2:
            ids = grpcclient.InferInput("item_ids", [1, 2], "BYTES")
            ids.set_data_from_numpy(np.asarray([[b"a", b"b"]], dtype=object))
            ts = grpcclient.InferInput("timestamps", [1, 3], "INT64")
            ts.set_data_from_numpy(np.zeros((1, 3), np.int64))
            bad.append([ids, ts])  # shapes disagree
        else:
            ids = grpcclient.InferInput("item_ids", [1, 1], "BYTES")
            ids.set_data_from_numpy(np.asarray([[b"\xff\xfe"]], dtype=object))
            hour = grpcclient.InferInput("hour", [1, 1], "INT64")
            hour.set_data_from_numpy(np.asarray([[99]], np.int64))
            bad.append([ids, hour])
    failures = 0
    for inputs in bad:
        try:
            raw.infer("recommend", inputs)
        except Exception:
            failures += 1
    assert failures == 100
    reply = client.recommend(RecommendRequest(item_ids=catalogue["top"]["shoes"][:3], k=10))
    assert len(reply.item_ids) == 10 and server.process.poll() is None


def test_http_grpc_and_async_clients_agree(server, catalogue):
    request = RecommendRequest(**session(catalogue["top"]["bags"][:3]), now=T0 + 500_000, device_type="mobile", k=10)
    with Client(server.grpc_url) as grpc_client, Client(server.http_url, "http") as http_client:
        by_grpc = grpc_client.recommend(request)
        by_http = http_client.recommend(request)
        batch = grpc_client.recommend([request, RecommendRequest(item_ids=catalogue["top"]["toys"][:2], k=3)])
        similar = grpc_client.similar_items([catalogue["top"]["bags"][0]], k=5)

    async def run_async():
        async with AsyncClient(server.grpc_url) as a, AsyncClient(server.http_url, "http") as b:
            return await asyncio.gather(
                a.recommend(request), b.recommend(request), a.similar_items([catalogue["top"]["bags"][0]], 5)
            )

    by_async_grpc, by_async_http, similar_async = asyncio.run(run_async())
    for reply in (by_http, by_async_grpc, by_async_http, batch[0]):
        assert reply.item_ids == by_grpc.item_ids
        np.testing.assert_allclose(reply.scores, by_grpc.scores, rtol=1e-5)
    assert len(batch[1].item_ids) == 3
    assert similar.item_ids == similar_async.item_ids and catalogue["top"]["bags"][0] not in similar.item_ids


def test_command_line_client(server, catalogue):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.client",
            "recommend",
            "--url",
            server.grpc_url,
            "--items",
            ",".join(catalogue["top"]["shoes"][:2]),
            "--k",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["item_ids"]) == 3
    out = subprocess.run(
        [sys.executable, "-m", "serving.client", "recommend", "--url", server.grpc_url, "--items", "x", "--k", "0"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert out.returncode == 2 and "k=0; expected an integer from 1 to 100" in out.stderr


LIGHT_CLIENT = """
import importlib.abc, json, sys

HEAVY = {"pandas", "pyarrow", "torch", "omegaconf", "hydra", "faiss", "onnx", "onnxruntime", "scipy",
         "pytorch_lightning", "lightning", "fastapi", "redis"}

class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"{name} is made unimportable for this check")

sys.meta_path.insert(0, Unimportable())
from intentrec.serving.client import Client, RecommendRequest, ServingError

url, items = sys.argv[1], sys.argv[2].split(",")
with Client(url) as client:
    answer = client.recommend(RecommendRequest(item_ids=items, event_types=["view", "add_to_cart"], quantities=[1, 2], k=4))
    try:
        client.recommend(RecommendRequest(item_ids=items, k=0))
        refused = ""
    except ServingError as error:
        refused = str(error)
third_party = sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names))
print(json.dumps({"item_ids": answer.item_ids, "refused": refused, "third_party": third_party}))
"""
# What tritonclient itself loads (gRPC, protobuf, its JSON and dtype helpers) beside numpy and intentrec.
# Private helpers (a leading underscore: Cython's runtime, setuptools' hook, the editable finder) aside.
CLIENT_MODULES = {"intentrec", "numpy", "tritonclient", "grpc", "google", "rapidjson", "ml_dtypes", "packaging",
                  "typing_extensions", "cython_runtime"}  # fmt: skip


def test_the_client_runs_with_pandas_pyarrow_torch_and_omegaconf_unimportable(server, catalogue):
    out = subprocess.run(
        [sys.executable, "-c", LIGHT_CLIENT, server.grpc_url, ",".join(catalogue["top"]["shoes"][:2])],
        capture_output=True, text=True, cwd="/", timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    reply = json.loads(out.stdout)
    assert len(reply["item_ids"]) == 4
    assert "k=0; expected an integer from 1 to 100" in reply["refused"]
    extra = {m for m in reply["third_party"] if not m.startswith("_")} - CLIENT_MODULES
    assert not extra, f"serving.client loaded {sorted(extra)}"


def test_a_new_version_loads_under_load_without_a_failed_request(bundle, catalogue, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    repository = build(bundle, tmp_path / "repository")
    pq.write_table(
        pa.table({"item_id": ["hot-1"], "category_id": ["shoes"], "price": [20.0]}), tmp_path / "new.parquet"
    )
    add_items(bundle, tmp_path / "new.parquet", tmp_path / "v2")
    request = RecommendRequest(**session(catalogue["top"]["shoes"][:3]), now=T0 + 200_000, k=10)
    with TritonServer(
        repository, None, None, None, log_file=tmp_path / "server.log", backend_root=tmp_path / "b"
    ) as server:
        stop, seen, errors, count = threading.Event(), set(), [], [0]

        def load():
            with Client(server.grpc_url) as c:
                deadline = time.monotonic() + 90
                while not stop.is_set() and count[0] < 5000 and time.monotonic() < deadline:
                    try:
                        seen.add(c.recommend(request).info["model_version"])
                    except Exception as error:  # noqa: BLE001 - every failure counts
                        errors.append(repr(error))
                    count[0] += 1

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        version = publish(tmp_path / "v2", repository, server.grpc_url)
        deadline = time.monotonic() + 60
        while "2" not in seen and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        with Client(server.grpc_url) as c:
            assert c.similar_items(["hot-1"], 3).info["unknown_items"] == 0  # version 2 knows the new item
    assert version == 2 and errors == [] and seen == {"1", "2"} and count[0] > 20, (errors[:3], seen, count)


def test_the_server_command_stops_cleanly_on_sigterm(bundle, tmp_path):
    """The documented interface: export leaves <out>/model_repository; the server takes key=value arguments."""
    repository = bundle / "model_repository"
    assert sorted(p.name for p in repository.iterdir()) == ["intent", "recommend", "similar_items"]
    ports = [str(free_port()) for _ in range(3)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.server",
            f"model_repository={repository}",
            f"http_port={ports[0]}",
            f"grpc_port={ports[1]}",
            f"metrics_port={ports[2]}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    line = process.stdout.readline()
    assert "serving" in line and f"127.0.0.1:{ports[0]}" in line, (
        line,
        process.stderr.read() if process.poll() is not None else "",
    )
    with Client(f"127.0.0.1:{ports[1]}") as c:
        assert c.ready()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert "stopped" in process.stdout.read()
    with Client(f"127.0.0.1:{ports[1]}", timeout_s=2) as c:
        assert not c.ready()


def test_the_server_command_names_an_unknown_key():
    result = subprocess.run(
        [sys.executable, "-m", "serving.server", "model_repo=/tmp/x"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "model_repo=/tmp/x" in result.stderr and "model_repository" in result.stderr
