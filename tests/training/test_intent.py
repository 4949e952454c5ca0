"""Intent labels, probability metrics, calibration and the session-feature baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from intentrec.data import schema
from intentrec.training.datamodule import Split
from intentrec.training.intent import (
    apply_isotonic,
    auc,
    available_heads,
    binary_metrics,
    fit_isotonic,
    fit_logistic,
    fit_temperature,
    intent_labels,
    predict_logistic,
    session_features,
)

EVENT_TYPES = ["<pad>", *schema.EVENT_TYPES]  # the prepared vocabulary
V, A, R, P = 1, 2, 3, 4


def split(rows: list[list[tuple]]) -> Split:
    """Rows of (item, event code, new session, gap seconds, device, hour) steps."""
    flat = [step for row in rows for step in row]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    column = lambda i, dtype: np.array([s[i] for s in flat], dtype)  # noqa: E731
    return Split(
        offsets=offsets,
        steps={
            "item_ids": column(0, np.int64),
            "event_types": column(1, np.int8),
            "new_session": column(2, bool),
            "time_gaps": column(3, np.int32),
            "device_types": column(4, np.int8),
            "hours": column(5, np.int8),
            "quantities": np.ones(len(flat), np.int16),
        },
        customer_known=np.ones(len(rows), bool),
        loyalty=np.zeros(len(rows), np.int8),
    )


CATEGORY = np.array([0, 10, 10, 20, 20, 30])  # item -> category code (item 0 is padding)


def test_labels_follow_each_session_to_its_end():
    data = split(
        [
            [  # session 1: views, a cart, a purchase, one more view; session 2: a cart left behind
                (1, V, 1, -1, 1, 10), (2, A, 0, 30, 1, 10), (2, P, 0, 60, 1, 10), (3, V, 0, 20, 1, 10),
                (4, V, 1, 9000, 2, 21), (4, A, 0, 40, 2, 21), (5, V, 0, 10, 2, 21),
            ],
            [(5, V, 0, -1, 3, 3), (1, A, 0, 5, 3, 3), (1, R, 0, 5, 3, 3)],  # a row starts a session; cart emptied
        ]
    )  # fmt: skip
    labels = intent_labels(data, EVENT_TYPES, CATEGORY)
    assert labels["purchase"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert labels["exit"].tolist() == [0, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert labels["abandon"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert labels["next_category"].tolist() == [10, 10, 20, -1, 20, 30, -1, 10, 10, -1]
    features = session_features(data)
    assert features[:, 0].tolist() == pytest.approx(np.log1p([1, 2, 3, 4, 1, 2, 3, 1, 2, 3]).tolist())
    assert features[:, 2].tolist() == [0, 1, 0, 0, 0, 1, 1, 0, 1, 0]  # cart size so far
    assert features[1, 1] == pytest.approx(np.log1p(0.5)) and features[4, 1] == 0  # minutes in the session
    assert available_heads(labels) == dict.fromkeys(("purchase", "exit", "abandon", "next_category"))
    browsing = split([[(1, V, 1, -1, 1, 10), (2, V, 0, 5, 1, 10)]])
    reasons = available_heads(intent_labels(browsing, EVENT_TYPES, None))
    assert reasons["purchase"] == "the data has no purchase events"
    assert reasons["next_category"] == "the items have no categories (items.parquet: category_id)"


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in p[y == 1] for b in p[y == 0]])
    assert auc(p, y) == pytest.approx(brute)
    assert auc(np.r_[0.5, 0.5, 0.5], np.r_[1, 0, 1]) == 0.5
    metrics = binary_metrics(np.full(1000, 0.3), (np.arange(1000) < 300).astype(int))
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-12) and metrics["brier"] == pytest.approx(0.21)
    assert metrics["log_loss"] == pytest.approx(-(0.3 * np.log(0.3) + 0.7 * np.log(0.7)))


def test_calibration_recovers_a_known_temperature_and_isotonic_is_monotone():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, 20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-logits / 2.5))).astype(int)
    assert fit_temperature(logits, y) == pytest.approx(2.5, rel=0.05)
    overconfident = 1 / (1 + np.exp(-logits))
    model = fit_isotonic(overconfident, y)
    calibrated = apply_isotonic(model, overconfident)
    assert np.all(np.diff(model[1]) >= 0)
    assert binary_metrics(calibrated, y)["ece"] < 0.3 * binary_metrics(overconfident, y)["ece"]


def test_the_baseline_learns_a_signal_in_its_features():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 3))
    y = (rng.random(5000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1])))).astype(int)
    model = fit_logistic(x[:4000], y[:4000])
    assert auc(predict_logistic(model, x[4000:]), y[4000:]) > 0.8


def test_the_baseline_command_measures_every_head_it_can_and_says_why_not_the_others(tmp_path, capsys):
    from intentrec.data.prepare import run
    from intentrec.training.intent import main
    from tests.conftest import compose_config

    data_dir = tmp_path / "data"
    run(compose_config("prepare", ["data=synthetic", "data.num_events=20000", f"artifacts_dir={tmp_path}"]), data_dir)
    assert main([f"data_dir={data_dir}", f"out={tmp_path / 'out'}"]) == 0
    result = json.loads((tmp_path / "out" / "intent_baseline.json").read_text())
    assert set(result["heads"]) == {"purchase", "exit", "abandon", "next_category"} and not result["unavailable"]
    for head in ("purchase", "exit", "abandon"):
        metrics = result["heads"][head]["test"]
        assert 0.55 < metrics["auc"] < 1 and 0 <= metrics["ece"] < 0.1, (head, metrics)
        assert "device=mobile" in result["heads"][head]["slices"]
    assert (tmp_path / "out" / "reliability.png").stat().st_size > 10_000
    assert "| purchase |" in (tmp_path / "out" / "intent_baseline.md").read_text()
    assert main([f"data_dir={tmp_path / 'nothing'}"]) == 2
    assert "holds no prepared data" in capsys.readouterr().err
