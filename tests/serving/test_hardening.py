"""The real Triton server as a hostile or careless client finds it: model control needs the key, every
client mistake is INVALID_ARGUMENT over gRPC and 400 over HTTP with a message naming the input, limits
hold, and a good request is answered after each bad one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from intentrec.serving.bundle import load_bundle
from intentrec.serving.client import TRITON_TYPES, Client, RecommendRequest, ServingError
from intentrec.serving.repository import PublishError, build, publish, versions
from intentrec.serving.server import TritonServer, free_port
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.triton

T0 = 1_772_000_000_000


@pytest.fixture(scope="module")
def items(bundle):
    b = load_bundle(bundle)
    ids, categories = b.items["item_id"].astype(str), b.items["category"].astype(str)
    return {"ids": list(ids[:50]), "bags": [i for i, c in zip(ids, categories) if c == "bags"]}


@pytest.fixture(scope="module")
def clients(server):
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    http = httpclient.InferenceServerClient(server.http_url)
    yield {"grpc": grpc, "http": http}
    grpc.close()
    http.close()


def tensors(protocol: str, arrays: dict[str, np.ndarray]) -> list:
    module = grpcclient if protocol == "grpc" else httpclient
    out = []
    for name, values in arrays.items():
        tensor = module.InferInput(name, list(values.shape), TRITON_TYPES[values.dtype])
        tensor.set_data_from_numpy(values)
        out.append(tensor)
    return out


def ids(*rows) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.asarray([[x.encode() for x in r] + [b""] * (width - len(r)) for r in rows], dtype=object)


def one(value, dtype) -> np.ndarray:
    return np.asarray([[value]], dtype=dtype)


def refused(client, protocol: str, model: str, arrays: dict) -> tuple[str, str]:
    """(status, message) of a request the server must refuse."""
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, tensors(protocol, arrays))
    return str(caught.value.status()), caught.value.message()


def answered(client, protocol: str, first_item: str) -> None:
    result = client.infer("recommend", tensors(protocol, {"item_ids": ids([first_item]), "k": one(5, np.int64)}))
    assert len([x for x in result.as_numpy("item_ids")[0] if x]) == 5


def bad_requests(items) -> list[tuple[str, str, dict, str]]:
    """(case, model, inputs, message pattern): every refusal of the models' own validation."""
    a, b = items["ids"][:2]
    two = ids([a, b])
    stamps = np.asarray([[T0, T0 + 1000]], np.int64)
    return [
        ("k zero", "recommend", {"item_ids": two, "k": one(0, np.int64)}, r"k=0; expected an integer from 1 to 100"),
        ("k too large", "recommend", {"item_ids": two, "k": one(101, np.int64)}, r"k=101; expected an integer"),
        ("k past int32", "recommend", {"item_ids": two, "k": one(2**32 + 5, np.int64)}, r"k=4294967301; expected"),
        ("hour 24", "recommend", {"item_ids": two, "hour": one(24, np.int64)}, r"hour=24; expected 0-23"),
        ("hour negative", "recommend", {"item_ids": two, "hour": one(-5, np.int64)}, r"hour=-5; expected 0-23"),
        ("day 8", "recommend", {"item_ids": two, "day_of_week": one(8, np.int64)}, r"day_of_week=8; expected 1"),
        (
            "unknown event type",
            "recommend",
            {"item_ids": two, "event_types": ids(["view", "clicked"])},
            r"event_types\[1\]='clicked' is not an event type; expected one of",
        ),
        (
            "unknown category",
            "recommend",
            {"item_ids": two, "categories": ids(["spaceships"])},
            r"categories=\['spaceships'\] not in the catalogue",
        ),
        (
            "timestamps misshaped",
            "recommend",
            {"item_ids": two, "timestamps": np.zeros((1, 3), np.int64)},
            r"timestamps has shape \[1, 3\]; expected \[1, 2\] like item_ids",
        ),
        (
            "rows disagree",
            "recommend",
            {"item_ids": two, "k": np.asarray([[3], [3]], np.int64)},
            r"input 'item_ids' batch size does not match other inputs",  # Triton's own check
        ),
        (
            "timestamps in seconds",
            "recommend",
            {"item_ids": two, "timestamps": stamps // 1000},
            r"timestamps\[0\]=1772000000; expected milliseconds since 1970 between .* multiplied by 1000",
        ),
        (
            "timestamp int64 max",
            "recommend",
            {"item_ids": two, "timestamps": np.asarray([[T0, 2**63 - 1]], np.int64)},
            r"timestamps\[1\]=9223372036854775807; expected milliseconds",
        ),
        ("now negative", "recommend", {"item_ids": two, "now": one(-7, np.int64)}, r"now=-7; expected milliseconds"),
        (
            "some times missing",
            "recommend",
            {"item_ids": two, "timestamps": np.asarray([[T0, -1]], np.int64)},
            r"timestamps\[1\]=-1 but other events of the row have times",
        ),
        (
            "too many events",
            "recommend",
            {"item_ids": ids([a] * 1001)},
            r"item_ids has 1001 events; the limit is max_events=1000 per request row",
        ),
        (
            "long context string",
            "recommend",
            {"item_ids": two, "device_type": one(b"x" * 1_000_000, object)},
            r"device_type is 1000000 characters long \('x{32}'\.\.\.\); the limit is max_string_bytes=256",
        ),
        (
            "long item id",
            "recommend",
            {"item_ids": ids(["y" * 300, a])},
            r"item_ids\[0\] is 300 characters long",
        ),
        (
            "too many categories",
            "recommend",
            {"item_ids": two, "categories": ids([f"c{i}" for i in range(101)])},
            r"categories has 101 entries; the limit is max_list_items=100",
        ),
        (
            "too many past purchases",
            "recommend",
            {"item_ids": two, "past_purchases": ids([f"p{i}" for i in range(101)])},
            r"past_purchases has 101 entries; the limit is max_list_items=100",
        ),
        (
            "price band reversed",
            "recommend",
            {"item_ids": two, "min_price": one(10, np.float32), "max_price": one(5, np.float32)},
            r"min_price=10.0 > max_price=5.0; expected min_price <= max_price",
        ),
        (
            "identity without a profile store",
            "recommend",
            {"item_ids": two, "identity": one(b"customer:c1", object)},
            r"identity given but this model has no profile store",
        ),
        (
            "identity of no known kind",
            "recommend",
            {"item_ids": two, "identity": one(b"planet:x", object)},
            r"identity='planet:x'; expected customer:<id>, device:<id>, session:<id>",
        ),
        ("item_ids missing", "recommend", {"k": one(3, np.int64)}, r"item_ids must be a BYTES tensor"),
        ("similar k zero", "similar_items", {"item_ids": ids([a]), "k": one(0, np.int64)}, r"k=0; expected"),
        (
            "similar too many items",
            "similar_items",
            {"item_ids": ids([a] * 101)},
            r"item_ids has 101 entries; the limit is max_list_items=100",
        ),
        (
            "similar long id",
            "similar_items",
            {"item_ids": ids(["z" * 257])},
            r"item_ids\[0\] is 257 characters long",
        ),
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_client_mistake_is_invalid_argument_with_its_message_and_the_server_keeps_answering(
    protocol, clients, items
):
    client = clients[protocol]
    expected_status = "StatusCode.INVALID_ARGUMENT" if protocol == "grpc" else "400"
    wrong = []
    for case, model, arrays, pattern in bad_requests(items):
        status, message = refused(client, protocol, model, arrays)
        if status != expected_status or not re.search(pattern, message) or len(message) > 600:
            wrong.append((case, status, message[:300]))
        answered(client, protocol, items["ids"][0])
    assert not wrong, wrong


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_wrong_datatype_is_refused_by_the_config_as_a_client_error(protocol, clients, items):
    expected = "StatusCode.INVALID_ARGUMENT" if protocol == "grpc" else "400"
    status, message = refused(clients[protocol], protocol, "recommend", {"item_ids": np.zeros((1, 2), np.float32)})
    assert status == expected and "item_ids" in message, (status, message)
    status, message = refused(
        clients[protocol], protocol, "recommend", {"item_ids": ids(items["ids"][:1]), "k": one(3, np.int32)}
    )
    assert status == expected and "INT64" in message, (status, message)
    answered(clients[protocol], protocol, items["ids"][0])


def test_a_json_k_beyond_int32_is_refused_with_its_value_not_wrapped(server, items):
    import urllib.error
    import urllib.request

    body = {
        "inputs": [
            {"name": "item_ids", "shape": [1, 1], "datatype": "BYTES", "data": [items["ids"][0]]},
            {"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [4294967301]},
        ]
    }
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/recommend/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    assert "k=4294967301; expected an integer from 1 to 100" in caught.value.read().decode()


def test_a_huge_request_is_refused_on_its_shape_and_a_good_request_is_answered_next(clients, items):
    client = clients["grpc"]
    arrays = {"item_ids": np.full((64, 10_000), items["ids"][0].encode(), dtype=object)}
    status, message = refused(client, "grpc", "recommend", arrays)
    assert status == "StatusCode.INVALID_ARGUMENT" and "item_ids has 10000 events" in message
    answered(client, "grpc", items["ids"][0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_one_bad_row_leaves_the_good_rows_of_a_batch_answered(protocol, server, items):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    a, b = items["ids"][:2]
    with Client(url, protocol) as client:
        good, bad, other = client.recommend(
            [RecommendRequest(item_ids=[a], k=5), RecommendRequest(item_ids=[b], k=0), RecommendRequest(item_ids=[b])]
        )
        assert good.error is None and len(good.item_ids) == 5
        assert other.error is None and len(other.item_ids) == 10
        assert bad.item_ids == [] and "k=0; expected an integer from 1 to 100" in bad.error
        with pytest.raises(ServingError) as caught:
            client.recommend([RecommendRequest(item_ids=[a], k=0), RecommendRequest(item_ids=[a], hour=24)])
        assert caught.value.code == "INVALID_ARGUMENT" and not caught.value.retryable
        assert "row 0: k=0; expected" in str(caught.value) and "row 1: hour=24; expected 0-23" in str(caught.value)


def test_repeated_filter_values_count_once_and_unknown_context_is_echoed_cut_short(server, items):
    with Client(server.grpc_url) as client:
        once = client.recommend(RecommendRequest(item_ids=items["ids"][:2], categories=["bags"], k=20))
        thrice = client.recommend(RecommendRequest(item_ids=items["ids"][:2], categories=["bags"] * 3, k=20))
        assert thrice.item_ids == once.item_ids and len(set(thrice.item_ids)) == 20
        assert set(thrice.item_ids) <= set(items["bags"])
        reply = client.recommend(RecommendRequest(item_ids=items["ids"][:2], device_type="f" * 200, k=3))
        assert reply.info["unknown_context"] == ["device_type='" + "f" * 32 + "'..."]


# ------------------------------------------------------------------------------------------- model control


def test_model_control_is_refused_without_the_key_over_grpc_and_http(server, clients, items):
    grpc, http = clients["grpc"], clients["http"]
    for attempt in (
        lambda: grpc.unload_model("similar_items"),
        lambda: grpc.load_model("similar_items", headers={"triton-grpc-protocol-intentrec-control-key": "guess"}),
        lambda: grpc.get_model_repository_index(),
        lambda: grpc.update_log_settings({"log_file": "/tmp/owned.log"}),
    ):
        with pytest.raises(InferenceServerException, match=r"This protocol is restricted, expecting header"):
            attempt()
    for attempt in (
        lambda: http.unload_model("similar_items"),
        lambda: http.load_model("similar_items", config=json.dumps({"backend": "python"})),
        lambda: http.update_trace_settings(settings={"trace_file": "/tmp/owned.json"}),
        lambda: http.register_system_shared_memory("region", "/owned", 64),
    ):
        with pytest.raises(InferenceServerException) as caught:
            attempt()
        assert str(caught.value.status()) == "403" and "This API is restricted" in caught.value.message()
    # Nothing changed: both models still answer.
    assert grpc.is_model_ready("similar_items") and grpc.is_model_ready("recommend")
    with Client(server.grpc_url) as client:
        assert len(client.similar_items(items["ids"][:1], k=3).item_ids) == 3
    # The key holder can use it (what publish does).
    index = grpc.get_model_repository_index(headers=server.control_headers("grpc"))
    assert {m.name for m in index.models} == {"recommend", "similar_items"}


def test_publish_refuses_an_unreachable_server_or_a_wrong_key_and_writes_nothing(bundle, server, tmp_path, monkeypatch):
    repository = build(bundle, tmp_path / "repository")
    before = sorted(p.relative_to(repository) for p in repository.rglob("*"))
    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(PublishError, match=rf"cannot reach the Triton server at --url {closed}.*nothing was written"):
        publish(bundle, repository, closed)
    monkeypatch.setenv("INTENTREC_CONTROL_KEY", "not-the-servers-key")
    with pytest.raises(PublishError, match=r"refused the model-control key .*nothing was written"):
        publish(bundle, repository, server.grpc_url)
    assert sorted(p.relative_to(repository) for p in repository.rglob("*")) == before
    result = subprocess.run(
        [sys.executable, "-m", "serving.repository", "publish", "--bundle", str(bundle), "--out", str(repository)]
        + ["--url", closed],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"error: cannot reach the Triton server at --url {closed}" in result.stderr
    assert sorted(p.relative_to(repository) for p in repository.rglob("*")) == before


def test_a_version_the_server_cannot_load_is_removed_and_the_old_one_keeps_serving(bundle, items, tmp_path):
    import hashlib

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken, ignore=shutil.ignore_patterns("model_repository"))
    (broken / "query_encoder.onnx").write_bytes(b"not an onnx graph")  # passes the manifest, fails to load
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["files"]["query_encoder.onnx"] = hashlib.sha256(b"not an onnx graph").hexdigest()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    repository = build(bundle, tmp_path / "repository")
    with TritonServer(
        repository, None, None, None, log_file=tmp_path / "server.log", backend_root=tmp_path / "b"
    ) as server:
        with pytest.raises(PublishError, match=r"could not load version 2 .*the version was removed"):
            publish(broken, repository, server.grpc_url)
        assert versions(repository, "recommend") == [1] and versions(repository, "similar_items") == [1]
        with Client(server.grpc_url) as client:
            reply = client.recommend(RecommendRequest(item_ids=items["ids"][:2], k=3))
        assert reply.info["model_version"] == "1" and len(reply.item_ids) == 3


def test_with_model_control_off_no_key_loads_or_unloads_a_model(bundle, items, tmp_path):
    repository = build(bundle, tmp_path / "repository")
    with TritonServer(
        repository,
        None,
        None,
        None,
        log_file=tmp_path / "server.log",
        backend_root=tmp_path / "b",
        model_control="off",
    ) as server:
        raw = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match=r"(?i)not allowed|disabled|explicit"):
            raw.unload_model("similar_items", headers=server.control_headers("grpc"))  # even with its key
        with pytest.raises(PublishError, match=r"refused the model-control key"):
            publish(bundle, repository, server.grpc_url)
        assert raw.is_model_ready("similar_items")
        with Client(server.grpc_url) as client:
            assert len(client.recommend(RecommendRequest(item_ids=items["ids"][:2], k=3)).item_ids) == 3


def test_the_control_key_file_is_private_to_its_owner(server):
    key_file = server.control_key_file
    if os.environ.get("INTENTREC_CONTROL_KEY"):
        pytest.skip("INTENTREC_CONTROL_KEY is set: the server uses it instead of the file")
    assert key_file.is_file() and key_file.stat().st_mode & 0o077 == 0
    assert len(key_file.read_text().strip()) == 64


def test_a_fault_of_the_server_is_internal_not_a_client_error_and_other_models_keep_serving(bundle, items, tmp_path):
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken, ignore=shutil.ignore_patterns("model_repository"))
    # A ranker that loads but does not take the inputs the pipeline feeds it: every recommend fails inside.
    scores = helper.make_tensor_value_info("retrieval_scores", TensorProto.FLOAT, ["B", "C"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "C"])
    graph = helper.make_graph([helper.make_node("Identity", ["retrieval_scores"], ["logits"])], "g", [scores], [logits])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), broken / "ranker.onnx")
    manifest = json.loads((broken / "manifest.json").read_text())
    if not manifest.get("ranker"):
        pytest.skip("the test bundle has no ranker")
    manifest["files"]["ranker.onnx"] = hashlib.sha256((broken / "ranker.onnx").read_bytes()).hexdigest()
    (broken / "manifest.json").write_text(json.dumps(manifest))
    repository = build(broken, tmp_path / "repository")
    with TritonServer(
        repository, None, None, None, log_file=tmp_path / "server.log", backend_root=tmp_path / "b"
    ) as server:
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            with Client(url, protocol) as client:
                with pytest.raises(ServingError) as caught:
                    client.recommend(RecommendRequest(item_ids=items["ids"][:3], k=5))
                assert caught.value.code == "INTERNAL" and "internal error" in str(caught.value), caught.value.code
                assert "Traceback" not in str(caught.value) and str(REPO_ROOT) not in str(caught.value)
                incident = re.search(r"internal error (\S+) ", str(caught.value)).group(1)
                assert len(client.similar_items(items["ids"][:1], k=3).item_ids) == 3
        log = (tmp_path / "server.log").read_text()
        assert f"intentrec internal error {incident}:" in log and "Traceback" in log


# ------------------------------------------------------------------------- configuration and set-up errors


def test_limits_control_keys_and_repositories_refuse_bad_settings_by_name(bundle, tmp_path, monkeypatch):
    from intentrec.errors import ConfigError
    from intentrec.serving.repository import add_version, serving_options
    from intentrec.serving.server import control_key

    (tmp_path / "serving.yaml").write_text("max_events: 0\n")
    with pytest.raises(ConfigError, match=r"max_events=0; expected an integer of at least 1 \(conf/serving\.yaml\)"):
        serving_options(tmp_path / "serving.yaml")
    (tmp_path / "not-a-repository").mkdir()
    with pytest.raises(ConfigError, match=r"not-a-repository is not a model repository of intentrec \(no recommend/"):
        add_version(tmp_path / "not-a-repository", bundle)
    assert list((tmp_path / "not-a-repository").iterdir()) == []
    monkeypatch.delenv("INTENTREC_CONTROL_KEY", raising=False)
    missing = tmp_path / "none.key"
    with pytest.raises(
        ConfigError, match=rf"no model-control key: INTENTREC_CONTROL_KEY is not set and {missing} does"
    ):
        control_key(missing)
    (tmp_path / "spaced.key").write_text("two words\n")
    with pytest.raises(ConfigError, match=r"spaced\.key holds no usable key \(empty, or with spaces"):
        control_key(tmp_path / "spaced.key")
    with pytest.raises(ConfigError, match=r"model_control='maybe'; expected one of \['key', 'off'\]"):
        TritonServer(tmp_path, model_control="maybe", control_key_file=tmp_path / "k")


def test_a_profile_store_that_cannot_be_opened_is_unavailable_naming_only_its_host(bundle, items):
    from intentrec.serving.recommender import Recommender
    from intentrec.serving.request import Query, Unavailable

    port = free_port()
    recommender = Recommender(bundle, profile_store=f"redis://:secret@127.0.0.1:{port}/0")
    (result,) = recommender.recommend([Query(item_ids=items["ids"][:2], identity="customer:c1")])
    assert isinstance(result, Unavailable)
    assert f"identity given but the profile store redis://127.0.0.1:{port} cannot be opened" in str(result)
    assert "secret" not in str(result)
