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


def test_intent_windows_read_every_step_once_with_its_own_labels_and_context(artifacts, tmp_path):
    from intentrec.training.datamodule import PreparedData, SequenceDataModule, read_split, training_windows
    from tests.training.conftest import run

    run(artifacts, tmp_path / "prepare", "model=popularity")  # prepares the tiny shop
    data = PreparedData.load(artifacts / "data" / "synthetic")
    module = SequenceDataModule(data, max_seq_len=7, batch_size=32, intent=True)
    train = read_split(data.directory / "train.parquet")
    labels = module.intent_labels(train)
    windows = training_windows(train, 7, 5, labels, every_window=True)
    where = windows["step_index"] >= 0
    steps = windows["step_index"][where]
    assert sorted(steps.tolist()) == list(range(len(train.steps["item_ids"])))  # each step once, the last ones too
    for head, column in (
        ("exit", "intent_exit"),
        ("purchase", "intent_purchase"),
        ("next_category", "intent_category"),
    ):
        assert (windows[column][where] == labels[head][steps]).all()
        assert (windows[column][~where] == -1).all()
    assert (windows["item_ids"][where] == train.steps["item_ids"][steps]).all()
    assert (
        windows["now_device_types"][where] == train.steps["device_types"][steps]
    ).all()  # this step's, not the next's
    assert (windows["now_hours"][where] == train.steps["hours"][steps]).all()
    # The next-item targets are the ones the windows without intent train on: every target step once.
    plain = training_windows(train, 7, 5)
    targets = lambda w: np.sort(w["targets"][w["targets"] > 0])  # noqa: E731
    assert (targets(windows) == targets(plain)).all()
    rows_last = train.offsets[1:] - 1
    at_last = np.isin(windows["step_index"], rows_last)
    assert (windows["targets"][at_last] == 0).all()  # a row's last step predicts nothing (no next step in the row)


