"""The serving part of the demo: start Triton on a bundle, send example requests, stop.

    python scripts/serving_demo.py --bundle artifacts/runs/demo/bundle --data-dir artifacts/data/synthetic

Shows (1) an intent shift inside a session moving the recommendations to the new category, (2) the
device context changing what a returning shopper is shown, as the synthetic shop's ground truth says,
(3) the business rules, (4) similar items, and the round-trip latency of each call (loopback, gRPC).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from bench_common import round_trips  # noqa: E402

from intentrec.serving.bundle import load_bundle  # noqa: E402
from intentrec.serving.client import Client, RecommendRequest  # noqa: E402
from intentrec.serving.repository import build  # noqa: E402
from intentrec.serving.server import TritonServer  # noqa: E402

T0 = 1_772_000_000_000  # ms; a Wednesday morning (UTC)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared synthetic data (finds the shop's truth)")
    parser.add_argument("--repository", type=Path, default=REPO / "artifacts" / "triton" / "demo_repository")
    args = parser.parse_args()

    stats = json.loads((args.data_dir / "stats.json").read_text())
    truth = json.loads((Path(stats["source_files"][0]["path"]).parent / "truth" / "effects.json").read_text())
    bundle = load_bundle(args.bundle)
    category_of, top = bundle.items_by_category()

    def show(title, reply, n=10):
        counts = Counter(category_of[i] for i in reply.item_ids[:n])
        print(f"  {title:44} top-{n} categories: " + ", ".join(f"{c} x{k}" for c, k in counts.most_common(4)))

    repository = build(args.bundle, args.repository)
    print(f"[serving] repository {repository}; starting tritonserver (127.0.0.1) ...", flush=True)
    started = time.perf_counter()
    with TritonServer(repository, None, None, None, log_file=repository.parent / "demo_server.log") as server:
        print(
            f"[serving] ready in {time.perf_counter() - started:.1f} s: gRPC {server.grpc_url}, HTTP {server.http_url}"
        )
        with Client(server.grpc_url) as client:
            old, new = "dresses", truth["complements"]["dresses"][0]
            print(f"\n1. intent shift inside a session ({old} -> {new}, a complement in the shop's truth)")
            views = top[old][:4]
            times = [T0 + i * 40_000 for i in range(6)]
            before = client.recommend(RecommendRequest(item_ids=views, timestamps=times[:4], now=times[3] + 30_000))
            show(f"4 views of {old}", before)
            after = client.recommend(
                RecommendRequest(item_ids=views + top[new][:2], timestamps=times, now=times[5] + 30_000)
            )
            show(f"... then 2 views of {new}", after)
            for label, reply in ((f"after the {old}", before), (f"after the {new}", after)):
                if reply.intent:  # a model with intent heads (intent.heads=second_stage)
                    signals, top3 = reply.intent, reply.intent.get("next_category", [])
                    print(f"  intent {label:36} purchase {signals.get('purchase', float('nan')):.2f}, exit "
                          f"{signals.get('exit', float('nan')):.2f}, next category "
                          + ", ".join(f"{c['category']} {c['p']:.2f}" for c in top3))  # fmt: skip

            print("\n2. context: a shopper returning after two days, same history, another device")
            boosts = truth["context_boosts"]["device_type"]
            history = top["books"][:3]
            for device in ("desktop", "mobile"):
                reply = client.recommend(
                    RecommendRequest(
                        item_ids=history,
                        timestamps=times[:3],
                        now=T0 + 2 * 86_400_000,
                        device_type=device,
                        k=20,
                    )
                )
                share = {
                    d: np.mean([category_of[i] in boosts[d] for i in reply.item_ids]) for d in ("desktop", "mobile")
                }
                show(f"device={device}", reply, 20)
                print(
                    f"  {'':44} share in desktop-favoured {boosts['desktop']}: {share['desktop']:.2f}, "
                    f"mobile-favoured {boosts['mobile']}: {share['mobile']:.2f}"
                )

            print("\n3. business rules")
            shoes = top["shoes"][:3]
            events = RecommendRequest(
                item_ids=shoes,
                event_types=["view", "purchase", "add_to_cart"],
                timestamps=times[:3],
                now=times[3],
                k=50,
            )
            reply = client.recommend(events)
            print(
                f"  bought {shoes[1]} excluded: {shoes[1] not in reply.item_ids}; in cart {shoes[2]} kept: {shoes[2] in reply.item_ids}"
            )
            events.exclude_in_cart, events.categories, events.k = True, ["bags"], 5
            reply = client.recommend(events)
            print(
                f"  exclude_in_cart + categories=['bags']: {reply.item_ids} ({set(category_of[i] for i in reply.item_ids)})"
            )
            reply = client.recommend(RecommendRequest(item_ids=["never-seen"], device_type="fridge", k=3))
            print(f"  unknown item and device: fallback={reply.info['fallback']}, info={reply.info}")

            print("\n4. similar items")
            reply = client.similar_items([top["cameras"][0]], k=5)
            print(f"  like {top['cameras'][0]} ({'cameras'}): {[(i, category_of[i]) for i in reply.item_ids]}")

            request = RecommendRequest(item_ids=views + top[new][:2], timestamps=times, now=times[5] + 30_000, k=20)
            p50, p99 = round_trips(client, request)
            print(
                f"\n[serving] recommend round trip over gRPC, k=20, 200 sequential calls: p50 {p50:.2f} ms, "
                f"p99 {p99:.2f} ms ({bundle.num_items:,} items)"
            )
    print("[serving] tritonserver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
