"""Benchmark: trigger evaluation throughput on the event store, and what the rules catch on logged data.

    python scripts/bench_triggers.py --bundle artifacts/runs/demo/bundle --shop artifacts/shops/<fingerprint>

The shop's events are imported into a fresh SQLite event store (`serving.events.export.import_events`; its
rate is reported too). The events before the last `--days` days are read into the shoppers' state without
checking (a follow run's warm-up); the rules are then checked after every online event of the last `--days`
days, as `intentrec triggers` does, `--repeats` times for each ONNX Runtime thread count, side by side: events
per second (all events read / seconds) with the shipped rules (`--rules`), medians over the repeats.

What the rules catch is measured in one more pass: one rule per threshold (exit >= t with a cart and no
purchase yet, abandon >= t with none yet), each firing once per session. For each: the sessions it fired in, the share of the sessions that held a cart
at some checked event, and its precision: exit rules, the share of fired sessions that ended without an online
purchase; abandonment rules, the share that ended with items in the cart and no purchase, beside the base rate
of the same outcome among all sessions that held a cart; and the median number of events the session still
had after the message (how early it fires). Results: JSON lines in benchmarks/results/triggers.jsonl and a
markdown summary (default benchmarks/results/triggers_<UTC time>.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from bench_common import append_results, environment  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.6, 0.7)
DAY_MS = 86_400_000


def sweep_rules(thresholds) -> list[dict]:
    rules = []
    for t in thresholds:
        rules.append(
            {
                "name": f"exit_{t}",
                "action": "exit_offer",
                "signal": "exit",
                "above": t,
                "needs": ["cart", "no_purchase"],
            }
        )
        rules.append(
            {"name": f"abandon_{t}", "action": "cart_push", "signal": "abandon", "above": t, "needs": ["no_purchase"]}
        )
    return rules


def outcomes(events: list[dict]) -> dict[str, dict]:
    """Per online session: whether it bought online, ended with items in the cart, held a cart at some point,
    and its event ids in order."""
    from intentrec.data.features import replay_cart

    by_session: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("channel") != "store" and e.get("session_id"):
            by_session[e["session_id"]].append(e)
    out = {}
    for session, rows in by_session.items():
        rows.sort(key=lambda e: (e["event_time"], e["seq"]))
        cart, _, _ = replay_cart((e["item_id"], e["event_type"], e.get("quantity"), e["event_time"]) for e in rows)
        bought = any(e["event_type"] == "purchase" for e in rows)
        out[session] = {
            "bought": bought,
            "abandoned": bool(cart) and not bought,
            "had_cart": any(e["event_type"] == "add_to_cart" for e in rows),
            "ids": [e["event_id"] for e in rows],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument("--shop", type=Path, required=True, help="the synthetic shop folder the bundle learned")
    parser.add_argument("--days", type=float, default=14.0, help="check the rules on the last this many days")
    parser.add_argument("--rules", type=Path, default=REPO / "conf" / "triggers" / "default.yaml")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "triggers.jsonl")
    parser.add_argument("--summary", type=Path, default=None)
    args = parser.parse_args()

    from intentrec.serving.events.export import import_events
    from intentrec.serving.events.store import open_store
    from intentrec.serving.recommender import Recommender
    from intentrec.serving.triggers import Stock, Triggers, load_rules, served_signals

    common = {"command": "python scripts/bench_triggers.py " + " ".join(
        f"--{k} {v}" for k, v in (("bundle", args.bundle), ("shop", args.shop), ("days", args.days)))}  # fmt: skip
    common.update(environment("numpy", "onnxruntime"))
    with tempfile.TemporaryDirectory() as root:
        store = open_store(f"sqlite:///{Path(root) / 'events.db'}")
        started = time.perf_counter()
        imported = import_events(args.shop, store)
        import_seconds = time.perf_counter() - started
        # The events as they happened (the shop's file is not in time order): the warm-up takes every event before
        # the cut-off, the rules are checked on the rest in time order.
        events = sorted(store.iter_events(), key=lambda e: (e["event_time"], e["seq"]))
        cutoff = events[-1]["event_time"] - int(args.days * DAY_MS)
        before = [e for e in events if e["event_time"] < cutoff]
        after = [e for e in events if e["event_time"] >= cutoff]
        truth = outcomes(after)

        def run(recommender, rules) -> tuple[float, Triggers, list[dict]]:
            triggers = Triggers(recommender, rules, store, Stock())
            triggers.warm(iter(before))
            started = time.perf_counter()
            messages = []
            for start in range(0, len(after), 2048):
                messages += triggers.feed(after[start : start + 2048])
            return time.perf_counter() - started, triggers, messages

        rows = []
        for threads in [int(t) for t in args.threads.split(",")]:
            recommender = Recommender(args.bundle, threads=threads)
            rules = load_rules(args.rules, served_signals(recommender))
            times = []
            for _ in range(args.repeats):
                seconds, triggers, messages = run(recommender, rules)
                times.append(seconds)
            seconds = statistics.median(times)
            rows.append(
                {
                    **common,
                    "rules": str(args.rules),
                    "threads": threads,
                    "events": len(after),
                    "checked": triggers.counts["checked"],
                    "scored": triggers.counts["scored"],
                    "messages": len(messages),
                    "fired": {r.name: triggers.counts[f"fired/{r.name}"] for r in rules},
                    "seconds": round(seconds, 3),
                    "events_per_s": round(len(after) / seconds, 1),
                    "repeats": args.repeats,
                }
            )
            print(rows[-1])
        _, _, fired_last = run(recommender, load_rules(sweep_rules(THRESHOLDS), served_signals(recommender)))
        store.close()
    with_cart = [s for s in truth.values() if s["had_cart"]]
    base = {
        "exit": sum(not s["bought"] for s in with_cart) / max(len(with_cart), 1),
        "abandon": sum(s["abandoned"] for s in with_cart) / max(len(with_cart), 1),
    }
    quality = []
    for rule in sweep_rules(THRESHOLDS):
        fired = [m for m in fired_last if m["rule"] == rule["name"] and m["session_id"] in truth]
        kind = rule["signal"]
        hit = [
            (not truth[m["session_id"]]["bought"]) if kind == "exit" else truth[m["session_id"]]["abandoned"]
            for m in fired
        ]
        left = [
            len(truth[m["session_id"]]["ids"]) - 1 - truth[m["session_id"]]["ids"].index(m["event_id"]) for m in fired
        ]
        quality.append(
            {
                **common,
                "rule": rule["name"],
                "signal": kind,
                "threshold": rule["above"],
                "fired_sessions": len(fired),
                "share_of_cart_sessions": round(len(fired) / max(len(with_cart), 1), 4),
                "precision": round(sum(hit) / max(len(hit), 1), 4),
                "base_rate": round(base[kind], 4),
                "median_events_after": statistics.median(left) if left else None,
            }
        )
        print(quality[-1])
    append_results(args.out, [*rows, *quality])
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    lines = [
        f"# Trigger evaluation ({stamp})",
        "",
        f"`{common['command']}`; git {common['git_commit']}.",
        "",
        f"Import into SQLite: {imported['accepted']} events in {import_seconds:.1f} s "
        f"({imported['accepted'] / import_seconds:,.0f} events/s). Rules checked on the last {args.days:g} days: "
        f"{len(after)} events in time order ({len(before)} before them read as warm-up), {len(truth)} online "
        f"sessions, {len(with_cart)} with a cart.",
        "",
        f"Throughput with `{args.rules.relative_to(REPO) if args.rules.is_relative_to(REPO) else args.rules}` "
        f"(median of {args.repeats}; scored: events at which some rule could fire, which the model scores):",
        "",
        "| ONNX threads | events/s | checked | scored | messages | seconds |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['threads']} | {r['events_per_s']:,.0f} | {r['checked']} | {r['scored']} | {r['messages']} | "
            f"{r['seconds']} |"
            for r in rows
        ],
        "",
        "What one rule per threshold catches:",
        "",
        "| rule | fired sessions | share of cart sessions | precision | base rate | median events after |",
        "|---|---|---|---|---|---|",
        *[
            f"| {q['signal']} >= {q['threshold']} | {q['fired_sessions']} | {q['share_of_cart_sessions']:.3f} | "
            f"{q['precision']:.3f} | {q['base_rate']:.3f} | {q['median_events_after']} |"
            for q in quality
        ],
        "",
        "Precision: exit rules, the share of fired sessions that ended without an online purchase; abandonment",
        "rules, the share that ended with items in the cart and no purchase. Base rate: the same among all sessions",
        "that held a cart.",
    ]
    summary = (
        args.summary
        or REPO / "benchmarks" / "results" / f"triggers_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md"
    )
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
