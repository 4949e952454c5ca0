"""The personalization platform end to end: collector -> store -> Triton `recommend` by identity,
in-store purchases, abandoned-cart messages, campaign batches; on SQLite and on a real redis-server."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from intentrec.ids import id_time_ms
from intentrec.serving.abandoned_carts import abandoned_cart_messages
from intentrec.serving.batch import campaign
from intentrec.serving.bundle import load_bundle
from intentrec.serving.client import Client, RecommendRequest, ServingError
from intentrec.serving.events.local import Collector, RedisServer
from intentrec.serving.events.pos import import_pos
from intentrec.serving.events.store import open_store
from intentrec.serving.recommender import Recommender
from intentrec.serving.repository import ServingOptions, build
from intentrec.serving.server import TritonServer

pytestmark = pytest.mark.triton

T0 = 1_772_000_000_000  # a Wednesday, 06:13 UTC
MINUTE = 60_000


@pytest.fixture(scope="module")
def catalogue(bundle):
    b = load_bundle(bundle)
    ids, categories = b.items["item_id"].astype(str), b.items["category"].astype(str)
    order = np.argsort(-b.items["train_count"], kind="stable")
    top: dict[str, list[str]] = {}
    for i in order:
        top.setdefault(categories[i], []).append(ids[i])
    prices = dict(zip(ids, b.items["price"].astype(float)))
    return {"category_of": dict(zip(ids, categories)), "top": top, "price_of": prices}


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def platform(request, bundle, tmp_path_factory):
    """(store URL, collector, Triton server) with the repository reading that store."""
    root = tmp_path_factory.mktemp(f"platform-{request.param}")
    redis_server = None
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'events.db'}"
    else:
        if shutil.which("redis-server") is None:
            pytest.skip(
                "redis-server not installed (Debian package redis-server; ./scripts/test.sh installs it as root)"
            )
        redis_server = RedisServer(root / "redis").start()
        url = redis_server.url
    collector = Collector(url, log_file=root / "collector.log").start()
    repository = build(bundle, root / "repository", ServingOptions(profile_store=url))
    server = TritonServer(repository, None, None, None, log_file=root / "server.log", backend_root=root / "backends")
    server.start()
    yield url, collector, server
    server.stop()
    collector.stop()
    if redis_server is not None:
        redis_server.stop()


def post(collector, events):
    reply = httpx.post(collector.url + "/v1/events", json={"events": events}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert not reply.json()["rejected"], reply.json()
    return reply.json()


def browse(prefix, items, start, device, session, customer=None, kind="view"):
    return [
        {
            "event_id": f"{prefix}-{n}",
            "event_time": start + n * 40_000,
            "item_id": item,
            "event_type": kind,
            "device_id": device,
            "session_id": session,
            "device_type": "mobile" if device.startswith("phone") else "desktop",
            **({"customer_id": customer} if customer else {}),
        }
        for n, item in enumerate(items)
    ]


def test_recommend_by_identity_reads_the_stored_profile_across_devices(platform, catalogue):
    url, collector, server = platform
    categories = sorted(catalogue["top"])
    first, second = categories[0], categories[1]
    phone = browse("ph", catalogue["top"][first][:6], T0, "phone-1", "s-phone")
    laptop = browse("lp", catalogue["top"][second][:8], T0 + 30 * MINUTE, "laptop-1", "s-laptop", customer="c-100")
    post(collector, phone + laptop)
    # Still browsing: after a pause of minutes the shop's shoppers switch intent.
    now = laptop[-1]["event_time"] + 20_000
    with Client(server.grpc_url) as client:
        before = client.recommend(RecommendRequest(identity="device:phone-1", now=now, k=10))
        assert before.info["profile"] == {
            "identity": "device:phone-1",
            "customer_id": None,
            "stored_events": 6,
            "purchases": 0,
        }
        linked = httpx.post(
            collector.url + "/v1/identify",
            json={"customer_id": "c-100", "device_id": "phone-1", "session_id": "s-phone", "loyalty_member": True},
        )
        assert linked.status_code == 200
        after = client.recommend(RecommendRequest(identity="device:phone-1", now=now, k=10))
        assert after.info["profile"]["customer_id"] == "c-100" and after.info["profile"]["stored_events"] == 14
        # The same events sent in the request give the same answer: the profile is only a source of events.
        events = phone + laptop
        explicit = client.recommend(
            RecommendRequest(
                item_ids=[e["item_id"] for e in events],
                event_types=[e["event_type"] for e in events],
                timestamps=[e["event_time"] for e in events],
                session_ids=[e["session_id"] for e in events],
                device_type="desktop",  # the device of the latest stored event, which the identity call used
                loyalty="yes",
                now=now,
                k=10,
            )
        )
        assert after.item_ids == explicit.item_ids
        np.testing.assert_allclose(after.scores, explicit.scores, rtol=1e-5)
        # The laptop's later browsing dominates: the second category leads.
        assert sum(catalogue["category_of"][i] == second for i in after.item_ids) >= 5
        # A request that names the shopper and carries new events uses both.
        fresh = catalogue["top"][first][6:9]
        both = client.recommend(
            RecommendRequest(
                identity="customer:c-100", item_ids=fresh, timestamps=[now - 3000, now - 2000, now - 1000], now=now
            )
        )
        assert both.info["profile"]["stored_events"] == 14
        share = lambda reply: sum(catalogue["category_of"][i] == first for i in reply.item_ids)  # noqa: E731
        assert share(both) > share(after)  # the request's own latest views pull toward their category


def test_an_in_store_purchase_is_excluded_from_the_next_recommendations(platform, catalogue, tmp_path):
    url, collector, server = platform
    category = sorted(catalogue["top"])[2]
    post(collector, browse("st", catalogue["top"][category][:8], T0, "phone-2", "s-st", customer="c-200"))
    now = T0 + 60 * MINUTE
    with Client(server.grpc_url) as client:
        before = client.recommend(RecommendRequest(identity="customer:c-200", now=now, k=10))
        bought = before.item_ids[0]
        pos = tmp_path / "pos.csv"
        pos.write_text(
            f"receipt_id,time,customer_id,item_id,quantity,price,store_id\nr-77,{T0 + 50 * MINUTE},c-200,{bought},1,12.5,s1\n"
        )
        store = open_store(url)
        try:
            assert import_pos(pos, store)["accepted"] == 1
        finally:
            store.close()
        after = client.recommend(RecommendRequest(identity="customer:c-200", now=now, k=10))
        assert after.info["profile"]["purchases"] == 1
        assert bought not in after.item_ids
        # Complements of what was just bought get the last two places (complements.json of the bundle).
        complements = after.info["complements"]
        assert complements["after"] == catalogue["category_of"][bought] and len(complements["items"]) >= 1
        assert all(catalogue["category_of"][i] in complements["categories"] for i in complements["items"])
        assert set(complements["items"]) <= set(after.item_ids)
        assert "complements" not in before.info


def test_price_band_and_profile_errors(platform, catalogue):
    _, _, server = platform
    with Client(server.grpc_url) as client:
        category = sorted(catalogue["top"])[0]
        prices = sorted(catalogue["price_of"][i] for i in catalogue["top"][category])
        low, high = prices[len(prices) // 4], prices[len(prices) // 2]
        band = client.recommend(
            RecommendRequest(item_ids=catalogue["top"][category][:5], min_price=low, max_price=high, k=10, now=T0)
        )
        assert band.item_ids and all(low <= catalogue["price_of"][i] <= high for i in band.item_ids)
        with pytest.raises(ServingError, match=r"min_price=.* > max_price"):
            client.recommend(RecommendRequest(item_ids=["x"], min_price=5, max_price=1))
        with pytest.raises(ServingError, match=r"identity='planet:x'; expected customer:<id>"):
            client.recommend(RecommendRequest(identity="planet:x"))
        nobody = client.recommend(RecommendRequest(identity="device:never-seen", k=5, now=T0))
        assert nobody.info["fallback"] == "popularity" and nobody.info["profile"]["stored_events"] == 0


def test_abandoned_cart_messages_and_campaign_batches_use_the_same_profiles(platform, bundle, catalogue, tmp_path):
    url, collector, _ = platform
    categories = sorted(catalogue["top"])
    cart_category = categories[3]
    items = catalogue["top"][cart_category][:4]
    events = browse("ab", items, T0, "phone-3", "s-ab", customer="c-300")
    events += browse("ab-cart", items[:2], T0 + 5 * MINUTE, "phone-3", "s-ab", customer="c-300", kind="add_to_cart")
    events += browse("ok-cart", items[2:3], T0, "phone-4", "s-ok", customer="c-301", kind="add_to_cart")
    events += browse("ok-buy", items[2:3], T0 + MINUTE, "phone-4", "s-ok", customer="c-301", kind="purchase")
    post(collector, events)
    httpx.post(collector.url + "/v1/identify", json={"customer_id": "c-300", "email": "c300@example.com"})
    store = open_store(url)
    recommender = Recommender(bundle, profile_store=store)
    try:
        too_early = abandoned_cart_messages(store, recommender, after_minutes=60, now=T0 + 30 * MINUTE)
        assert not [m for m in too_early if m["customer_id"] in ("c-300", "c-301")]
        messages = abandoned_cart_messages(store, recommender, after_minutes=60, now=T0 + 2 * 60 * MINUTE, k=4)
        mine = [m for m in messages if m["customer_id"] == "c-300"]
        assert [m["customer_id"] for m in messages].count("c-301") == 0  # bought: nothing left in the cart
        assert len(mine) == 1
        message = mine[0]
        assert message["channel"] == "email" and message["to"] == "c300@example.com"
        assert message["cart"] == [{"item_id": i, "quantity": 1} for i in sorted(items[:2])]
        assert len(message["recommendations"]) == 4 and not set(message["recommendations"]) & set(items[:2])
        # Complements first: the first recommendations lie outside the cart's category.
        assert catalogue["category_of"][message["recommendations"][0]] != cart_category
        assert id_time_ms(message["recommendation_id"]) is not None
        assert message["model_version"] == recommender.model_version and message["arm"] is None

        out = tmp_path / "campaign.parquet"
        summary = campaign(recommender, ["c-300", "c-301", "nobody"], out, k=5, categories=categories[4:6], now=T0)
        table = pq.read_table(out).to_pydict()
        assert summary["rows"] == 15 and summary["popularity_fallbacks"] == 1
        assert set(table["customer_id"]) == {"c-300", "c-301", "nobody"}
        assert all(catalogue["category_of"][i] in categories[4:6] for i in table["item_id"])
        rows_301 = [i for c, i in zip(table["customer_id"], table["item_id"]) if c == "c-301"]
        assert items[2] not in rows_301
        # One list per customer, named by its recommendation id on each of its rows.
        lists = {(c, r) for c, r in zip(table["customer_id"], table["recommendation_id"])}
        assert len(lists) == 3 and len({r for _, r in lists}) == 3 and all(id_time_ms(r) for _, r in lists)
        assert set(table["model_version"]) == {recommender.model_version}
    finally:
        store.close()


def test_batch_and_abandoned_cart_commands_run_from_the_command_line(platform, bundle, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    url, _, _ = platform
    out = tmp_path / "all.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "serving.batch", f"bundle={bundle}", f"store={url}", f"out={out}", "k=3", f"now={T0}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["customers"] == len(set(pq.read_table(out)["customer_id"].to_pylist()))
    bad = subprocess.run(
        [sys.executable, "-m", "serving.batch", f"bundle={bundle}", f"store={url}", f"out={out}", "categories=no-such"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "categories=['no-such'] not in the catalogue" in bad.stderr
    carts = tmp_path / "carts.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.abandoned_carts",
            f"store={url}",
            f"out={carts}",
            f"now={T0 + 10 * 60 * MINUTE}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["messages"] == len(carts.read_text().splitlines())


@pytest.mark.slow
def test_feedback_loop_ingest_export_prepare_train_export_serve(tmp_path):
    """Events that arrive through the collector become training data and, one loop later, recommendations."""
    from intentrec.data.synthetic import ShopConfig, generate
    from intentrec.serving.events.export import export_events
    from intentrec.serving.export import export
    from intentrec.training.train import train
    from tests.conftest import compose_config

    shop = tmp_path / "shop"
    generate(ShopConfig(num_events=12_000, seed=5, chunk_events=12_000), shop)
    table = pq.read_table(shop / "events.parquet").to_pylist()
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with Collector(url, log_file=tmp_path / "collector.log") as collector:
        for start in range(0, len(table), 1000):
            batch = []
            for row in table[start : start + 1000]:
                event = {k: v for k, v in row.items() if v is not None}
                event["event_time"] = int(row["event_time"].timestamp() * 1000)
                batch.append(event)
            reply = post(collector, batch)
            assert reply["accepted"] == len(batch)
    store = open_store(url)
    summary = export_events(store, tmp_path / "collected", items=shop / "items.parquet")
    store.close()
    assert summary["events"] == len(table)

    collected = [
        "data=generic",
        "data.name=collected",
        "data.format=canonical",
        f"data.path={tmp_path / 'collected'}",
        "debug=fast",
        f"artifacts_dir={tmp_path / 'artifacts'}",
    ]
    metrics = train(compose_config("train", [*collected, f"run_dir={tmp_path / 'run'}"]))
    assert metrics["test/count"] > 0 and metrics["test/ndcg@10"] > 0
    assert "test/biz/conversion@10" in metrics and "test/biz/session_conversion" in metrics
    bundle = tmp_path / "bundle"
    export(
        compose_config(
            "export",
            [*collected, f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", f"export.out_dir={bundle}"],
        )
    )
    customer = next(row["customer_id"] for row in reversed(table) if row.get("customer_id"))
    repository = build(bundle, tmp_path / "repository", ServingOptions(profile_store=url))
    with TritonServer(
        repository, None, None, None, log_file=tmp_path / "server.log", backend_root=tmp_path / "b"
    ) as server:
        with Client(server.grpc_url) as client:
            reply = client.recommend(RecommendRequest(identity=f"customer:{customer}", k=5))
    assert len(reply.item_ids) == 5 and reply.info["profile"]["stored_events"] > 0 and reply.info["fallback"] is None


def test_a_profile_store_outage_fails_only_the_rows_that_name_a_shopper_and_heals(bundle, catalogue, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (Debian package redis-server; ./scripts/test.sh installs it as root)")
    redis_server = RedisServer(tmp_path / "redis").start()
    repository = build(bundle, tmp_path / "repository", ServingOptions(profile_store=redis_server.url))
    shoes = catalogue["top"]["shoes"][:3]
    by_identity = RecommendRequest(identity="customer:c-outage", item_ids=shoes, k=5)
    plain = RecommendRequest(item_ids=shoes, k=5)
    try:
        with TritonServer(
            repository, None, None, None, log_file=tmp_path / "server.log", backend_root=tmp_path / "b"
        ) as server:
            with Client(server.grpc_url) as client, Client(server.http_url, "http") as http:
                assert len(client.recommend(by_identity).item_ids) == 5
                redis_server.stop()
                for protocol_client in (client, http):
                    with pytest.raises(ServingError) as caught:
                        protocol_client.recommend(by_identity)
                    assert caught.value.code == "UNAVAILABLE" and caught.value.retryable, caught.value.code
                    assert f"the profile store redis://127.0.0.1:{redis_server.port} did not answer" in str(
                        caught.value
                    )
                    assert str(tmp_path) not in str(caught.value)
                answered, failed = client.recommend([plain, by_identity])
                assert len(answered.item_ids) == 5 and answered.error is None
                assert failed.item_ids == [] and "did not answer" in failed.error and failed.info["retryable"]
                redis_server.start()  # same port and data: the next requests find it again
                for _attempt in range(20):
                    try:
                        reply = client.recommend(by_identity)
                        break
                    except ServingError:
                        time.sleep(0.25)
                assert len(reply.item_ids) == 5 and reply.info["profile"]["identity"] == "customer:c-outage"
    finally:
        redis_server.stop()
