"""Real (tiny, seeded) Lightning training of every variant, evaluation, resume, DDP and config errors."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.errors import MissingConfigException

from intentrec.errors import ConfigError
from intentrec.training.datamodule import BatchIndexSampler
from tests.conftest import REPO_ROOT, compose_config
from tests.training.conftest import FAST, run

VARIANTS = [
    "transformer",
    "transformer_no_context",
    "transformer_latent_cross",
    "transformer_id_only",
    "transformer_cosine",
    "gru",
    "filter_mix",
    "cl4srec",
    "duorec",
    "bert4rec",
    "dif_sr",
    "dif_sr_filter",
    "mean_pool",
    "popularity",
    "cooccurrence",
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_evaluates_by_full_ranking(artifacts, tmp_path, variant):
    metrics = run(artifacts, tmp_path, f"model={variant}")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "test/ndcg@10",
        "test/hr@10",
        "test/mrr@10",
        "val/ndcg@10",
        "test/intent_shift/ndcg@10",
        "test/coverage@10",
    ):
        assert key in on_disk, key
        assert 0.0 <= on_disk[key] <= 1.0
    assert on_disk["test/count"] > 100 and on_disk["info"]["model"] == variant
    assert metrics["test/hr@100"] >= metrics["test/hr@10"] >= metrics["test/hr@5"]
    if variant not in ("popularity", "cooccurrence"):
        assert (tmp_path / "checkpoints" / "best.ckpt").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
        # Second stage: the ranker re-orders the top candidates; the metrics stay full-catalogue.
        assert (tmp_path / "checkpoints" / "ranker.ckpt").is_file()
        assert 0.0 <= on_disk["rerank_test/ndcg@10"] <= 1.0 and on_disk["rerank_test/count"] == on_disk["test/count"]
        # Re-ranking the top 50 cannot change whether the target is in the top 50.
        assert on_disk["rerank_test/hr@50"] == pytest.approx(on_disk["test/hr@50"], abs=1e-9)
    assert (tmp_path / "metrics.md").read_text().startswith(f"# {variant} on synthetic")
    if variant not in ("popularity", "cooccurrence"):
        # The learning curve: one point per validation, training seconds growing, the logged metric.
        info = on_disk["info"]
        curve = info["learning_curve"]
        assert [p["epoch"] for p in curve] == list(range(len(curve))) and len(curve) >= 1
        seconds = [p["train_seconds"] for p in curve]
        assert (
            seconds == sorted(seconds)
            and seconds[0] > 0
            and seconds[-1] == pytest.approx(info["train_seconds"], abs=0.05)
        )
        assert max(p["val/ndcg@10"] for p in curve) == pytest.approx(on_disk["val/ndcg@10"], abs=1e-6)


def test_the_attribute_loss_trains_beside_the_next_item_loss(artifacts, tmp_path, caplog):
    metrics = run(artifacts, tmp_path / "aux", "model=dif_sr", "model.attribute_loss=1.0", "ranker.enabled=false")
    with open(tmp_path / "aux" / "logs" / "metrics.csv") as f:
        logged = [float(row["train/attribute"]) for row in csv.DictReader(f) if row.get("train/attribute")]
    assert logged and all(0 < value < 10 for value in logged)
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0
    # Items without content: the weight is ignored, with a message saying why.
    run(
        artifacts,
        tmp_path / "id",
        "model=dif_sr",
        "model.attribute_loss=1.0",
        "model.item_features=id",
        "ranker.enabled=false",
    )
    assert "model.attribute_loss=1.0 is ignored: the items have no content features" in caplog.text


@pytest.mark.parametrize("loss", ["full", "full@0", "sampled", "gbce"])
def test_each_loss_trains(artifacts, tmp_path, loss):
    name, _, chunk = loss.partition("@")  # full@0: the full softmax as one logits matrix (loss.chunk_targets=0)
    metrics = run(
        artifacts, tmp_path, f"loss.name={name}", "loss.num_negatives=32", f"loss.chunk_targets={chunk or 'auto'}"
    )
    info = json.loads((tmp_path / "metrics.json").read_text())["info"]
    assert info["loss"] == name and metrics["test/count"] > 0


def test_a_saved_checkpoint_evaluates_to_the_same_metrics_after_reload(artifacts, tmp_path):
    trained = run(artifacts, tmp_path / "train")
    reloaded = run(
        artifacts,
        tmp_path / "eval",
        f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'best.ckpt'}",
        config="evaluate",
    )
    for key in ("test/ndcg@10", "test/hr@20", "val/mrr@10", "test/intent_shift/ndcg@10"):
        assert reloaded[key] == pytest.approx(trained[key], abs=1e-9), key


def test_length_buckets_cut_padding_without_changing_metrics(artifacts, tmp_path):
    # The default batches windows of similar length and trims their padding; evaluating the same
    # checkpoint with random padded batches must give the same metrics (causal, right padded).
    run(artifacts, tmp_path / "train", "model=gru")
    ckpt = f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'best.ckpt'}"
    bucketed = run(artifacts, tmp_path / "a", ckpt, "model=gru", "data.bucket_by_length=true", config="evaluate")
    padded = run(artifacts, tmp_path / "b", ckpt, "model=gru", "data.bucket_by_length=false", config="evaluate")
    for key in ("test/ndcg@10", "test/hr@50", "val/mrr@10", "test/intent_shift/ndcg@10", "test/coverage@10"):
        assert bucketed[key] == pytest.approx(padded[key], abs=1e-6), key


def test_length_bucket_sampler_covers_every_window_once_per_epoch():
    lengths = np.random.default_rng(0).integers(1, 51, 1000)
    sampler = BatchIndexSampler(1000, 32, True, seed=0, lengths=lengths, pool_batches=10)
    batches = list(sampler)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 8  # pools of 10 batches: about 5 steps; random batches of 32 span about 45
    sampler.set_epoch(1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, sampler))


def test_target_budget_batches_keep_one_count_for_every_epoch():
    # Cutting shuffled windows by target budget gives a different number of batches per shuffle;
    # Lightning reads len() once and validates after that many batches, so an epoch one batch
    # short skipped its validation (Amazon: 6 of 30 epochs). Every epoch must yield len() batches.
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, 2000)
    targets = np.minimum(lengths, rng.integers(1, 50, 2000))
    sampler = BatchIndexSampler(2000, 32, True, seed=0, lengths=lengths, targets=targets, batch_targets=100)
    count = len(sampler)
    raw = set()
    for epoch in range(40):
        sampler.set_epoch(epoch)
        raw.add(len(sampler._budget_batches(sampler._order(np.random.default_rng([0, epoch])))))
        batches = list(sampler)
        assert len(batches) == len(sampler) == count, epoch
        assert sorted(np.concatenate(batches).tolist()) == list(range(2000)) and min(map(len, batches)) >= 1
        assert max(int(targets[b].sum()) for b in batches) <= 2 * 100
    assert min(raw) < count < max(raw)  # both the split and the merge were exercised


def test_every_epoch_is_validated_when_shuffles_cut_different_batch_counts(artifacts, tmp_path):
    # On the tiny shop the default target budget cuts 31 or 32 batches depending on the shuffle
    # (epoch 3: 31); before the fix that epoch ended one batch early and skipped its validation.
    run(
        artifacts,
        tmp_path,
        "model=gru",
        "trainer.limit_train_batches=1.0",
        "trainer.max_epochs=5",
        "evaluate.early_stopping_patience=10",
        "ranker.enabled=false",
    )
    info = json.loads((tmp_path / "metrics.json").read_text())["info"]
    assert [p["epoch"] for p in info["learning_curve"]] == [0, 1, 2, 3, 4]
    assert info["global_step"] == 5 * 32


def test_resuming_continues_training_from_the_last_checkpoint(artifacts, tmp_path):
    run(artifacts, tmp_path / "first", "trainer.max_epochs=1")
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())["info"]
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run(artifacts, tmp_path / "resumed", f"ckpt_path={last}", "trainer.max_epochs=2")
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["info"]
    assert first["global_step"] == 5
    assert resumed["global_step"] == 10
    # A run from scratch would also end at step 10; a resumed one trains only epoch 1 (steps 5..9).
    with open(tmp_path / "resumed" / "logs" / "metrics.csv") as handle:
        trained = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    assert trained and {row["epoch"] for row in trained} == {"1"}
    assert min(int(row["step"]) for row in trained) >= 5
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 10


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_with_the_batches_it_had_not_trained(artifacts, tmp_path):
    import os
    import signal
    import time

    whole = ["trainer.limit_train_batches=1.0", "ranker.enabled=false"]
    run(artifacts, tmp_path / "whole", *whole)
    steps = json.loads((tmp_path / "whole" / "metrics.json").read_text())["info"]["global_step"]
    assert steps >= 10, "the tiny shop's epoch is too short to be killed part-way"
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "training.train", *FAST, *whole, f"artifacts_dir={artifacts}"]
        + [f"run_dir={killed}", f"hydra.run.dir={killed}", "checkpoint.every_n_steps=1"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)  # as an OOM kill or a lost machine would
    process.wait()
    state = torch.load(last, map_location="cpu", weights_only=False)  # whole: written beside, then renamed
    done = state["global_step"]
    assert 1 <= done < steps and state["epoch"] == 0
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "consumed": done}]
    run(artifacts, tmp_path / "resumed", *whole, f"ckpt_path={last}")
    info = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["info"]
    assert info["global_step"] == steps  # the epoch's other batches only, not the epoch again from its start
    with open(tmp_path / "resumed" / "logs" / "metrics.csv") as handle:
        validated = [row for row in csv.DictReader(handle) if row.get("val/ndcg@10")]
    assert validated and validated[0]["epoch"] == "0"


def test_a_run_resumed_into_a_new_folder_keeps_the_best_so_far(artifacts, tmp_path):
    run(artifacts, tmp_path / "first", "trainer.max_epochs=1")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    key = next(k for k in state["callbacks"] if k.startswith("BestCheckpoint"))
    # Pretend the first run's best epoch scored higher than anything the resumed epoch can reach.
    state["callbacks"][key]["best_model_score"] = torch.tensor(0.99)
    torch.save(state, last)
    run(artifacts, tmp_path / "resumed", f"ckpt_path={last}", "trainer.max_epochs=2")
    best = tmp_path / "resumed" / "checkpoints" / "best.ckpt"
    info = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["info"]
    assert info["best_checkpoint"] == str(best) and info["global_step"] == 10
    assert torch.load(best, map_location="cpu", weights_only=False)["epoch"] == 0  # the first run's, copied over
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert float(resumed["callbacks"][key]["best_model_score"]) == pytest.approx(0.99)


def test_a_negative_checkpoint_interval_is_a_clear_error(artifacts, tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint.every_n_steps=-5; expected 0 \(at validations only\)"):
        run(artifacts, tmp_path, "checkpoint.every_n_steps=-5")


def test_exclude_seen_changes_the_protocol_not_the_model(artifacts, tmp_path):
    trained = run(artifacts, tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "best.ckpt"
    excluded = run(artifacts, tmp_path / "eval", f"ckpt_path={ckpt}", "evaluate.exclude_seen=true", config="evaluate")
    assert excluded["test/count"] == trained["test/count"]
    assert excluded["test/ndcg@10"] != pytest.approx(trained["test/ndcg@10"])


def test_unknown_variant_lists_the_available_ones():
    with pytest.raises(MissingConfigException, match=r"Could not find 'model/lstm'"):
        compose_config("train", ["model=lstm"])


def test_num_items_mismatch_with_the_prepared_data_names_the_key(artifacts, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.num_items=7 but .*stats\.json says \d+; fix data\.num_items"):
        run(artifacts, tmp_path, "data.num_items=7")


def test_cutoffs_larger_than_the_catalogue_are_left_out_and_a_monitor_beyond_it_is_refused(artifacts, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        metrics = run(artifacts, tmp_path / "ks", "evaluate.ks=[10,100000]", "model=popularity")
    assert "test/ndcg@10" in metrics and not any("@100000" in key for key in metrics)
    assert re.search(r"evaluate\.ks: \[100000\] left out \(more than the \d+ items of synthetic\)", caplog.text)
    with pytest.raises(ConfigError, match=r"evaluate\.monitor=ndcg@100000 needs at least 100000 items, but synthetic"):
        run(artifacts, tmp_path / "monitor", "evaluate.ks=[10,100000]", "evaluate.monitor=ndcg@100000")


def test_evaluate_needs_only_the_checkpoint_and_refuses_contradicting_settings(artifacts, tmp_path):
    run(artifacts, tmp_path / "train", "data.max_seq_len=12")
    ckpt = tmp_path / "train" / "checkpoints" / "best.ckpt"
    from intentrec.training.evaluate import evaluate

    def evaluate_with(*overrides):
        cfg = compose_config("evaluate", [f"artifacts_dir={artifacts}", f"ckpt_path={ckpt}", *overrides])
        return evaluate(cfg), cfg

    metrics, cfg = evaluate_with(f"run_dir={tmp_path / 'eval'}")
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert cfg.data.max_seq_len == 12 and cfg.data.num_events == 20000
    assert on_disk["test/ndcg@10"] == pytest.approx(metrics["test/ndcg@10"]) and on_disk["info"]["forced"] == {}
    with pytest.raises(
        ConfigError,
        match=r"trained on other data or another model[\s\S]*data\.num_events: 20000 in the checkpoint, 30000",
    ):
        evaluate_with("data.num_events=30000")
    with pytest.raises(
        ConfigError, match=r"data\.max_seq_len: 12 in the checkpoint, 20 on the command line[\s\S]*force=true"
    ):
        evaluate_with("data.max_seq_len=20")
    with pytest.raises(ConfigError, match=r"data\.max_seq_len=20: the model of .* reads at most 12 steps"):
        evaluate_with("data.max_seq_len=20", "force=true")
    _, cfg = evaluate_with("data.max_seq_len=6", "force=true", f"run_dir={tmp_path / 'forced'}")
    forced = json.loads((tmp_path / "forced" / "metrics.json").read_text())["info"]["forced"]
    assert forced == {"data.max_seq_len": {"checkpoint": 12, "used": 6}} and cfg.data.max_seq_len == 6


def write_events(path, rows=3000, seed=0):
    """A small event CSV with columns named unlike the canonical keys (user_id, item_id, ts, kind): ts and kind need a mapping."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "ts", "kind"])
        for i in range(rows):
            w.writerow(
                [f"u{i % 150}", f"i{rng.integers(0, 60)}", 1_700_000_000 + i * 60, "view" if i % 4 else "add_to_cart"]
            )
    return path


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    from intentrec.training.evaluate import evaluate

    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"ckpt_path='.*notes\.ckpt' is not a retrieval checkpoint of this project"):
        evaluate(compose_config("evaluate", [f"ckpt_path={tmp_path / 'notes.ckpt'}"]))


