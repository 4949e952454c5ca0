"""The event collector and its stores: every store test runs on SQLite and on a real redis-server."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import httpx
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from intentrec.data.loaders import load_canonical
from intentrec.errors import ConfigError, DataError
from intentrec.serving.events.__main__ import collector_token
from intentrec.serving.events.app import CollectorSettings, create_app
from intentrec.serving.events.export import export_events, import_events
from intentrec.serving.events.local import Collector, RedisServer
from intentrec.serving.events.pos import import_pos
from intentrec.serving.events.profile import build_profile
from intentrec.serving.events.schema import validate_events
from intentrec.serving.events.store import RedisStore, SQLiteStore, open_store
from tests.conftest import REPO_ROOT

HOUR = 3_600_000
T0 = 1_790_000_000_000  # 2026-09-21, a fixed clock for the tests


def event(event_id, item, kind="view", at=0, **fields):
    return {"event_id": event_id, "item_id": item, "event_type": kind, "event_time": T0 + at, **fields}


def test_appending_the_same_event_id_twice_stores_it_once(store):
    events, _ = validate_events([event("e1", "i1", device_id="d1"), event("e2", "i2", device_id="d1")], T0)
    first = store.append(events)
    again = store.append(events)
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert store.count() == 2
    assert [e["event_id"] for e in store.iter_events()] == ["e1", "e2"]


def test_login_joins_the_anonymous_session_and_other_devices_into_one_profile(store):
    events, _ = validate_events(
        [
            event("a1", "dress", at=0, device_id="phone", session_id="s-phone"),  # anonymous browsing
            event("a2", "dress", "add_to_cart", at=1000, device_id="phone", session_id="s-phone", quantity=2),
            event("b1", "shoes", at=HOUR, device_id="laptop", session_id="s-laptop", customer_id="c1"),
            event("x1", "hat", at=HOUR, device_id="other", session_id="s-other"),  # someone else
        ],
        T0,
    )
    store.append(events)
    before = build_profile(store, "device", "phone", now=T0 + 2 * HOUR)
    assert before.customer_id is None and [e["item_id"] for e in before.recent_events] == ["dress", "dress"]
    canonical = store.identify("c1", device_id="phone", session_id="s-phone", traits={"loyalty_member": True})
    assert canonical == "c1"
    profile = build_profile(store, "device", "phone", now=T0 + 2 * HOUR)
    assert profile.customer_id == "c1"
    assert profile.devices == ["laptop", "phone"]
    assert [e["item_id"] for e in profile.recent_events] == ["dress", "dress", "shoes"]  # oldest first, no hat
    assert profile.recent_views == ["shoes", "dress"]
    assert profile.cart == {"dress": 2} and profile.loyalty_member is True
    assert build_profile(store, "customer", "c1", now=T0).recent_events == profile.recent_events


def test_merging_two_known_customers_combines_their_events_devices_and_traits(store):
    events, _ = validate_events(
        [
            event("m1", "tv", at=0, customer_id="guest-7", device_id="tablet"),
            event("m2", "cable", "purchase", at=10, customer_id="guest-7", device_id="tablet", price=9.5),
            event("m3", "sofa", at=20, customer_id="acct-1", device_id="desktop"),
        ],
        T0,
    )
    store.append(events)
    store.identify("guest-7", traits={"loyalty_member": True, "email": "a@example.com"})
    assert store.identify("acct-1", merge_customer_ids=["guest-7"]) == "acct-1"
    assert store.owner("customer", "guest-7") == "acct-1"
    assert store.owner("device", "tablet") == "acct-1"
    profile = build_profile(store, "customer", "guest-7", now=T0)
    assert profile.customer_id == "acct-1"
    assert profile.devices == ["desktop", "tablet"]
    assert [e["item_id"] for e in profile.recent_events] == ["tv", "cable", "sofa"]
    assert [p["item_id"] for p in profile.purchases] == ["cable"]
    assert (profile.loyalty_member, profile.email) == (True, "a@example.com")
    assert store.customers() == ["acct-1"]


def test_a_shared_device_follows_its_latest_login_but_known_events_stay_with_their_customer(store):
    events, _ = validate_events(
        [
            event("s1", "lipstick", at=0, customer_id="alice", device_id="family-ipad"),
            event("s2", "drill", at=10, customer_id="bob", device_id="family-ipad"),
            event("s3", "saw", at=20, device_id="family-ipad"),  # anonymous, after bob's login
        ],
        T0,
    )
    store.append(events)
    assert store.owner("device", "family-ipad") == "bob"
    assert [e["item_id"] for e in build_profile(store, "customer", "alice", now=T0).recent_events] == ["lipstick"]
    assert [e["item_id"] for e in build_profile(store, "customer", "bob", now=T0).recent_events] == ["drill", "saw"]


def test_cart_replays_adds_removes_and_purchases_and_is_abandoned_only_after_the_threshold(store):
    events, _ = validate_events(
        [
            event("c1", "a", "add_to_cart", at=0, device_id="d", quantity=2),
            event("c2", "b", "add_to_cart", at=1, device_id="d"),
            event("c3", "a", "remove_from_cart", at=2, device_id="d", quantity=1),
            event("c4", "b", "purchase", at=3, device_id="d"),
            event("c5", "z", "store_purchase", at=4, device_id="d", channel="store"),
        ],
        T0,
    )
    store.append(events)
    fresh = build_profile(store, "device", "d", now=T0 + 60_000, abandon_after_ms=30 * 60_000)
    assert fresh.cart == {"a": 1} and not fresh.cart_abandoned
    stale = build_profile(store, "device", "d", now=T0 + HOUR, abandon_after_ms=30 * 60_000)
    assert stale.cart_abandoned
    assert [p["item_id"] for p in stale.purchases] == ["b", "z"]


def test_validation_rejects_each_bad_field_with_a_reason_and_keeps_the_valid_events():
    raw = [
        event("ok", "i1", device_id="d"),
        {"event_id": "bad", "item_id": "", "event_type": "clicked", "event_time": 1_700_000_000, "colour": "red"},
        event("anon", "i2"),
        "not an object",
        event("ok", "i3", device_id="d"),
    ]
    events, rejected = validate_events(raw, T0)
    assert [e["event_id"] for e in events] == ["ok"]
    reasons = {(r.index, r.field): r for r in rejected}
    assert "at least 1 character" in reasons[(1, "item_id")].reason
    assert "'view'" in reasons[(1, "event_type")].reason and reasons[(1, "event_type")].value == "clicked"
    assert "multiplied by 1000" in reasons[(1, "event_time")].reason
    assert reasons[(1, "colour")].reason == "Extra inputs are not permitted"
    assert "session_id, customer_id, device_id" in reasons[(2, "")].reason
    assert reasons[(3, "")].reason == "expected a JSON object"
    assert "earlier in this batch" in reasons[(4, "event_id")].reason


def test_pos_import_stores_store_purchases_once_and_reports_bad_lines(store, tmp_path):
    pos = tmp_path / "pos.csv"
    pos.write_text(
        "receipt_id,time,customer_id,item_id,quantity,price,store_id\n"
        "r1,2026-09-21T10:00:00Z,c9,kettle,1,29.90,berlin-1\n"
        "r1,2026-09-21T10:00:00Z,c9,mug,2,4.50,berlin-1\n"
        "r2,yesterday,,toaster,1,19.00,berlin-1\n"
        "r3,1790000000000,,toaster,x,19.00,berlin-1\n"
    )
    summary = import_pos(pos, store)
    assert summary["accepted"] == 2
    assert [(r["line"], r["field"]) for r in summary["rejected"]] == [(4, "event_time"), (5, "quantity")]
    assert import_pos(pos, store)["duplicates"] == 2
    # The same receipt line exported again with another price: reported with its line, the stored one stays.
    pos.write_text(pos.read_text().replace("mug,2,4.50", "mug,2,5.50"))
    again = import_pos(pos, store)
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    assert [(c["line"], c["fields"]) for c in again["conflicts"]] == [(3, {"price": {"stored": 4.5, "sent": 5.5}})]
    profile = build_profile(store, "customer", "c9", now=T0)
    assert [(p["item_id"], p["channel"], p["region"]) for p in profile.purchases] == [
        ("kettle", "store", "berlin-1"),
        ("mug", "store", "berlin-1"),
    ]
    with pytest.raises(DataError, match=r"lacks \['receipt_id'\]"):
        bad = tmp_path / "bad.csv"
        bad.write_text("time,item_id\n1,a\n")
        import_pos(bad, store)


def test_export_writes_canonical_parquet_that_the_loader_reads(store, tmp_path):
    events, _ = validate_events(
        [
            event("x1", "i1", at=0, customer_id="c1", device_id="d1", device_type="mobile", price=3.0),
            event("x2", "i2", "purchase", at=5, customer_id="c1", quantity=2, channel="web"),
        ],
        T0,
    )
    store.append(events)
    store.identify("c1", traits={"loyalty_member": True})
    summary = export_events(store, tmp_path / "export")
    assert summary["events"] == 2
    loaded = load_canonical(tmp_path / "export")
    table = loaded.events.to_pydict()
    assert table["event_id"] == ["x1", "x2"] and table["quantity"] == [None, 2]
    assert table["event_time"][1].timestamp() * 1000 == T0 + 5
    assert pq.read_table(tmp_path / "export" / "customers.parquet").to_pydict() == {
        "customer_id": ["c1"],
        "loyalty_member": [True],
    }


def test_redis_store_refuses_a_server_that_could_lose_acknowledged_events(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    with RedisServer(tmp_path / "redis", durable=False) as server:
        with pytest.raises(ConfigError, match="appendfsync='everysec'|appendonly='no'"):
            RedisStore(server.url)


def test_unknown_store_urls_name_the_key():
    with pytest.raises(ConfigError, match=r"events.store='postgres://x'.*sqlite:///"):
        open_store("postgres://x")


# ------------------------------------------------------------------------------------------------- the API


@pytest.fixture
def api(tmp_path):
    store = SQLiteStore(tmp_path / "api.db")
    settings = CollectorSettings(max_body_bytes=20_000, max_batch_events=50, token="s3cret")
    with TestClient(create_app(store, settings), headers={"Authorization": "Bearer s3cret"}) as client:
        yield client, store


def test_api_stores_valid_events_and_lists_the_rejected_ones(api):
    client, store = api
    reply = client.post("/v1/events", json={"events": [event("v1", "i1", device_id="d"), {"event_id": "v2"}]})
    assert reply.status_code == 200
    body = reply.json()
    assert body["accepted"] == 1 and body["duplicates"] == 0
    assert {(r["index"], r["field"]) for r in body["rejected"]} == {(1, "item_id"), (1, "event_type")}
    assert store.count() == 1
    assert client.post("/v1/events", json={"events": [event("v1", "i1", device_id="d")]}).json()["duplicates"] == 1


def test_api_errors_say_what_was_wrong_and_how_to_fix_it(api):
    client, store = api
    anonymous = TestClient(client.app)
    unauthorized = anonymous.post("/v1/events", json={"events": []})
    assert unauthorized.status_code == 401 and "Bearer" in unauthorized.json()["error"]
    not_json = client.post("/v1/events", content=b"{nope", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    wrong_shape = client.post("/v1/events", json=[event("w", "i", device_id="d")])
    assert wrong_shape.status_code == 422 and '{"events": [event, ...]}' in wrong_shape.json()["error"]
    too_many = client.post("/v1/events", json={"events": [event(f"n{i}", "i", device_id="d") for i in range(51)]})
    assert too_many.status_code == 413 and "max_batch_events=50" in too_many.json()["error"]
    too_big = client.post("/v1/events", json={"events": [event("big", "i" * 190, device_id="d" * 190)] * 48})
    assert too_big.status_code == 413 and "limit of 20000 bytes" in too_big.json()["error"]
    assert store.count() == 0
    assert client.get("/v1/profile/planet:x").status_code == 422
    assert client.get("/v1/profile/device:nobody").status_code == 404


def test_api_identify_and_profile_work_across_devices(api):
    client, _ = api
    client.post(
        "/v1/events",
        json={
            "events": [
                event("p1", "dress", "add_to_cart", device_id="phone", session_id="s1"),
                event("p2", "shoes", at=1000, device_id="laptop", customer_id="c1"),
            ]
        },
    )
    linked = client.post("/v1/identify", json={"customer_id": "c1", "device_id": "phone", "session_id": "s1"}).json()
    assert linked == {"customer_id": "c1", "identities": ["customer:c1", "device:laptop", "device:phone", "session:s1"]}
    profile = client.get("/v1/profile/device:phone").json()
    assert profile["customer_id"] == "c1" and profile["cart"] == {"dress": 1}
    assert client.get("/v1/profile/c1").json()["recent_views"] == ["shoes"]
    assert client.post("/v1/identify", json={"device_id": "phone"}).status_code == 422


def test_openapi_spec_documents_the_endpoints_and_the_event_schema(api):
    client, _ = api
    spec = client.get("/openapi.json").json()
    assert {"/v1/events", "/v1/identify", "/v1/profile/{identity}", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "event_type" in body["properties"]["events"]["items"]["properties"]


# ------------------------------------------------------------------------------------------- reliability


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_no_acknowledged_event_is_lost_when_the_collector_is_killed_mid_ingestion(kind, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'events.db'}" if kind == "sqlite" else request.getfixturevalue("redis_server").url
    if kind == "redis":
        import redis

        redis.Redis.from_url(url).flushdb()
    acknowledged: list[str] = []
    sent_unacknowledged: list[str] = []
    collector = Collector(url, log_file=tmp_path / "collector.log").start()
    stop = threading.Event()

    def send(worker: int) -> None:
        with httpx.Client(base_url=collector.url, timeout=5) as client:
            batch_number = 0
            while not stop.is_set():
                ids = [f"w{worker}-b{batch_number}-e{i}" for i in range(25)]
                batch = [event(i, f"item{n % 7}", device_id=f"dev{worker}", at=n) for n, i in enumerate(ids)]
                try:
                    reply = client.post("/v1/events", json={"events": batch})
                    if reply.status_code == 200 and reply.json()["accepted"] == len(ids):
                        acknowledged.extend(ids)
                    else:
                        sent_unacknowledged.extend(ids)
                except httpx.HTTPError:
                    sent_unacknowledged.extend(ids)
                    return
                batch_number += 1

    threads = [threading.Thread(target=send, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 1500 and time.monotonic() < deadline:
        time.sleep(0.01)
    collector.kill()  # while the senders are still posting
    stop.set()
    for thread in threads:
        thread.join()
    assert len(acknowledged) >= 1500, "the collector acknowledged too little before the kill to test anything"
    assert sent_unacknowledged, "the kill should have interrupted at least one batch in flight"

    with Collector(url, log_file=tmp_path / "collector.log") as restarted:
        health = httpx.get(restarted.url + "/healthz").json()
    store = open_store(url)
    stored = {e["event_id"] for e in store.iter_events()}
    store.close()
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
    assert health["events"] == len(stored) >= len(acknowledged)


# ------------------------------------------------------------------------------------- hostile clients


def raw_post(url: str, path: str, chunks, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST `chunks` with Transfer-Encoding: chunked over a plain socket; (status, body) of the reply,
    read as soon as the server answers (it may answer before the body ends)."""
    import select
    import socket
    from urllib.parse import urlparse

    target = urlparse(url)
    with socket.create_connection((target.hostname, target.port), timeout=10) as sock:
        head = [f"POST {path} HTTP/1.1", f"Host: {target.netloc}", "Transfer-Encoding: chunked"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            sock.sendall(b"0\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 4 + _length(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    status = int(reply.split(b" ", 2)[1])
    return status, reply.split(b"\r\n\r\n", 1)[1]


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@pytest.fixture(params=["sqlite", "redis"])
def collector(request, tmp_path, monkeypatch):
    """The real collector process (uvicorn) on SQLite or Redis, a 20 kB body limit and a token from the environment."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        url = request.getfixturevalue("redis_server").url
        import redis

        redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("INTENTREC_COLLECTOR_TOKEN", "s3cret")
    with Collector(url, log_file=tmp_path / "collector.log", extra_args=("max_body_bytes=20000",)) as running:
        with httpx.Client(base_url=running.url, headers={"Authorization": "Bearer s3cret"}, timeout=10) as client:
            yield running, client, tmp_path


def still_answers(client) -> None:
    reply = client.post("/v1/events", json={"events": [event(f"ok-{time.monotonic_ns()}", "i1", device_id="d")]})
    assert reply.status_code == 200 and reply.json()["accepted"] == 1


def test_no_route_reads_a_chunked_body_past_the_limit(collector):
    import psutil

    running, client, _ = collector
    process = psutil.Process(running.process.pid)
    before = process.memory_info().rss
    for path in ("/v1/identify", "/v1/events", "/v1/profile/c1", "/healthz"):
        status, body = raw_post(
            running.url, path, (b"x" * 65536 for _ in range(800)), {"Authorization": "Bearer s3cret"}
        )  # 50 MiB offered
        if path.startswith("/v1/profile") or path == "/healthz":
            assert status == 405, (path, status, body[:200])  # GET routes answer without reading a body
        else:
            assert status == 413, (path, status, body[:200])
            assert b"request body exceeds the limit of 20000 bytes (max_body_bytes)" in body and len(body) < 300
        still_answers(client)
    assert process.memory_info().rss - before < 30 * 2**20  # nothing near 50 MiB was buffered
    declared = client.post("/v1/identify", content=b"{" + b" " * 30_000 + b"}")
    assert declared.status_code == 413 and "of 30002 bytes exceeds the limit" in declared.json()["error"]


def test_deeply_nested_json_is_a_clear_400_on_every_route(collector):
    _, client, _ = collector
    for path, body in (
        ("/v1/events", b'{"events": ' + b"[" * 9000 + b"]" * 9000 + b"}"),  # past Python's recursion limit
        ("/v1/identify", b'{"customer_id": "c1", "email": ' + b"[" * 40 + b"]" * 40 + b"}"),  # under it
    ):
        reply = client.post(path, content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 400, (path, reply.text[:200])
        assert reply.json()["error"] == "request body nests objects/arrays deeper than max_json_depth=32"
        still_answers(client)


def test_a_resent_event_id_with_another_payload_is_a_409_conflict_and_the_stored_event_stays(collector):
    _, client, _ = collector
    first = client.post("/v1/events", json={"events": [event("c-1", "dress", device_id="d")]})
    assert first.status_code == 200 and first.json()["accepted"] == 1
    same = client.post("/v1/events", json={"events": [event("c-1", "dress", device_id="d")]})
    assert same.status_code == 200 and same.json()["duplicates"] == 1
    changed = client.post(
        "/v1/events", json={"events": [event("c-1", "shoes", device_id="d"), event("c-2", "hat", device_id="d")]}
    )
    assert changed.status_code == 409
    body = changed.json()
    assert (body["accepted"], body["duplicates"]) == (1, 0)
    assert body["conflicts"] == [
        {"index": 0, "event_id": "c-1", "fields": {"item_id": {"stored": "dress", "sent": "shoes"}}}
    ]
    profile = client.get("/v1/profile/device:d").json()
    assert [e["item_id"] for e in profile["recent_events"]] == ["dress", "hat"]
    # No event_time: the collector's clock stamps it; the same payload resent later is still a duplicate.
    untimed = {"event_id": "c-3", "item_id": "bag", "event_type": "view", "device_id": "d"}
    assert client.post("/v1/events", json={"events": [untimed]}).json()["accepted"] == 1
    time.sleep(0.01)
    again = client.post("/v1/events", json={"events": [untimed]})
    assert again.status_code == 200 and again.json()["duplicates"] == 1


def test_health_names_no_path_and_validation_errors_do_not_echo_the_body(collector):
    running, client, tmp_path = collector
    health = httpx.get(running.url + "/healthz")
    assert health.status_code == 200 and str(tmp_path) not in health.text and "events.db" not in health.text
    assert health.json()["store"] in ("sqlite", "redis")
    reply = client.post("/v1/identify", json={"device_id": "phone", "email": "e" * 300})
    assert reply.status_code == 422 and "customer_id: Field required" in reply.json()["error"]
    assert "e" * 100 not in reply.text
    odd = httpx.post(
        running.url + "/v1/events", json={"events": []}, headers={"Authorization": "Bearer s3cr\u00e9t".encode()}
    )
    assert odd.status_code == 401
    still_answers(client)


def test_the_token_comes_from_the_environment_or_a_file_never_the_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("INTENTREC_COLLECTOR_TOKEN", raising=False)
    store = f"sqlite:///{tmp_path / 'e.db'}"

    def serve(*args):
        return subprocess.run(
            [sys.executable, "-m", "serving.events", "serve", f"store={store}", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    with pytest.raises(ConfigError, match=r"token_file=.*missing-token: cannot read it \(No such file or directory\)"):
        collector_token("127.0.0.1", None, tmp_path / "missing-token")
    monkeypatch.setenv("INTENTREC_COLLECTOR_TOKEN", "caf\u00e9")
    with pytest.raises(ConfigError, match=r"the collector token must be printable ASCII without spaces"):
        collector_token("127.0.0.1", None, None)
    monkeypatch.delenv("INTENTREC_COLLECTOR_TOKEN")
    on_argv = serve("token=s3cret")
    assert on_argv.returncode == 2 and "Traceback" not in on_argv.stderr
    assert "token= on the command line is visible to every local user" in on_argv.stderr
    exposed = serve("host=0.0.0.0")
    assert exposed.returncode == 2
    assert "host=0.0.0.0 is reachable beyond this machine and no collector token is set" in exposed.stderr
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    assert f"token_file={empty} is empty" in serve("host=0.0.0.0", f"token_file={empty}").stderr
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    with Collector(store, log_file=tmp_path / "c.log", extra_args=(f"token_file={secret}",)) as running:
        assert httpx.post(running.url + "/v1/events", json={"events": []}).status_code == 401
        ok = httpx.post(
            running.url + "/v1/events", json={"events": []}, headers={"Authorization": "Bearer from-a-file"}
        )
        assert ok.status_code == 200


# -------------------------------------------------------------------------------- feedback on served lists


def served(items=("i1", "i2", "i3"), **labels):
    from intentrec.ids import new_id
    from intentrec.serving.client import Recommendation

    return Recommendation(
        item_ids=list(items), scores=[0.0] * len(items), info={}, recommendation_id=new_id(), **labels
    )


def test_impressions_and_clicks_keep_their_list_fields_and_stay_out_of_profiles(store, tmp_path):
    shown = served(model_version="3", experiment="home-2026", arm="model")
    raw = [
        event("v1", "i9", session_id="s1"),
        *shown.impressions("home", session_id="s1", event_time=T0 + 1, propensities=[0.9, 0.5, 0.2]),
        shown.click("i2", session_id="s1", event_time=T0 + 2),
        event("a1", "i2", "add_to_cart", at=3, session_id="s1", quantity=1, recommendation_id=shown.recommendation_id),
    ]
    events, rejected = validate_events(raw, T0)
    assert rejected == []
    assert (store.append(events).accepted, store.append(events).duplicates) == (6, 6)
    stored = {e["event_id"]: e for e in store.iter_events()}
    second = stored[f"{shown.recommendation_id}:impression:2"]
    assert (second["item_id"], second["position"], second["placement"], second["propensity"]) == ("i2", 2, "home", 0.5)
    assert (second["experiment"], second["arm"], second["model_version"]) == ("home-2026", "model", "3")
    click = stored[f"{shown.recommendation_id}:click:i2"]
    assert (click["event_type"], click["position"], click["recommendation_id"]) == ("click", 2, shown.recommendation_id)
    assert stored["a1"]["recommendation_id"] == shown.recommendation_id and stored["v1"]["recommendation_id"] is None
    # The profile holds the shopper's actions only: 3 impressions and a click would crowd them out otherwise.
    profile = build_profile(store, "session", "s1", now=T0 + HOUR)
    assert [e["event_id"] for e in profile.recent_events] == ["v1", "a1"]
    assert store.impressed([shown.recommendation_id, "never-shown"]) == {shown.recommendation_id}
    # Exported, the list columns are there (schema version 2); preparing the export sets the feedback aside.
    export_events(store, tmp_path / "export")
    table = pq.read_table(tmp_path / "export" / "events.parquet")
    assert table.schema.metadata[b"intentrec.schema_version"] == b"2"
    assert table.column("position").to_pylist().count(None) == 2
    loaded = load_canonical(tmp_path / "export")
    assert loaded.events.column("event_id").to_pylist() == ["v1", "a1"]
    assert loaded.notes["feedback_events_skipped"] == 4 and "recommendation_id" not in loaded.events.column_names


def test_import_stores_an_export_again_and_reports_bad_rows_by_number(store, tmp_path, capsys):
    import pyarrow as pa

    raw = [event("v1", "i1", session_id="s1"), event("a1", "i1", "add_to_cart", at=1, session_id="s1", quantity=2)]
    events, _ = validate_events(raw, T0)
    store.append(events)
    store.identify("c1", device_id="d1", traits={"loyalty_member": True})
    export_events(store, tmp_path / "export")
    target = open_store(f"sqlite:///{tmp_path / 'copy.db'}")
    summary = import_events(tmp_path / "export", target)
    assert (summary["accepted"], summary["rejected_count"], summary["customers"]) == (2, 0, 1)
    assert [(e["event_id"], e["event_time"], e["quantity"]) for e in target.iter_events()] == [
        ("v1", T0, None),
        ("a1", T0 + 1, 2),
    ]
    assert target.traits("c1") == {"loyalty_member": True}
    assert import_events(tmp_path / "export" / "events.parquet", target)["duplicates"] == 2  # idempotent
    table = pq.read_table(tmp_path / "export" / "events.parquet")
    bad = table.set_column(table.schema.get_field_index("quantity"), "quantity", pa.array([None, 0], pa.int32()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    summary = import_events(tmp_path / "bad.parquet", open_store(f"sqlite:///{tmp_path / 'bad.db'}"))
    assert summary["accepted"] == 1 and summary["rejected"][0]["row"] == 1
    assert summary["rejected"][0]["field"] == "quantity" and summary["rejected"][0]["value"] == 0
    with pytest.raises(ConfigError, match="no such file"):
        import_events(tmp_path / "nothing", target)
    pq.write_table(table.drop(["event_type"]), tmp_path / "no_type.parquet")
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['event_type'\] of the canonical events schema"):
        import_events(tmp_path / "no_type.parquet", target)
    from intentrec.serving.events.__main__ import main as events_main

    assert events_main(["import", f"store=sqlite:///{tmp_path / 'cli.db'}"]) == 2
    assert "error: import needs events=<canonical events.parquet or its folder>" in capsys.readouterr().err
    target.close()


def test_feedback_fields_are_checked_by_name_and_the_valid_events_are_kept():
    rid = "0193a1c2-0000-7000-8000-000000000001"
    raw = [
        event("ok", "i1", "impression", device_id="d", recommendation_id=rid, position=1, placement="cart"),
        event("no-list", "i1", "impression", device_id="d", position=2),
        event("where", "i1", "impression", device_id="d", recommendation_id=rid, position=3, placement="sidebar"),
        event("zero", "i1", "click", device_id="d", recommendation_id=rid, position=0),
        event(
            "prob",
            "i1",
            "impression",
            device_id="d",
            recommendation_id=rid,
            position=4,
            placement="home",
            propensity=1.5,
        ),
        event("view", "i1", "view", device_id="d", recommendation_id=rid, position=1, arm="model"),
        event("bare", "i1", "click", device_id="d"),
        {**event("when", "i1", device_id="d"), "event_time": "yesterday"},
    ]
    events, rejected = validate_events(raw, T0)
    assert [e["event_id"] for e in events] == ["ok"]
    reasons = {(r.event_id, r.field): r.reason for r in rejected}
    assert "needs recommendation_id" in reasons[("no-list", "recommendation_id")]
    assert (
        "needs placement" in reasons[("no-list", "placement")]
        and "1-based position" in reasons[("no-list", "placement")]
    )
    assert "'home'" in reasons[("where", "placement")] and "'store_app'" in reasons[("where", "placement")]
    assert "greater than or equal to 1" in reasons[("zero", "position")]
    assert "less than or equal to 1" in reasons[("prob", "propensity")]
    assert "only impression and click events carry position" in reasons[("view", "position")]
    assert "only impression and click events carry arm" in reasons[("view", "arm")]
    assert "a click event needs recommendation_id" in reasons[("bare", "recommendation_id")]
    assert "expected epoch milliseconds or an ISO 8601 time such as" in reasons[("when", "event_time")]


def test_feedback_on_a_list_with_no_stored_impression_is_stored_and_flagged(collector):
    _, client, _ = collector
    shown = served()
    clicked = shown.click("i3", session_id="s")
    reply = client.post("/v1/events", json={"events": [{"event_id": "broken"}, clicked]}).json()
    assert reply["accepted"] == 1 and [r["index"] for r in reply["rejected"]] == [0, 0]
    assert reply["unmatched"] == [
        {
            "index": 1,
            "event_id": clicked["event_id"],
            "recommendation_id": shown.recommendation_id,
            "reason": reply["unmatched"][0]["reason"],
        }
    ]
    assert "no impression of this recommendation_id is stored" in reply["unmatched"][0]["reason"]
    # Once the impressions arrive (in the same batch or before), feedback on the list matches; the index of a
    # conflict is the event's place in the batch as sent, rejected events included.
    later = client.post(
        "/v1/events",
        json={
            "events": [
                {"event_id": "broken"},
                {**clicked, "item_id": "i2", "position": 2},
                *shown.impressions("home", session_id="s"),
                event("buy", "i3", "purchase", session_id="s", quantity=1, recommendation_id=shown.recommendation_id),
            ]
        },
    )
    assert later.status_code == 409
    body = later.json()
    assert body["accepted"] == 4 and body["unmatched"] == []
    assert [(c["index"], c["event_id"], sorted(c["fields"])) for c in body["conflicts"]] == [
        (1, clicked["event_id"], ["item_id", "position"])
    ]


def test_a_version_1_sqlite_database_is_read_as_is_and_migrated_when_opened_for_writing(tmp_path):
    import sqlite3

    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # the layout of schema version 1
        db.executescript(
            """
            CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
                event_time INTEGER NOT NULL, received_at INTEGER NOT NULL, session_id TEXT, customer_id TEXT,
                device_id TEXT, item_id TEXT NOT NULL, event_type TEXT NOT NULL, price REAL, quantity INTEGER,
                channel TEXT, device_type TEXT, referrer TEXT, region TEXT);
            CREATE TABLE links (key TEXT PRIMARY KEY, customer_id TEXT NOT NULL, linked_at INTEGER NOT NULL);
            CREATE TABLE traits (customer_id TEXT PRIMARY KEY, loyalty_member INTEGER, email TEXT);
            """
        )
        db.execute(
            "INSERT INTO events (event_id, event_time, received_at, device_id, item_id, event_type) "
            f"VALUES ('old', {T0}, {T0}, 'd1', 'i1', 'view')"
        )
    reader = SQLiteStore(path, readonly=True)
    assert [(e["event_id"], e["recommendation_id"], e["position"]) for e in reader.iter_events()] == [
        ("old", None, None)
    ]
    assert reader.impressed(["x"]) == set() and reader.schema_version == 1
    reader.close()
    writer = SQLiteStore(path)
    assert writer.schema_version == 2
    shown = served()
    events, _ = validate_events(shown.impressions("product", device_id="d1", event_time=T0 + 1), T0)
    assert writer.append(events).accepted == 3
    assert [e["event_id"] for e in writer.iter_events()][0] == "old"
    assert [e["event_id"] for e in build_profile(writer, "device", "d1", now=T0).recent_events] == ["old"]
    assert writer.impressed([shown.recommendation_id]) == {shown.recommendation_id}
    writer.close()
