"""The experiment report: metrics by hand, a real lift found, A/A false positives, sample-ratio check, CUPED."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from intentrec.errors import DataError
from intentrec.serving.events.__main__ import main as events_main
from intentrec.serving.events.export import export_events
from intentrec.serving.events.report import ReportSettings, report
from intentrec.serving.events.schema import validate_events
from intentrec.serving.events.store import SQLiteStore
from intentrec.serving.experiments import Experiment

T0 = 1_790_000_000_000
MIN = 60_000
COLUMNS = ("event_id", "event_time", "session_id", "customer_id", "device_id", "item_id", "event_type", "price",
           "quantity", "experiment", "arm")  # fmt: skip


def frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=list(COLUMNS))
    out["event_time"] = out["event_time"].astype("int64")
    out["price"] = pd.to_numeric(out["price"])
    out["quantity"] = pd.to_numeric(out["quantity"])
    return out


def session(shopper: str, sid: str, arm: str | None, at: int, actions: list[tuple], experiment: str = "exp"):
    """A session of (kind, minute, item[, price, quantity]) actions from `at`; exposed to `experiment` (an impression
    of two items at `at`) unless `arm` is None."""
    rows = [
        {"event_id": f"{sid}-imp{p}", "event_time": T0 + at * MIN, "session_id": sid, "device_id": shopper,
         "item_id": f"i{p}", "event_type": "impression", "experiment": experiment, "arm": arm}
        for p in (1, 2) if arm is not None
    ]  # fmt: skip
    for n, (kind, minute, item, *rest) in enumerate(actions):
        row = {"event_id": f"{sid}-{n}", "event_time": T0 + (at + minute) * MIN, "session_id": sid,
               "device_id": shopper, "item_id": item, "event_type": kind}  # fmt: skip
        if rest:
            row["price"], row["quantity"] = rest
        rows.append(row)
    return rows


def test_each_metric_is_the_ratio_it_names_over_the_arm_shoppers():
    rows = [
        # arm a: shopper d1 (2 sessions), d2 (1 session)
        *session(
            "d1",
            "s1",
            "a",
            0,
            [("view", 0, "i1"), ("click", 1, "i1"), ("add_to_cart", 2, "i1"), ("purchase", 4, "i1", 10.0, 2)],
        ),  # fmt: skip
        *session("d1", "s2", "a", 100, [("view", 0, "i2")]),  # a bounce
        *session("d2", "s3", "a", 0, [("view", 0, "i1"), ("view", 3, "i2"), ("add_to_cart", 6, "i2")]),  # abandoned
        # arm b: shopper d3
        *session("d3", "s4", "b", 0, [("view", 0, "i1"), ("view", 2, "i2"), ("purchase", 10, "i2", 5.0, 1)]),
        # a session without an impression of the experiment: not counted
        {
            "event_id": "x",
            "event_time": T0,
            "session_id": "s9",
            "device_id": "d1",
            "item_id": "i1",
            "event_type": "view",
        },
    ]
    document = report(frame(rows), ReportSettings(shares={"a": 0.5, "b": 0.5}))
    a = {name: m["arms"]["a"]["value"] for name, m in document["metrics"].items()}
    assert document["shoppers"] == {"a": 2, "b": 1} and document["sessions"] == {"a": 3, "b": 1}
    assert a["ctr"] == pytest.approx(1 / 6)
    assert a["add_to_cart_rate"] == pytest.approx(2 / 3)
    assert a["conversion_rate"] == pytest.approx(1 / 3)
    assert a["revenue_per_session"] == pytest.approx(20 / 3)
    assert a["aov"] == pytest.approx(20.0)
    assert a["cart_abandonment_rate"] == pytest.approx(1 / 2)
    assert a["bounce_rate"] == pytest.approx(1 / 3)
    assert a["page_views_per_session"] == pytest.approx(4 / 3)
    assert a["time_on_site_minutes"] == pytest.approx((4 + 0 + 6) / 3)
    b = document["metrics"]["revenue_per_session"]["arms"]["b"]["value"]
    assert b == pytest.approx(5.0)
    assert document["metrics"]["revenue_per_session"]["vs_control"]["b"]["lift"] == pytest.approx(5.0 / (20 / 3) - 1)


def test_events_without_an_exposure_say_how_to_get_one():
    plain = frame([{"event_id": "v", "event_time": T0, "session_id": "s", "device_id": "d", "item_id": "i1",
                    "event_type": "view"}])  # fmt: skip
    with pytest.raises(
        DataError, match=r"no impression in these events carries an experiment; serve with experiment_ab"
    ):
        report(plain)


def simulated(seed, shoppers, rates, split, pre_period=False, shape=2.0, visits=(1, 4)):
    """Shoppers with 1-3 sessions and a personal propensity; each session converts with the arm's rate
    times the propensity (gamma, mean 1, variance 1 / `shape`); with `pre_period`, the same shoppers also
    have sessions before the experiment."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(shoppers):
        shopper = f"d{seed}-{s}"
        arm = split.assign(f"device:{shopper}").name
        propensity = rng.gamma(shape, 1 / shape)
        periods = [("pre", -10_000, None), ("exp", 0, arm)] if pre_period else [("exp", 0, arm)]
        for period, offset, label in periods:
            for n in range(int(rng.integers(*visits))):
                sid = f"{shopper}-{period}{n}"
                at = offset + n * 200
                bought = rng.random() < min(1.0, rates[arm] * propensity)
                actions = [("view", 0, "i1")] + (
                    [("purchase", 5, "i1", float(rng.uniform(5, 50)), 1)] if bought else []
                )
                rows += session(shopper, sid, label, at, actions, experiment=split.name)
    return frame(rows)


