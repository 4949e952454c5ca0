"""The personalization platform part of the demo: ingest -> identify -> recommend by identity -> store
purchase -> abandoned cart -> campaign batch, on the real collector, event store and Triton server.

    python scripts/platform_demo.py --bundle artifacts/runs/demo/bundle                   # SQLite store
    python scripts/platform_demo.py --bundle artifacts/runs/demo/bundle --store redis     # a local redis-server

A shopper browses dresses on a phone without logging in and puts two in the cart, then logs in; later,
on a laptop, browses shoes. `recommend` is called with nothing but the identity (`device:phone-1`)
and the context; the serving step reads the profile from the store. An in-store purchase arrives from a
POS file; the abandoned-cart job, an email campaign batch and the trigger rules run on the same store and
models.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]

from bench_common import round_trips  # noqa: E402

from intentrec.serving.abandoned_carts import abandoned_cart_messages  # noqa: E402
from intentrec.serving.batch import campaign  # noqa: E402
from intentrec.serving.bundle import load_bundle  # noqa: E402
from intentrec.serving.client import Client, RecommendRequest  # noqa: E402
from intentrec.serving.events.local import Collector, RedisServer  # noqa: E402
from intentrec.serving.events.pos import import_pos  # noqa: E402
from intentrec.serving.events.store import open_store  # noqa: E402
from intentrec.serving.recommender import Recommender  # noqa: E402
from intentrec.serving.repository import ServingOptions, build  # noqa: E402
from intentrec.serving.server import TritonServer  # noqa: E402
from intentrec.serving.triggers import DEFAULT_RULES, Triggers, load_rules, run_batch, served_signals  # noqa: E402

MINUTE = 60_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "platform_demo")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    category_of, top = bundle.items_by_category()

    def mix(items, n=10):
        return ", ".join(f"{c} x{k}" for c, k in Counter(category_of[i] for i in items[:n]).most_common(4))

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    redis = RedisServer(args.work / "redis").start() if args.store == "redis" else None
    url = redis.url if redis else f"sqlite:///{args.work / 'events.db'}"
    now = int(time.time() * 1000)
    t0 = now - 3 * 60 * MINUTE
    try:
        with Collector(url, log_file=args.work / "collector.log") as collector:
            http = httpx.Client(base_url=collector.url, timeout=10)
            print(f"[platform] collector {collector.url} on {url}")
            dresses, shoes = top["dresses"][:5], top["shoes"][:6]
            phone = [
                {
                    "event_id": f"p{n}",
                    "event_time": t0 + n * 40_000,
                    "item_id": item,
                    "event_type": "view",
                    "device_id": "phone-1",
                    "session_id": "s-phone",
                    "device_type": "mobile",
                }
                for n, item in enumerate(dresses)
            ]
            phone += [
                {
                    "event_id": f"p-cart{n}",
                    "event_time": t0 + (6 + n) * 40_000,
                    "item_id": item,
                    "event_type": "add_to_cart",
                    "device_id": "phone-1",
                    "session_id": "s-phone",
                    "device_type": "mobile",
                }
                for n, item in enumerate(dresses[:2])
            ]
            bad = {"event_id": "oops", "item_id": dresses[0], "event_type": "clicked", "device_id": "phone-1"}
            reply = http.post("/v1/events", json={"events": [*phone, bad]}).json()
            print(f"\n1. ingest: 5 anonymous views + 2 cart adds on a phone, and one bad event -> {json.dumps(reply)}")

            repository = build(args.bundle, args.work / "repository", ServingOptions(profile_store=url))
            with (
                TritonServer(repository, None, None, None, log_file=args.work / "triton.log") as server,
                Client(server.grpc_url) as client,
            ):
                # Asked while the shopper is still browsing (30 s after the last event): after a pause of
                # minutes the synthetic shop's shoppers often switch intent, and the model knows it.
                r = client.recommend(
                    RecommendRequest(
                        identity="device:phone-1", device_type="mobile", now=phone[-1]["event_time"] + 30_000, k=10
                    )
                )
                print(
                    f"\n2. recommend(identity='device:phone-1') before login, 30 s after the last event: "
                    f"{mix(r.item_ids)}; profile {r.info['profile']}"
                )

                login = http.post(
                    "/v1/identify",
                    json={
                        "customer_id": "c-42",
                        "device_id": "phone-1",
                        "session_id": "s-phone",
                        "loyalty_member": True,
                        "email": "c42@example.com",
                    },
                ).json()
                laptop = [
                    {
                        "event_id": f"l{n}",
                        "event_time": t0 + 60 * MINUTE + n * 40_000,
                        "item_id": item,
                        "event_type": "view",
                        "customer_id": "c-42",
                        "device_id": "laptop-1",
                        "session_id": "s-laptop",
                        "device_type": "desktop",
                    }
                    for n, item in enumerate(shoes)
                ]
                http.post("/v1/events", json={"events": laptop})
                print(f"\n3. login on the phone -> {login}; then 6 views of shoes on a laptop")
                r = client.recommend(
                    RecommendRequest(
                        identity="device:phone-1", device_type="mobile", now=laptop[-1]["event_time"] + 30_000, k=10
                    )
                )
                print(
                    f"   recommend(identity='device:phone-1'), 30 s later: {mix(r.item_ids)}; profile {r.info['profile']}"
                )
                bought = r.item_ids[0]
                pos = args.work / "pos.csv"
                pos.write_text(
                    "receipt_id,time,customer_id,item_id,quantity,price,store_id\n"
                    f"r-1,{t0 + 90 * MINUTE},c-42,{bought},1,59.90,berlin-mitte\n"
                )
                store = open_store(url)
                print(
                    f"\n4. in-store purchase of {bought} ({category_of[bought]}) from a POS file -> {import_pos(pos, store)}"
                )
                r = client.recommend(RecommendRequest(identity="customer:c-42", device_type="mobile", k=10))
                print(
                    f"   {bought} still recommended: {bought in r.item_ids}; purchases in profile: {r.info['profile']['purchases']}"
                )
                if "complements" in r.info:
                    c = r.info["complements"]
                    print(
                        f"   complements of {c['after']} (learned at export: {c['categories']}) in the list: "
                        f"{[(i, category_of[i]) for i in c['items']]}, {c['placed']} placed by the rule"
                    )

                by_identity = RecommendRequest(identity="customer:c-42", device_type="mobile", k=20)
                history = store.events_of(store.identity_keys("customer", "c-42"), limit=100)[::-1]
                by_events = RecommendRequest(
                    item_ids=[e["item_id"] for e in history],
                    event_types=[e["event_type"] for e in history],
                    timestamps=[e["event_time"] for e in history],
                    device_type="mobile",
                    k=20,
                )
                a, b = round_trips(client, by_identity), round_trips(client, by_events)
                print(
                    f"   200 sequential gRPC calls, k=20: by identity (profile read in Triton) p50 {a[0]:.2f} ms "
                    f"p99 {a[1]:.2f} ms; the same {len(history)} events sent in the request p50 {b[0]:.2f} ms p99 {b[1]:.2f} ms"
                )

                profile = http.get("/v1/profile/customer:c-42").json()
                print(
                    f"\n5. GET /v1/profile/customer:c-42: devices {profile['devices']}, cart {profile['cart']}, "
                    f"purchases {[(p['item_id'], p['channel']) for p in profile['purchases']]}, loyalty {profile['loyalty_member']}"
                )
                recommender = Recommender(args.bundle, profile_store=store)
                messages = abandoned_cart_messages(store, recommender, after_minutes=60, k=4)
                for m in messages:
                    recs = [(i, category_of[i]) for i in m["recommendations"]]
                    print(
                        f"\n6. abandoned cart ({m['idle_minutes']:.0f} min idle): {m['channel']} to {m['to']}: "
                        f"cart {[(c['item_id'], category_of[c['item_id']]) for c in m['cart']]}, recommendations {recs}"
                    )
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "campaign.parquet"
                    summary = campaign(recommender, store.customers(), out, k=5, categories=["bags", "jewelry"])
                    import pyarrow.parquet as pq

                    rows = pq.read_table(out).to_pylist()
                    print(f"\n7. email campaign batch (bags, jewelry; top 5): {summary['rows']} rows, e.g. {rows[0]}")
                triggers = Triggers(recommender, load_rules(DEFAULT_RULES, served_signals(recommender)), store)
                fired = run_batch(triggers)
                last = recommender.intent([RecommendRequest(identity="customer:c-42", k=1)])[0].info["intent"]
                shown = {k: v for k, v in last.items() if k != "next_category"}
                print(
                    f"\n8. trigger rules (conf/triggers/default.yaml) over the {triggers.counts['events']} stored events "
                    f"({triggers.counts['checked']} online ones checked, {triggers.counts['scored']} scored): "
                    f"{[(m['message_id'], m['channel'], m['event_id']) for m in fired] or 'none fired'}; "
                    f"c-42's signals now {shown}, next category {last['next_category'][0]}"
                )
                store.close()
    finally:
        if redis is not None:
            redis.stop()
    print("\n[platform] collector, Triton and store stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
