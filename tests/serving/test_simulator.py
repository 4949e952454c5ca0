"""The closed loop end to end: simulated shoppers, the real Triton server with an experiment, the real
collector, attribution and the report."""

from __future__ import annotations

import json
import shutil

import pytest

from intentrec.data.synthetic import World
from intentrec.serving.events.__main__ import main as events_main
from intentrec.serving.events.local import Collector
from intentrec.serving.repository import ServingOptions, build
from intentrec.serving.server import TritonServer
from intentrec.serving.simulator import run

SHOPPERS = 2000


@pytest.fixture(scope="module")
def shop(serving_run):
    artifacts, _ = serving_run
    return World.from_shop(next((artifacts / "shops").iterdir()))


@pytest.mark.slow
def test_the_model_arm_beats_popularity_on_the_shops_goal_metrics_from_the_report_alone(bundle, shop, tmp_path):
    config = tmp_path / "three_arms.yaml"
    config.write_text(
        "name: loop\nsalt: loop-1\narms:\n"
        "  - {name: model, share: 0.4}\n"
        "  - {name: popularity, share: 0.3, policy: popularity}\n"
        "  - {name: explore, share: 0.3, explore: 0.5, explore_pool: 20}\n"
    )
    repository = build(bundle, tmp_path / "repository", ServingOptions(experiment_ab=str(config)))
    url = f"sqlite:///{tmp_path / 'events.db'}"
    with (
        TritonServer(repository, None, None, None, log_file=tmp_path / "server.log", backend_root=tmp_path / "b") as s,
        Collector(url, log_file=tmp_path / "collector.log") as collector,
    ):
        summary = run(shop, s.grpc_url, collector.url, SHOPPERS, seed=0, workers=4)
    print(json.dumps(summary))
    assert summary["shoppers"] == SHOPPERS and summary["events"] > 20 * SHOPPERS
    out = tmp_path / "report"
    assert events_main(["report", f"store={url}", f"experiment_ab={config}", f"out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    print(json.dumps({k: report[k] for k in ("shoppers", "sessions", "sample_ratio")}, indent=1))
    for name, metric in report["metrics"].items():
        print(name, {a: round(v["value"], 4) for a, v in metric["arms"].items()}, metric["vs_control"])
    assert report["control"] == "model" and not report["sample_ratio"]["mismatch"]
    for metric in ("conversion_rate", "revenue_per_session", "ctr"):
        popularity = report["metrics"][metric]["vs_control"]["popularity"]
        # popularity against the model: lower, and the interval of the difference excludes zero
        assert popularity["significant"] and popularity["difference_ci"][1] < 0, (metric, popularity)
    assert events_main(["attribute", f"store={url}", f"out={tmp_path / 'attribution'}"]) == 0
    attribution = json.loads((tmp_path / "attribution" / "attribution.json").read_text())
    arms = {row["arm"]: row for row in attribution["by_arm"]}
    assert arms["model"]["last_purchase"] > arms["popularity"]["last_purchase"]
    assert attribution["counts"]["clicks_unmatched"] == 0
    # Off-policy: the exploring arm's logs predict the greedy model's clicks per list, which the model arm
    # measured on its own traffic.
    estimate_out = tmp_path / "off_policy"
    assert events_main(["estimate", f"store={url}", f"bundle={bundle}", "experiment=loop", "arm=explore",
                        f"out={estimate_out}"]) == 0  # fmt: skip
    estimate = json.loads((estimate_out / "off_policy.json").read_text())
    print(json.dumps(estimate, indent=1))
    ctr = report["metrics"]["ctr"]["arms"]
    actual, actual_ci = ctr["model"]["value"] * 10, [v * 10 for v in ctr["model"]["ci"]]
    logging = estimate["logging_clicks_per_list"]
    for name in ("ips", "snips"):
        value, (low, high) = (
            estimate["candidate_clicks_per_list"][name],
            estimate["candidate_clicks_per_list"][f"{name}_ci"],
        )
        assert abs(value - actual) < (high - low) / 2 + (actual_ci[1] - actual_ci[0]) / 2, (name, value, actual)
    assert estimate["lists_not_rebuilt"] == 0 and estimate["candidate_clicks_per_list"]["matched"] > 0.3
    assert logging["ci"][0] > 0  # the exploring arm's own clicks, for the record
    shutil.rmtree(repository, ignore_errors=True)


def test_the_simulator_command_names_a_bad_count(capsys):
    from intentrec.serving.simulator import main

    assert main(["--shop", "/nonexistent/shop", "--shoppers", "0"]) == 2
    assert "--shoppers 0; expected at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_exit_offers_on_against_off_in_one_experiment(bundle, shop, tmp_path):
    """Shoppers of the `offers` arm about to leave with a cart get the on-site exit offer when its rule fires (here
    at any exit probability), see its list and buy after all with probability offer_save: the report shows it."""
    from intentrec.serving.simulator import ShopperModel
    from intentrec.serving.triggers import load_rules

    config = tmp_path / "offers.yaml"
    config.write_text(
        "name: offers\nsalt: offers-1\narms:\n  - {name: control, share: 0.5}\n  - {name: offers, share: 0.5}\n"
    )
    rules = load_rules([{"name": "exit_offer", "action": "exit_offer", "signal": "exit", "above": 0.0,
                         "needs": ["cart", "no_purchase"], "k": 4}])  # fmt: skip
    repository = build(bundle, tmp_path / "repository", ServingOptions(experiment_ab=str(config)))
    url = f"sqlite:///{tmp_path / 'events.db'}"
    model = ShopperModel(exit_offers_arm="offers", offer_save=0.6)
    with (
        TritonServer(repository, None, None, None, log_file=tmp_path / "server.log", backend_root=tmp_path / "b") as s,
        Collector(url, log_file=tmp_path / "collector.log") as collector,
    ):
        run(shop, s.grpc_url, collector.url, 800, seed=3, workers=4, model=model, rules=rules)
    from intentrec.serving.events.export import read_frame
    from intentrec.serving.events.report import READ, ReportSettings, report
    from intentrec.serving.events.store import open_store

    store = open_store(url, readonly=True)
    events = read_frame(store, (*READ, "placement"))
    store.close()
    offers = events[events["placement"] == "exit_offer"]
    assert len(offers) > 40 and set(offers["arm"]) == {"offers"}  # shown in the offers arm only
    shown_sessions = set(offers["session_id"])
    carts = set(events.loc[events["event_type"] == "add_to_cart", "session_id"])
    assert shown_sessions <= carts  # only to shoppers with a cart
    result = report(events, ReportSettings(experiment="offers", shares={"control": 0.5, "offers": 0.5}))
    conversion = result["metrics"]["conversion_rate"]
    assert not result["sample_ratio"]["mismatch"]
    assert conversion["arms"]["offers"]["value"] > conversion["arms"]["control"]["value"], conversion
    assert conversion["vs_control"]["offers"]["difference_ci"][1] > 0