def test_a_checkpoint_refuses_data_prepared_again_since_training(tmp_path):
    from intentrec.data.prepare import run as prepare
    from intentrec.training.evaluate import evaluate
    from intentrec.training.train import train

    source = write_events(tmp_path / "events.csv")
    common = [f"artifacts_dir={tmp_path / 'art'}", "data=generic", f"data.path={source}", "data.name=mine"]
    train(compose_config("train", [*common, "debug=fast", f"run_dir={tmp_path / 'train'}"]))
    write_events(source, seed=1)
    prepare(compose_config("prepare", common))
    with pytest.raises(
        ConfigError, match=r"was trained on mine with num_items=\d+ .*prepared data changed since training"
    ):
        evaluate(compose_config("evaluate", [f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'best.ckpt'}"]))


def test_train_never_replaces_a_folder_prepared_with_another_config(tmp_path):
    from intentrec.data.prepare import run as prepare
    from intentrec.training.train import train

    source = write_events(tmp_path / "events.csv")
    common = [f"artifacts_dir={tmp_path / 'art'}", "data=generic", f"data.path={source}", "data.name=mine"]
    prepare(compose_config("prepare", [*common, "data.columns.timestamp=ts", "data.columns.event_type=kind"]))
    folder = tmp_path / "art" / "data" / "mine"
    before = (folder / "stats.json").read_text()
    with pytest.raises(
        ConfigError, match=r"prepared with another data config[\s\S]*columns[\s\S]*data_dir=.*reprepare=true"
    ):
        train(compose_config("train", [*common, "debug=fast", f"run_dir={tmp_path / 'r1'}"]))
    assert (folder / "stats.json").read_text() == before
    # The folder as prepared: no data.* settings needed; any model.
    metrics = train(compose_config("train", ["debug=fast", f"data_dir={folder}", f"run_dir={tmp_path / 'r2'}"]))
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0
    popular = train(compose_config("train", [f"data_dir={folder}", "model=popularity", f"run_dir={tmp_path / 'p'}"]))
    assert (
        json.loads((tmp_path / "p" / "metrics.json").read_text())["info"]["model"] == "popularity"
        and popular["test/count"] > 0
    )
    settings = torch.load(tmp_path / "r2" / "checkpoints" / "best.ckpt", weights_only=False)["hyper_parameters"][
        "settings"
    ]
    assert settings["data_dir"] == str(folder.resolve()) and settings["data"]["columns"]["event_type"] == "kind"
    with pytest.raises(
        ConfigError,
        match=r"data_dir=.* was prepared with other data settings[\s\S]*data\.filters\.min_item_support: 1 in its stats\.json, 3",
    ):
        train(
            compose_config(
                "train",
                ["debug=fast", f"data_dir={folder}", "data.filters.min_item_support=3", f"run_dir={tmp_path / 'r3'}"],
            )
        )
    train(compose_config("train", [*common, "debug=fast", "reprepare=true", f"run_dir={tmp_path / 'r4'}"]))
    assert json.loads((folder / "stats.json").read_text())["config"]["columns"].get("event_type") is None


def test_trainer_gpu_without_a_gpu_is_a_clear_error(artifacts, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: trainer=gpu is valid here")
    with pytest.raises(ConfigError, match=r"trainer=gpu but no CUDA GPU is visible"):
        run(artifacts, tmp_path, "trainer=gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_trainer_gpu_trains_in_bf16_on_the_gpu(artifacts, tmp_path):
    metrics = run(artifacts, tmp_path, "trainer=gpu")
    assert metrics["test/count"] > 0


@pytest.mark.slow
def test_ddp_trains_with_two_cpu_processes_over_gloo(artifacts, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "trainer=ddp",
            *FAST,
            f"artifacts_dir={artifacts}",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "All distributed processes registered. Starting with 2 processes" in result.stderr + result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/count"] > 100  # every example counted once across the two ranks


def test_reranking_in_retrieval_order_gives_the_retrieval_metrics(artifacts, tmp_path):
    """A ranker that agrees with retrieval must reproduce the retrieval metrics exactly."""
    from intentrec.training.metrics import evaluate_scorer
    from intentrec.training.prepared import build_datamodule, prepared_data
    from intentrec.training.ranking import RankerTask, evaluate_reranked
    from intentrec.training.train import build_task

    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}", f"run_dir={tmp_path}"])
    data = prepared_data(cfg)
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    task = build_task(cfg, data, datamodule).eval()  # eval mode: no dropout, so both passes see one model

    class RetrievalOrder(RankerTask):
        def forward(self, query, candidates, retrieval_scores, context):
            return retrieval_scores

    codes = task.model.item_tower.feature_codes
    sizes = [int(codes[:, i].max()) + 1 for i in range(codes.shape[1])]
    agree = RetrievalOrder({}, 16, [4, 25, 8, 7, 7, 24, 3], sizes, task.model.item_embeddings().detach(), codes)
    with torch.no_grad():
        items = task.model.item_embeddings()
        plain = evaluate_scorer(
            lambda b: task.model.query(b) @ items.T, datamodule, "test", dict(cfg.evaluate), data.num_items
        )
    reranked = evaluate_reranked(task, agree, datamodule, "test", dict(cfg.evaluate), 50)
    for k in (5, 10, 20, 50, 100):
        assert reranked[f"rerank_test/ndcg@{k}"] == pytest.approx(plain[f"test/ndcg@{k}"], abs=1e-9)


def test_training_prepares_again_when_the_prepared_data_is_from_an_older_version(artifacts, tmp_path):
    run(artifacts, tmp_path / "first", "model=popularity")
    stats_path = artifacts / "data" / "synthetic" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["prepared_format"] = 1
    stats_path.write_text(json.dumps(stats))
    run(artifacts, tmp_path / "second", "model=popularity")
    assert json.loads(stats_path.read_text())["prepared_format"] >= 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["loss.name=bogus"],
            r"model='dif_sr_filter': loss\.name='bogus'; expected one of \['auto', 'full', 'sampled', 'gbce'\]",
        ),
        (
            ["model.context=sideways"],
            r"model\.context='sideways'; expected one of \['none', 'concat', 'latent_cross'\]",
        ),
        (["model.similarity=l2"], r"model\.similarity='l2'; expected one of \['dot', 'cosine'\]"),
        (["optim.batch_scaling=cubic"], r"optim\.batch_scaling='cubic'; expected one of \['none', 'sqrt', 'linear'\]"),
        (
            ["loss.chunk_targets=-3"],
            r"loss\.chunk_targets=-3; expected auto, 0 \(no chunks\) or a positive whole number",
        ),
        (
            ["loss.name=gbce", "loss.exclude_seen=true"],
            r"loss\.exclude_seen=true works with the full softmax only; loss\.name resolved to 'gbce'",
        ),
        (
            ["logger._target_=no_such_package.Logger"],
            r"logger\._target_=no_such_package\.Logger needs the Python package 'no_such_package', which is not "
            r"installed; pip install no_such_package, or choose logger=csv",
        ),
        (
            ["logger._target_=pytorch_lightning.loggers.CSVLogger", "+logger.bogus=1"],
            r"logger\._target_=pytorch_lightning\.loggers\.CSVLogger could not be built: .*bogus",
        ),
        (
            ["model=popularity", "model.baseline=random"],
            r"model\.baseline='random'; expected one of \['popularity', 'cooccurrence'\]",
        ),
    ],
)
def test_bad_training_config_names_the_key(artifacts, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(artifacts, tmp_path, *overrides)


def test_evaluate_needs_an_existing_checkpoint(artifacts, tmp_path):
    with pytest.raises(ConfigError, match=r"ckpt_path='.*missing\.ckpt' does not exist; point it at a \.ckpt"):
        run(artifacts, tmp_path, f"ckpt_path={tmp_path / 'missing.ckpt'}", config="evaluate")


def test_embedding_weight_decay_is_its_own_optimizer_group(artifacts, tmp_path):
    from intentrec.training.prepared import build_datamodule, prepared_data
    from intentrec.training.train import build_task

    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}", "optim.embedding_weight_decay=0.05"])
    data = prepared_data(cfg)
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    task = build_task(cfg, data, datamodule)
    task.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    optimizer = task.configure_optimizers()["optimizer"]
    decays = [group["weight_decay"] for group in optimizer.param_groups]
    assert decays == [cfg.optim.weight_decay, 0.05, 0.0]
    names = {id(p): n for n, p in task.named_parameters()}
    assert all("embedding" in names[id(p)] for p in optimizer.param_groups[1]["params"])
    assert not any("embedding" in names[id(p)] for p in optimizer.param_groups[0]["params"])


def test_heap_mode_switches_and_keep_freed_memory_is_idempotent():
    from intentrec.training.runtime import keep_freed_memory, set_heap_mode

    assert set_heap_mode(False) is True  # glibc on Linux, as on this machine and CI
    assert keep_freed_memory() is True and keep_freed_memory() is True


def test_batch_scaling_raises_the_learning_rate_and_shortens_the_warmup_in_steps():
    from intentrec.training.module import scaled_lr_and_warmup

    base = {"lr": 1e-3, "warmup_steps": 100, "reference_batch_size": 128}
    assert scaled_lr_and_warmup({**base, "batch_size": 1024}) == (1e-3, 100)  # batch_scaling absent: none
    lr, warmup = scaled_lr_and_warmup({**base, "batch_size": 1024, "batch_scaling": "sqrt"})
    assert lr == pytest.approx(1e-3 * 8**0.5) and warmup == 12  # the same 12,800 windows of warm-up
    lr, warmup = scaled_lr_and_warmup({**base, "batch_size": 64, "batch_scaling": "linear"})
    assert lr == pytest.approx(5e-4) and warmup == 200
    assert scaled_lr_and_warmup({**base, "batch_size": 128, "batch_scaling": "sqrt"}) == (1e-3, 100)


def test_a_large_batch_keeps_enough_steps_per_epoch_and_its_learning_rate_follows_the_batch_used(artifacts):
    # trainer=gpu asks for 1,024 windows a batch; on a small set min_steps_per_epoch lowers it, and the
    # learning rate is scaled for the batch actually used.
    from intentrec.training.prepared import build_datamodule, prepared_data
    from intentrec.training.train import build_task

    overrides = ["data.batch_size=100000", "data.min_steps_per_epoch=2", "optim.batch_scaling=sqrt", "optim.lr=0.001"]
    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}", *overrides])
    data = prepared_data(cfg)
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    windows = len(datamodule.train_arrays["targets"])
    assert 128 < datamodule.batch_size == windows // 2
    assert len(list(datamodule.train_dataloader())) >= 2
    task = build_task(cfg, data, datamodule)
    task.trainer = type("T", (), {"estimated_stepping_batches": 100})()
    optimizer = task.configure_optimizers()["optimizer"]
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.001 * (datamodule.batch_size / 128) ** 0.5)