def two_arms(name="exp", a=0.5) -> Experiment:
    return Experiment.from_dict(
        {"name": name, "salt": f"{name}-salt", "arms": [{"name": "a", "share": a}, {"name": "b", "share": 1 - a}]}
    )


def test_a_real_lift_is_found_by_both_interval_methods():
    split = two_arms()
    events = simulated(1, 3000, {"a": 0.10, "b": 0.14}, split)
    for ci in ("delta", "bootstrap"):
        document = report(events, ReportSettings(ci=ci, bootstrap=400))
        conversion = document["metrics"]["conversion_rate"]["vs_control"]["b"]
        assert conversion["significant"] and conversion["lift"] > 0, (ci, conversion)
        assert conversion["lift_ci"][0] > 0 and conversion["difference_ci"][0] > 0
    assert not document["sample_ratio"]["mismatch"]


def test_an_aa_split_is_significant_in_about_five_percent_of_seeds():
    split = two_arms("aa")
    significant = 0
    for seed in range(20):
        document = report(simulated(100 + seed, 600, {"a": 0.12, "b": 0.12}, split), ReportSettings())
        significant += document["metrics"]["conversion_rate"]["vs_control"]["b"]["significant"]
    assert significant <= 2, significant


def test_a_split_that_does_not_follow_its_configuration_is_caught():
    events = simulated(7, 2000, {"a": 0.1, "b": 0.1}, two_arms("srm", a=0.6))  # served 60/40
    broken = report(events, ReportSettings(shares={"a": 0.5, "b": 0.5}))  # configured 50/50
    assert broken["sample_ratio"]["mismatch"] and broken["sample_ratio"]["p_value"] < 1e-6
    honest = report(events, ReportSettings(shares={"a": 0.6, "b": 0.4}))
    assert not honest["sample_ratio"]["mismatch"]


def test_cuped_narrows_the_interval_when_past_behaviour_predicts_the_metric():
    events = simulated(3, 3000, {"a": 0.2, "b": 0.2}, two_arms("cuped"), pre_period=True, shape=0.5, visits=(3, 7))
    plain = report(events, ReportSettings())["metrics"]["conversion_rate"]
    adjusted = report(events, ReportSettings(cuped_before=T0 - 100 * MIN))["metrics"]["conversion_rate"]
    width = lambda m: m["vs_control"]["b"]["difference_ci"][1] - m["vs_control"]["b"]["difference_ci"][0]  # noqa: E731
    assert adjusted["cuped_theta"] > 0 and width(adjusted) < 0.97 * width(plain)
    assert abs(adjusted["vs_control"]["b"]["difference"]) < 0.03  # still centred on no difference


def test_the_report_command_reads_a_store_writes_its_files_and_names_bad_settings(tmp_path, capsys):
    store = SQLiteStore(tmp_path / "events.db")
    events = simulated(5, 200, {"a": 0.1, "b": 0.3}, two_arms("cli"))
    raw = [{k: v for k, v in row.items() if v is not None and v == v} for row in events.to_dict("records")]
    valid, rejected = validate_events([{**r, "recommendation_id": "r", "position": 1, "placement": "home"}
                                       if r["event_type"] == "impression" else r for r in raw], T0)  # fmt: skip
    assert rejected == []
    store.append(valid)
    config = tmp_path / "cli.yaml"
    config.write_text("name: cli\nsalt: cli-salt\narms:\n  - {name: a, share: 0.5}\n  - {name: b, share: 0.5}\n")
    out = tmp_path / "report"
    url = f"sqlite:///{tmp_path / 'events.db'}"
    assert (
        events_main(
            ["report", f"store={url}", f"experiment_ab={config}", f"out={out}", "ci=bootstrap", "bootstrap=200"]
        )
        == 0
    )
    document = json.loads((out / "report.json").read_text())
    assert set(document["shoppers"]) == {"a", "b"} and (out / "report.png").stat().st_size > 10_000
    assert "| conversion rate |" in (out / "report.md").read_text()
    export_events(store, tmp_path / "export")
    assert events_main(["report", f"events={tmp_path / 'export'}", "experiment=cli", f"out={tmp_path / 'r2'}"]) == 0
    capsys.readouterr()
    assert events_main(["report", f"store={url}", "experiment=nope", f"out={out}"]) == 2
    assert "experiment='nope'; the events hold experiments ['cli']" in capsys.readouterr().err
    assert events_main(["report", f"store={url}", "experiment=cli", "control=c", f"out={out}"]) == 2
    assert "control='c'; the experiment 'cli' has arms ['a', 'b']" in capsys.readouterr().err
    assert events_main(["report", f"store={url}", "ci=exact", f"out={out}"]) == 2
    assert "ci='exact'; expected delta or bootstrap" in capsys.readouterr().err
    assert events_main(["report", f"store={url}", "cuped_before=yesterday", f"out={out}"]) == 2
    assert "cuped_before='yesterday'; expected epoch milliseconds or an ISO 8601 time" in capsys.readouterr().err
