"""Benchmark: the simulated shop against the live stack: throughput, an A/B test, A/A tests and a broken split.

    python scripts/bench_simulator.py --bundle artifacts/runs/demo/bundle --shop artifacts/shops/<fingerprint>
    python scripts/bench_simulator.py --bundle <bundle> --shop <shop> --shoppers 2000 --aa-seeds 20 --aa-shoppers 400

On loopback, with the real tritonserver and the real collector (SQLite), for each experiment below the
repository is built with the experiment, the server and a fresh collector start, and the simulator
(`serving.simulator`, `--workers` threads) plays the shoppers; the report (`serving.events.report`,
delta-method intervals) is computed from the collector's store:

1. model vs popularity, `--shoppers` shoppers: shoppers per second, and the report's conversion and
   revenue per session for both arms with the difference's interval;
2. A/A (two arms serving the model), `--aa-seeds` seeds of `--aa-shoppers` shoppers each (one server;
   each seed's shoppers are new people, so each seed is an independent A/A test): how many seeds show a
   significant difference in conversion rate (expected: about 5%);
3. a broken split: served 60/40, reported against its 50/50 configuration: the sample-ratio check;
4. exit-intent offers on against off (`--offer-shoppers` shoppers, two arms serving the model; the
   `offers` arm's shoppers about to leave with a cart get the on-site exit offer when the shipped rule
   fires, and buy after all with probability `--offer-save`): offers shown, conversion and revenue per
   session per arm with the difference's interval.

`--parts` picks some of them (ab,aa,broken,offers).

Results: JSON lines in benchmarks/results/simulator.jsonl and a printed summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from bench_common import REPO, append_results, environment

EXPERIMENTS = {
    "ab": [{"name": "model", "share": 0.5}, {"name": "popularity", "share": 0.5, "policy": "popularity"}],
    "aa": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}],
    "broken": [{"name": "a", "share": 0.6}, {"name": "b", "share": 0.4}],
    "offers": [{"name": "control", "share": 0.5}, {"name": "offers", "share": 0.5}],
}


def serve_and_simulate(
    bundle,
    world,
    root: Path,
    name: str,
    seeds: list[int],
    shoppers: int,
    workers: int,
    model=None,
    columns=(),
    rules=None,
):
    """Build, serve, simulate every seed; returns (the store's events, throughput summaries)."""
    import json

    from intentrec.serving.events.export import read_frame
    from intentrec.serving.events.local import Collector
    from intentrec.serving.events.report import READ
    from intentrec.serving.events.store import open_store
    from intentrec.serving.repository import ServingOptions, build
    from intentrec.serving.server import TritonServer
    from intentrec.serving.simulator import run

    config = root / f"{name}.yaml"
    config.write_text(json.dumps({"name": name, "salt": f"{name}-bench", "arms": EXPERIMENTS[name]}))
    repository = build(bundle, root / f"repository-{name}", ServingOptions(experiment_ab=str(config)))
    url = f"sqlite:///{root / f'{name}.db'}"
    summaries = []
    with (
        TritonServer(repository, None, None, None, log_file=root / f"{name}.log", backend_root=root / "b") as server,
        Collector(url, log_file=root / f"collector-{name}.log") as collector,
    ):
        for seed in seeds:
            summaries.append(
                run(
                    world,
                    server.grpc_url,
                    collector.url,
                    shoppers,
                    seed=seed,
                    workers=workers,
                    model=model,
                    rules=rules,
                )
            )
    store = open_store(url, readonly=True)
    frame = read_frame(store, (*READ, *columns))
    store.close()
    return frame, summaries


def arm_metrics(result: dict, treatment: str, names: tuple[str, ...]) -> dict:
    """Per metric of a report (serving.events.report): each arm's value, and `treatment` against the control (the
    difference's interval and whether it excludes zero)."""
    out = {}
    for name in names:
        metric, against = result["metrics"][name], result["metrics"][name]["vs_control"][treatment]
        out[name] = {
            "arms": {arm: round(v["value"], 4) for arm, v in metric["arms"].items()},
            "difference_ci": [round(x, 4) for x in against["difference_ci"]],
            "significant": against["significant"],
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "runs" / "demo" / "bundle")
    parser.add_argument(
        "--shop",
        type=Path,
        default=None,
        help="the shop the bundle was trained on (default: the only one under artifacts/shops)",
    )
    parser.add_argument("--shoppers", type=int, default=2000)
    parser.add_argument("--aa-seeds", type=int, default=20)
    parser.add_argument("--aa-shoppers", type=int, default=400)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--offer-shoppers", type=int, default=4000)
    parser.add_argument("--offer-save", type=float, default=0.25)
    parser.add_argument(
        "--offer-above", type=float, default=None, help="the exit offer's threshold (default: the shipped rule's)"
    )
    parser.add_argument("--parts", default="ab,aa,broken,offers")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "simulator.jsonl")
    args = parser.parse_args()
    from intentrec.data.synthetic import World
    from intentrec.serving.events.report import ReportSettings, report

    shops = sorted((REPO / "artifacts" / "shops").glob("*/shop.json"))
    shop = args.shop or (shops[0].parent if len(shops) == 1 else None)
    if shop is None or not (args.bundle / "manifest.json").is_file():
        print("error: give --bundle <export bundle> and --shop <the synthetic shop it was trained on>", file=sys.stderr)
        return 2
    world = World.from_shop(shop)
    parts = set(args.parts.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-simulator-") as tmp:
        root = Path(tmp)
        if "ab" in parts:
            events, summaries = serve_and_simulate(args.bundle, world, root, "ab", [0], args.shoppers, args.workers)
            ab = report(events, ReportSettings(experiment="ab", shares={"model": 0.5, "popularity": 0.5}))
            metrics = arm_metrics(ab, "popularity", ("conversion_rate", "revenue_per_session", "ctr"))
            rows.append({"benchmark": "simulator", "experiment": "model_vs_popularity", **summaries[0],
                         "units": ab["shoppers"], "metrics": metrics})  # fmt: skip
            print(
                f"model vs popularity, {args.shoppers} shoppers: {summaries[0]['shoppers_per_second']} shoppers/s; {metrics}"
            )

        if "aa" in parts:
            seeds = list(range(100, 100 + args.aa_seeds))
            events, summaries = serve_and_simulate(
                args.bundle, world, root, "aa", seeds, args.aa_shoppers, args.workers
            )
            significant, p_values = 0, []
            for seed in seeds:
                own = events[events["session_id"].str.startswith(f"sim{seed}-")]
                result = report(own, ReportSettings(experiment="aa", shares={"a": 0.5, "b": 0.5}))
                comparison = result["metrics"]["conversion_rate"]["vs_control"]["b"]
                significant += comparison["significant"]
                p_values.append(round(comparison["p_value"], 4))
            rows.append({"benchmark": "simulator", "experiment": "aa", "seeds": len(seeds), "shoppers": args.aa_shoppers,
                         "significant_conversion": significant, "p_values": p_values,
                         "shoppers_per_second": [s["shoppers_per_second"] for s in summaries]})  # fmt: skip
            print(f"A/A: {significant} of {len(seeds)} seeds significant in conversion (p: {p_values})")

        if "broken" in parts:
            events, _ = serve_and_simulate(args.bundle, world, root, "broken", [7], args.shoppers, args.workers)
            broken = report(events, ReportSettings(experiment="broken", shares={"a": 0.5, "b": 0.5}))["sample_ratio"]
            honest = report(events, ReportSettings(experiment="broken", shares={"a": 0.6, "b": 0.4}))["sample_ratio"]
            rows.append({"benchmark": "simulator", "experiment": "served 60/40, configured 50/50", "shoppers": args.shoppers,
                         "srm_p_value": broken["p_value"], "mismatch": broken["mismatch"],
                         "against_60_40": {"p_value": honest["p_value"], "mismatch": honest["mismatch"]}})  # fmt: skip
            print(
                f"broken split: units {broken['shoppers']}, p = {broken['p_value']:.3g}, mismatch {broken['mismatch']}"
            )
        if "offers" in parts:
            from intentrec.serving.simulator import ShopperModel
            from intentrec.serving.triggers import DEFAULT_RULES, load_rules

            model = ShopperModel(exit_offers_arm="offers", offer_save=args.offer_save)
            rules = [r for r in load_rules(DEFAULT_RULES) if r.action == "exit_offer"]
            if args.offer_above is not None:
                rules = [dataclasses.replace(r, above=args.offer_above) for r in rules]
            events, summaries = serve_and_simulate(
                args.bundle,
                world,
                root,
                "offers",
                [11],
                args.offer_shoppers,
                args.workers,
                model,
                ("placement",),
                rules,
            )
            result = report(events, ReportSettings(experiment="offers", shares={"control": 0.5, "offers": 0.5}))
            shown = events[events["placement"] == "exit_offer"]
            metrics = arm_metrics(result, "offers", ("conversion_rate", "revenue_per_session", "cart_abandonment_rate"))
            rows.append({"benchmark": "simulator", "experiment": "exit offers on vs off", **summaries[0],
                         "offer_save": args.offer_save, "offer_above": rules[0].above, "offers_shown": int(shown["session_id"].nunique()),
                         "sessions": result["sessions"], "metrics": metrics})  # fmt: skip
            print(
                f"exit offers, {args.offer_shoppers} shoppers: offers shown in {rows[-1]['offers_shown']} sessions; {metrics}"
            )
    for row in rows:
        row.update(bundle=str(args.bundle), shop=str(shop), **environment("numpy", "pandas"))
    append_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