def test_batches_assembled_on_the_device_are_the_samplers_batches_exactly(artifacts):
    # The split held as tensors (on the CPU here; a GPU in training) and gathered by the sampler's
    # indexes gives every batch of an epoch as the host path does: same targets, same order, same dtypes.
    from intentrec.training.datamodule import ArrayDataset, DeviceArrays, IndexDataset
    from intentrec.training.prepared import build_datamodule, prepared_data

    cfg = compose_config("train", [*FAST, f"artifacts_dir={artifacts}", "data.batches_on_device=true"])
    datamodule = build_datamodule(cfg, prepared_data(cfg))
    datamodule.setup()
    datamodule.batches_on_device = False
    host = list(datamodule.train_dataloader())
    datamodule.batches_on_device = True
    loader = datamodule.train_dataloader()
    assert isinstance(loader.dataset, IndexDataset)
    device = DeviceArrays(datamodule.train_arrays, torch.device("cpu"))
    count = 0
    for expected, index_batch in zip(host, loader, strict=True):
        batch = datamodule.transfer_batch_to_device(index_batch, torch.device("cpu"), 0)
        assert batch.keys() == expected.keys()
        for name, value in expected.items():
            assert batch[name].dtype == value.dtype and torch.equal(batch[name], value), name
        count += 1
    assert count == len(host) > 3
    assert (
        ArrayDataset(datamodule.train_arrays)[np.array([3, 1])]["targets"].shape
        == device.batch(
            torch.tensor([3, 1]), int(max(1, (datamodule.train_arrays["item_ids"][[3, 1]] > 0).sum(1).max()))
        )["targets"].shape
    )


def test_training_on_device_assembled_batches_gives_the_same_model(artifacts, tmp_path):
    host = run(artifacts, tmp_path / "host", "data.batches_on_device=false", "ranker.enabled=false")
    device = run(artifacts, tmp_path / "device", "data.batches_on_device=true", "ranker.enabled=false")
    for key in ("test/ndcg@10", "val/ndcg@10", "test/hr@20", "test/intent_shift/ndcg@10"):
        assert device[key] == pytest.approx(host[key], abs=1e-9), key