def test_heads_train_with_the_tower_and_are_measured_against_the_baseline(artifacts, tmp_path):
    from tests.training.conftest import run

    learn = [
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=null",
        "model.embedding_dim=32",
        "optim.warmup_steps=10",
    ]
    metrics = run(artifacts, tmp_path, "intent.heads=joint", "ranker.enabled=false", *learn)
    for head in ("purchase", "exit", "abandon"):
        for metric in ("auc", "log_loss", "brier", "ece"):
            assert np.isfinite(metrics[f"intent_test/{head}/{metric}"]), (head, metric)
            assert np.isfinite(metrics[f"intent_baseline_test/{head}/{metric}"]), (head, metric)
        assert 0 <= metrics[f"intent_test/{head}/ece"] < 0.1
        # Learnt from the sequence in 4 short epochs (a constant scores 0.5)
        assert metrics[f"intent_test/{head}/auc"] > 0.54, head
    assert 0 < metrics["intent_test/next_category/accuracy@1"] <= 1
    report = json.loads((tmp_path / "intent.json").read_text())
    assert report["calibration"] == "temperature" and report["heads"]["exit"]["calibration"]["temperature"] > 0
    assert "device=mobile" in report["heads"]["exit"]["slices"] and "steps=1" in report["baseline"]["exit"]["slices"]
    table = (tmp_path / "intent.md").read_text()
    assert "| exit | heads |" in table and "| exit | baseline |" in table
    assert (tmp_path / "intent_reliability.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["info"]["intent"]["heads"] == "joint" and "intent_test/exit/auc" in saved
    assert "val/ndcg@10" in saved  # the ranking metrics as ever
    # A checkpoint evaluation measures the heads again, to the same figures.
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    again = run(artifacts, tmp_path / "again", f"ckpt_path={ckpt}", config="evaluate")
    for key in ("intent_test/exit/auc", "intent_test/purchase/ece", "intent_test/next_category/accuracy@1"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert (tmp_path / "again" / "intent.md").is_file()


def test_a_second_stage_leaves_the_ranking_as_it_was_and_its_heads_reach_the_checkpoint(artifacts, tmp_path):
    from tests.training.conftest import run

    plain = run(artifacts, tmp_path / "plain", "ranker.enabled=false")
    staged = run(
        artifacts,
        tmp_path / "staged",
        "intent.heads=second_stage",
        "intent.calibration=isotonic",
        "ranker.enabled=false",
    )
    for key in ("val/ndcg@10", "test/ndcg@10", "test/hr@20", "test/intent_shift/mrr@10"):
        assert staged[key] == plain[key], key  # the tower learns exactly as without heads
    report = json.loads((tmp_path / "staged" / "intent.json").read_text())
    spec = report["heads"]["exit"]["calibration"]
    assert report["calibration"] == "isotonic" and spec["method"] == "isotonic"
    assert np.all(np.diff(spec["values"]) >= 0) and len(spec["thresholds"]) == len(spec["values"])
    info = json.loads((tmp_path / "staged" / "metrics.json").read_text())["info"]
    stage = info["intent_stage"]
    assert min(stage["epochs"].values()) >= 1 and stage["train_steps"] > 1000
    # Each head reads what it validated best with (a binary head by val AUC, the next category by val loss).
    for head, inputs in stage["inputs"].items():
        assert stage["val_score_by_inputs"][inputs][head] == max(s[head] for s in stage["val_score_by_inputs"].values())
        assert stage["val_loss_by_inputs"][inputs][head] == stage["best_val_loss"][head]
    # The trained heads are in best.ckpt: evaluating it gives the same signals.
    ckpt = tmp_path / "staged" / "checkpoints" / "best.ckpt"
    again = run(artifacts, tmp_path / "again", f"ckpt_path={ckpt}", "intent.calibration=isotonic", config="evaluate")
    assert again["intent_test/exit/auc"] == pytest.approx(staged["intent_test/exit/auc"], abs=1e-6)
    assert staged["intent_test/exit/auc"] > 0.55


def test_intent_settings_and_data_that_cannot_carry_a_head_fail_or_switch_it_off_clearly(artifacts, tmp_path, caplog):
    from intentrec.errors import ConfigError, DataError
    from tests.conftest import compose_config
    from tests.training.conftest import FAST, run

    with pytest.raises(
        ConfigError, match=r"intent.heads='always'; expected one of \['none', 'joint', 'second_stage'\]"
    ):
        run(artifacts, tmp_path / "a", "intent.heads=always")
    with pytest.raises(ConfigError, match="intent.calibration='platt'"):
        run(artifacts, tmp_path / "b", "intent.heads=joint", "intent.calibration=platt")
    with pytest.raises(ConfigError, match=r"intent.weight=0.0; expected a weight > 0"):
        run(artifacts, tmp_path / "c", "intent.heads=joint", "intent.weight=0")
    with pytest.raises(ConfigError, match="bidirectional encoder"):
        run(artifacts, tmp_path / "d", "intent.heads=joint", "model=bert4rec")
    with pytest.raises(DataError, match="intent signals need whole sessions.*data.split.type=temporal"):
        run(tmp_path / "loo", tmp_path / "e", "intent.heads=joint", "data.split.type=leave_last_out")
    with pytest.raises(DataError, match=r"the intent heads cannot be measured: .*val.parquet has no steps of its own"):
        run(tmp_path / "short", tmp_path / "g", "intent.heads=joint", "data.split.val_days=0.00001")
    # Data no head can learn from is refused before training, with each head's reason.
    from intentrec.training.prepared import build_datamodule, prepared_data
    from intentrec.training.train import build_task

    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}", "intent.heads=second_stage"])
    data = prepared_data(cfg)
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    datamodule.intent_heads = dict.fromkeys(datamodule.intent_heads, "every step has the same label")
    with pytest.raises(ConfigError, match=r"intent.heads=second_stage but no intent head can learn from this data: "
                                          r"purchase: every step has the same label; .*Set intent.heads=none."):  # fmt: skip
        build_task(cfg, data, datamodule)
    from intentrec.data.prepare import run as prepare
    from intentrec.training.datamodule import PreparedData, SequenceDataModule

    views = tmp_path / "views"
    overrides = ["data=synthetic", "data.num_events=20000", "data.event_types=[view]", f"artifacts_dir={views}"]
    prepare(compose_config("prepare", overrides), views / "data")
    module = SequenceDataModule(PreparedData.load(views / "data"), max_seq_len=20, batch_size=32, intent="joint")
    module.setup()
    assert "intent head purchase is off: the data has no purchase events" in caplog.text
    assert "intent head abandon is off" in caplog.text
    assert module.intent_heads["exit"] is None and module.intent_heads["next_category"] is None
    assert "intent_abandon" not in module.train_arrays and "intent_exit" in module.train_arrays


def test_a_head_without_the_state_ignores_it_and_old_checkpoints_read_everything():
    import torch

    from intentrec.models.intent import COUNTERS, IntentHeads

    torch.manual_seed(0)
    heads = IntentHeads(8, 5, with_context=True)
    x = torch.randn(4, heads.width)
    changed = x.clone()
    changed[:, :8] = torch.randn(4, 8)  # another encoder state, the same context and counters
    exit_row = heads.order.index("exit")
    heads.input_masks[exit_row] = heads.without_state()
    assert not heads.input_masks[exit_row, :8].any() and heads.input_masks[heads.order.index("purchase"), :8].all()
    before, after = heads(x)["binary"], heads(changed)["binary"]
    assert torch.equal(before[:, exit_row], after[:, exit_row])
    assert not torch.equal(before[:, heads.order.index("purchase")], after[:, heads.order.index("purchase")])
    assert heads.width == 8 * 2 + COUNTERS
    state = {k: v for k, v in heads.state_dict().items() if k != "input_masks"}  # saved before the masks existed
    fresh = IntentHeads(8, 5, with_context=True)
    fresh.input_masks.zero_()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.input_masks, torch.ones_like(fresh.input_masks))
