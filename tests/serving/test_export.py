"""Export: ONNX equals torch, serving decodes requests exactly as training prepared them, the index keeps
its recall, the manifest refuses mismatches, and items added later are embedded from their features."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from intentrec.errors import ConfigError, DataError
from intentrec.ids import id_time_ms
from intentrec.models.context import CONTEXT_FIELDS
from intentrec.models.ranker import Ranker, RankerConfig
from intentrec.models.two_tower import TwoTower, TwoTowerConfig, Vocabulary
from intentrec.serving.bundle import add_items, load_bundle
from intentrec.serving.export import category_complements, export, validation_queries
from intentrec.serving.index import build_index, recall_against_exact, set_search_params
from intentrec.serving.onnx_models import (
    RANKER_INPUTS,
    QueryEncoder,
    RankerScorer,
    example_query_inputs,
    example_ranker_inputs,
    export_query_encoder,
    export_ranker,
    query_input_names,
)
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query
from intentrec.serving.rows import member
from intentrec.training.prepared import prepared_data
from tests.conftest import CONF_DIR, compose_config
from tests.serving.conftest import SERVING_SHOP, export_config, request_context

SIZES = {"event_types": 8, "gap_buckets": 24, "channels": 5, **{name: 9 for name in CONTEXT_FIELDS}}


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    "encoder,context",
    [
        ("transformer", "concat"),
        ("transformer", "latent_cross"),
        ("gru", "none"),
        ("mean", "concat"),
        ("filter_mix", "concat"),
        ("bert4rec", "concat"),
        ("bert4rec", "none"),
        ("dif_sr", "concat"),
        ("dif_sr", "none"),
        ("dif_sr_no_filter", "concat"),
    ],
)
def test_onnx_query_encoder_equals_torch_on_random_padded_inputs(tmp_path, encoder, context):
    vocab = Vocabulary(100, 8, 24, 5, {name: 9 for name in CONTEXT_FIELDS}, [5, 7])
    torch.manual_seed(0)
    filter_mix = 0.0 if encoder.endswith("_no_filter") else 0.5
    model = TwoTower(
        TwoTowerConfig(
            encoder=encoder.removesuffix("_no_filter"),
            context=context,
            embedding_dim=32,
            max_seq_len=30,
            filter_mix=filter_mix,
        ),
        vocab,
        torch.randint(0, 5, (101, 2)),
    )
    export_query_encoder(model.eval(), tmp_path / "q.onnx", SIZES, 30, 20)
    session = _session(tmp_path / "q.onnx")
    worst = 0.0
    for B, T, P in [(4, 30, 20), (7, 9, 3), (1, 1, 1), (3, 17, 1)]:
        attributes = 2 if model.reads_attributes else None
        inputs = example_query_inputs(B, T, P, 32, SIZES, torch.Generator().manual_seed(B * T), attributes)
        with torch.no_grad():
            expected = QueryEncoder(model)(*inputs).numpy()
        feed = {name: x.numpy() for name, x in zip(query_input_names(model), inputs)}
        got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    assert worst < 1e-5, worst


@pytest.mark.parametrize("encoder,context", [("transformer", "concat"), ("gru", "none"), ("dif_sr", "concat")])
def test_onnx_intent_outputs_equal_torch_and_read_the_request_context_as_the_current_one(tmp_path, encoder, context):
    vocab = Vocabulary(100, 8, 24, 5, {name: 9 for name in CONTEXT_FIELDS}, [5, 7], num_categories=6)
    torch.manual_seed(0)
    model = TwoTower(
        TwoTowerConfig(encoder=encoder, context=context, embedding_dim=32, max_seq_len=30, intent_heads=True),
        vocab,
        torch.randint(0, 5, (101, 2)),
    ).eval()
    export_query_encoder(model, tmp_path / "q.onnx", SIZES, 30, 20)
    session = _session(tmp_path / "q.onnx")
    assert [o.name for o in session.get_outputs()] == ["query", "intent_binary", "intent_category"]
    worst = 0.0
    for B, T, P in [(4, 30, 20), (7, 9, 3), (1, 1, 1)]:
        attributes = 2 if model.reads_attributes else None
        inputs = example_query_inputs(B, T, P, 32, SIZES, torch.Generator().manual_seed(B * T), attributes)
        with torch.no_grad():
            expected = [x.numpy() for x in QueryEncoder(model)(*inputs)]
        feed = {name: x.numpy() for name, x in zip(query_input_names(model), inputs)}
        got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
        assert [g.shape for g in got] == [(B, 32), (B, 3), (B, 6)]
        worst = max(worst, *(float(np.abs(g - e).max()) for g, e in zip(got, expected)))
        # The intent outputs are the heads at the last real step, with the request's context as the step's own.
        names = query_input_names(model)
        batch = {
            "item_ids": inputs[1],
            **dict(zip(("event_types", "gap_buckets", "channels", "new_session"), inputs[2:6])),
        }
        batch.update(loyalty=inputs[12], past_purchase_ids=inputs[14])
        for field, value in zip(CONTEXT_FIELDS, inputs[6:12]):
            batch[field] = value.unsqueeze(1).expand(-1, inputs[1].shape[1])
        for field in CONTEXT_FIELDS[:5]:
            batch["now_" + field.removeprefix("ctx_")] = batch[field]
        with torch.no_grad():
            _, logits = model.query_states(
                batch, inputs[0], inputs[13], inputs[15] if attributes else None, intent=True
            )
        last = inputs[1].sum(dim=1) - 1
        np.testing.assert_allclose(got[1], logits["binary"][torch.arange(B), last].numpy(), atol=1e-5)
        assert names[0] == "step_items"
    assert worst < 1e-5, worst


@pytest.mark.parametrize("cross_rank", [0, 8])
def test_onnx_ranker_equals_torch(tmp_path, cross_rank):
    torch.manual_seed(0)
    ranker = Ranker(RankerConfig(cross_rank=cross_rank), 32, [9] * 7, [5, 11]).eval()
    for layer in ranker.cross:  # not the identity start: exercise the cross layers
        for part in layer.modules():
            if isinstance(part, torch.nn.Linear):
                torch.nn.init.normal_(part.weight, std=0.1)
    width = ranker.cross[0][0].in_features if cross_rank else ranker.cross[0].in_features
    weights = sum(p.numel() for p in ranker.cross.parameters())
    assert weights == 2 * (width * width + width if not cross_rank else 2 * width * cross_rank + width)
    export_ranker(ranker, tmp_path / "r.onnx", 32, [5, 11], [9] * 7)
    session = _session(tmp_path / "r.onnx")
    for B, C in [(3, 50), (1, 7)]:
        inputs = example_ranker_inputs(B, C, 32, [5, 11], [9] * 7, torch.Generator().manual_seed(C))
        with torch.no_grad():
            expected = RankerScorer(ranker)(*inputs).numpy()
        got = session.run(None, {name: x.numpy() for name, x in zip(RANKER_INPUTS, inputs)})[0]
        assert np.abs(got - expected).max() < 1e-5


def test_a_negative_cross_rank_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"ranker.cross_rank=-1; expected 0 \(full cross matrices\) or a rank > 0"):
        Ranker(RankerConfig(cross_rank=-1), 32, [9] * 7, [5, 11])


@pytest.fixture(scope="module", params=["default", "transformer"])
def decode_case(request, serving_run, bundle, tmp_path_factory):
    """(serving_run, bundle) of the default model (attribute streams, cosine scores over a normalized served
    table) and of the transformer (dot products over the raw table): both ways of scoring are served."""
    if request.param == "default":
        return serving_run, bundle
    from tests.serving.conftest import export_config, train_serving_model

    root = tmp_path_factory.mktemp(request.param)
    # Decoding and scoring are compared with the checkpoint's own, whatever it learnt: one epoch is enough.
    run = train_serving_model(serving_run[0], root / "run", f"model={request.param}", "trainer.max_epochs=1")
    export(export_config(run, root / "bundle"))
    return run, root / "bundle"


def test_serving_decodes_requests_exactly_as_training_prepared_them(decode_case):
    """Raw requests rebuilt from the test split give the checkpoint's own queries (gaps, sessions, context, past),
    for a cosine model (the default) and a dot-product one."""
    serving_run, bundle = decode_case
    from intentrec.training.datamodule import PreparedData, evaluation_examples, read_split
    from intentrec.training.evaluate import load_checkpoint

    artifacts, run = serving_run
    data = PreparedData.load(artifacts / "data" / "synthetic")
    task = load_checkpoint(run / "checkpoints" / "best.ckpt", data).eval()
    split = read_split(data.directory / "test.parquet")
    T, P = task.model.cfg.max_seq_len, 20
    arrays, _, _ = evaluation_examples(split, T, P, data.padded("category_idx"), data.padded("train_count"), 5)
    recommender = Recommender(bundle)
    vocab = data.vocab_json
    raw_ids = data.padded("item_id", "").astype(str)
    rng = np.random.default_rng(0)
    targets = np.flatnonzero(split.steps["target_mask"])
    rows = split.row_of_step[targets]
    keep = targets - split.offsets[rows] >= 1
    chosen = np.sort(rng.choice(int(keep.sum()), 200, replace=False))
    queries = []
    for target in targets[keep][chosen]:
        row = split.row_of_step[target]
        history = np.arange(split.offsets[row], target)
        steps = split.steps

        def name(table, code):
            return vocab[table][int(code)] if int(code) > 0 else None

        queries.append(
            Query(
                item_ids=raw_ids[steps["item_ids"][history]].tolist(),
                event_types=[vocab["event_types"][c] for c in steps["event_types"][history]],
                timestamps=steps["timestamps"][history].tolist(),
                channels=[name("channels", c) or "" for c in steps["channels"][history]],
                session_ids=[str(x) for x in np.cumsum(steps["new_session"][history])],
                **request_context(split, vocab, target),
            )
        )
    served = recommender.encode([recommender.decode(q) for q in queries])
    batch = {k: torch.as_tensor(v[keep][chosen].astype(np.int64)) for k, v in arrays.items() if v.dtype.kind in "iub"}
    with torch.no_grad():
        expected = task.model.query(batch).numpy()
    assert np.abs(served - expected).max() < 1e-4


@pytest.fixture(scope="module")
def index_inputs(serving_run, bundle):
    from intentrec.training.datamodule import PreparedData
    from intentrec.training.evaluate import load_checkpoint

    artifacts, run = serving_run
    data = PreparedData.load(artifacts / "data" / "synthetic")
    task = load_checkpoint(run / "checkpoints" / "best.ckpt", data).eval()
    cfg = compose_config("train", [*SERVING_SHOP, f"artifacts_dir={artifacts}"])
    vectors = load_bundle(bundle).embeddings[1:]
    return vectors, validation_queries(task, cfg, data, 1000)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "index").glob("*.yaml")))
def test_index_recall_against_exact_search_for_each_factory_in_config(index_inputs, name):
    vectors, queries = index_inputs
    cfg = compose_config("export", [f"index={name}", "ckpt_path=unused"]).index
    index = build_index(vectors, cfg.factory)
    set_search_params(index, dict(cfg.search_params))
    recall = {k: recall_against_exact(index, vectors, queries, k) for k in (10, 100)}
    print(
        f"index={name} ({cfg.factory} {dict(cfg.search_params)}): recall@10 {recall[10]:.4f} recall@100 {recall[100]:.4f}"
    )
    assert recall[100] >= cfg.min_recall_at_100
    if name == "flat":
        assert recall[10] == recall[100] == 1.0


def test_manifest_records_what_serving_needs(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["num_items"] == load_bundle(bundle).embeddings.shape[0] - 1
    assert manifest["dim"] == 32 and manifest["model"]["similarity"] == "cosine"  # the default recipe
    assert {"torch", "onnx", "onnxruntime", "faiss"} <= set(manifest["versions"])
    assert set(manifest["files"]) >= {
        "query_encoder.onnx",
        "ranker.onnx",
        "item_embeddings.npy",
        "items.parquet",
        "index.faiss",
        "complements.json",
    }
    assert manifest["index"]["recall@100"] == 1.0 and manifest["ranker"]["num_candidates"] == 50


def test_complement_categories_learned_at_export_recover_the_shops_truth(bundle, tmp_path):
    # The bundle's shop has a strong context effect, which drowns the complement effect out of most
    # intent shifts; a shop with the default effects shows what the counting recovers.
    cfg = compose_config("train", ["data=synthetic", "data.num_events=40000", f"artifacts_dir={tmp_path}"])
    following = category_complements(prepared_data(cfg))["next"]
    shop = next((tmp_path / "shops").iterdir())
    truth = json.loads((shop / "truth" / "effects.json").read_text())["complements"]
    hits = [following[c][0][0] in truth[c] for c in truth if c in following]
    # After an intent shift, the shop's shoppers move to a complement of the first intent more often than elsewhere.
    assert len(hits) >= 0.9 * len(truth) and np.mean(hits) >= 0.7, (np.mean(hits), len(hits))
    stored = json.loads((bundle / "complements.json").read_text())
    assert stored["method"].startswith("within-session") and stored["next"]
    assert all(0 < share <= 1 for row in stored["next"].values() for _, share in row)


def test_a_bundle_that_does_not_match_its_manifest_is_refused(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    vectors = np.load(copy / "item_embeddings.npy")
    np.save(copy / "item_embeddings.npy", vectors[:-1])
    with pytest.raises(DataError, match=r"item_embeddings\.npy does not match .*manifest\.json .*export again"):
        load_bundle(copy)
    with pytest.raises(
        DataError, match=r"item_embeddings\.npy has shape \(\d+, 32\) float32; .* says num_items=\d+, dim=32"
    ):
        load_bundle(copy, verify=False)
    (copy / "index.faiss").unlink()
    with pytest.raises(DataError, match=r"index\.faiss is listed in .*manifest\.json but missing"):
        load_bundle(copy, verify=False)
    with pytest.raises(DataError, match=r"not an export bundle; make one with python -m serving\.export"):
        load_bundle(tmp_path)


def test_items_added_later_are_embedded_from_their_features_and_served(serving_run, bundle, tmp_path):
    from intentrec.training.datamodule import PreparedData
    from intentrec.training.evaluate import load_checkpoint

    artifacts, run = serving_run
    data = PreparedData.load(artifacts / "data" / "synthetic")
    model = load_checkpoint(run / "checkpoints" / "best.ckpt", data).eval().model
    before = load_bundle(bundle)
    vocab = before.manifest["vocab"]
    new = pa.table(
        {
            "item_id": ["new-1", "new-2"],
            "category_id": ["shoes", "no-such-category"],
            "brand": [vocab["brands"][1], None],
            "price": [42.0, None],
            "price_tier": ["premium", "mid"],
        }
    )
    pq.write_table(new, tmp_path / "new.parquet")
    manifest = add_items(bundle, tmp_path / "new.parquet", tmp_path / "v2")
    after = load_bundle(tmp_path / "v2")
    assert manifest["num_items"] == before.num_items + 2 and manifest["added_items"] == 2
    # The torch item tower embeds a cold item with the same feature codes to the same vector.
    codes = torch.as_tensor(after.feature_codes()[-2:])
    with torch.no_grad():
        expected = sum(e(codes[:, j]) for j, e in enumerate(model.item_tower.feature_embeddings))
        if model.cfg.similarity == "cosine":  # the served table holds what the model scores: unit vectors
            expected = torch.nn.functional.normalize(expected, dim=-1)
        expected = expected.numpy()
    np.testing.assert_allclose(after.embeddings[-2:], expected, atol=1e-6)
    assert codes[1, before.manifest["feature_columns"].index("category_idx")] == 0  # unknown category -> code 0
    recommender = Recommender(tmp_path / "v2")
    assert recommender.index.ntotal == before.num_items + 2
    similar = recommender.similar([["new-1"]], [10])[0]
    assert similar.info["unknown_items"] == 0 and "new-1" not in similar.item_ids
    shoes = recommender.recommend([Query(item_ids=["new-1"], categories=["shoes"], k=5)])[0]
    assert shoes.info["fallback"] is None and len(shoes.item_ids) == 5
    with pytest.raises(DataError, match=r"row 0: item_id='new-1' is already in the catalogue"):
        add_items(tmp_path / "v2", tmp_path / "new.parquet", tmp_path / "v3")


def test_export_config_errors_name_the_key(serving_run, tmp_path):
    with pytest.raises(ConfigError, match=r"ckpt_path must be given: python -m serving\.export"):
        export(compose_config("export", [*SERVING_SHOP, f"export.out_dir={tmp_path}", "ckpt_path=null"]))
    with pytest.raises(ConfigError, match=r"index\.factory='IVF\?\?' is not a FAISS index_factory string"):
        export(export_config(serving_run, tmp_path / "b", "index.factory=IVF??"))
    with pytest.raises(ConfigError, match=r"asks for 100000 inverted lists but the catalogue has only \d+ items"):
        export(export_config(serving_run, tmp_path / "c", "index.factory='IVF100000,Flat'"))


def test_add_items_command_line_refuses_known_ids_with_exit_status_2(bundle, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    known = load_bundle(bundle).items["item_id"][0]
    pq.write_table(pa.table({"item_id": [str(known)], "category_id": ["shoes"]}), tmp_path / "dup.parquet")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.add_items",
            "--bundle",
            str(bundle),
            "--items",
            str(tmp_path / "dup.parquet"),
            "--out",
            str(tmp_path / "v2"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert out.returncode == 2 and f"item_id={str(known)!r} is already in the catalogue" in out.stderr


def test_a_recent_purchase_keeps_complements_in_the_list_an_old_one_does_not(bundle):
    recommender = Recommender(bundle, complement_slots=3, complement_window_hours=24)
    category_of, top = recommender.bundle.items_by_category()
    bought = next(
        items[0] for category, items in sorted(top.items()) if recommender.catalogue.complements.get(category)
    )
    complements = recommender.catalogue.complements[category_of[bought]]
    views = top[category_of[bought]][1:5]
    now = 1_772_000_000_000
    hour = 3_600_000

    def ask(purchase_age_ms):
        times = [now - purchase_age_ms - 60_000 * (len(views) - n) for n in range(len(views))]
        return recommender.recommend(
            [
                Query(
                    item_ids=[*views, bought],
                    event_types=["view"] * len(views) + ["purchase"],
                    timestamps=[*times, now - purchase_age_ms],
                    now=now,
                    k=10,
                )
            ]
        )[0]

    recent, old = ask(hour), ask(25 * hour)
    assert "complements" not in old.info
    info = recent.info["complements"]
    assert info["after"] == category_of[bought] and info["categories"] == complements
    in_list = [i for i in recent.item_ids if category_of[i] in complements]
    assert len(in_list) >= 3 and info["items"] == in_list
    assert bought not in recent.item_ids and recent.scores == sorted(recent.scores, reverse=True)


def test_request_errors_name_the_input_and_what_is_expected(bundle, tmp_path):
    from intentrec.serving.repository import add_version, build
    from intentrec.serving.request import RequestError

    recommender = Recommender(bundle)
    item = str(recommender.bundle.items["item_id"][0])
    checks = [
        (Query(item_ids=[item, item], event_types=["view"]), r"event_types has 1 values but item_ids has 2"),
        (Query(item_ids=[item], timestamps=[1, 2]), r"timestamps has 2 values but item_ids has 1"),
        (Query(item_ids=[item], day_of_week=0), r"day_of_week=0; expected 1 \(Monday\) to 7 \(Sunday\)"),
        (Query(item_ids=[item], quantities=[1, 2]), r"quantities has 2 values but item_ids has 1; send one quantity"),
        (
            Query(item_ids=[item, item], quantities=[1, -2]),
            r"quantities\[1\]=-2; expected a whole number of units from 0 to 1,000,000 \(0 or missing counts as 1\)",
        ),
        (Query(item_ids=[item], quantities=[1.5]), r"quantities\[0\]=1\.5; expected a whole number"),
    ]
    results = recommender.recommend([q for q, _ in checks])
    for (_, pattern), result in zip(checks, results):
        assert isinstance(result, RequestError)
        assert re.search(pattern, str(result)), str(result)
    repository = build(bundle, tmp_path / "repository")
    with pytest.raises(ConfigError, match=r"recommend/1 exists; versions are never overwritten"):
        add_version(repository, bundle, 1)


def test_member_agrees_with_isin_for_short_and_long_pools():
    rng = np.random.default_rng(0)
    for size in (0, 1, 5, 32, 33, 200):
        values = rng.integers(0, 60, size=(7, 11))
        pool = rng.integers(0, 60, size=size)
        assert np.array_equal(member(values, pool), np.isin(values, pool)), size
    assert member(np.zeros(0, np.int64), [1, 2]).shape == (0,)


def test_every_answer_names_its_list_and_the_model_that_made_it(bundle, tmp_path):
    recommender = Recommender(bundle)
    _, top = recommender.bundle.items_by_category()
    views = next(iter(top.values()))[:3]
    answers = recommender.recommend([Query(item_ids=views, k=5), Query(item_ids=["unknown"], k=5)])
    answers += recommender.similar([views[:1], ["unknown"]], [5, 5])
    ids = [a.recommendation_id for a in answers]
    assert len(set(ids)) == 4 and ids == sorted(ids) and all(id_time_ms(i) for i in ids)
    assert answers[1].info["fallback"] == "popularity" and answers[3].info["fallback"] == "popularity"
    # In process the model version is the bundle's content digest: the same files, the same label.
    assert {a.model_version for a in answers} == {recommender.model_version}
    assert re.fullmatch(r"bundle-[0-9a-f]{12}", recommender.model_version)
    shutil.copytree(bundle, tmp_path / "copy")
    assert Recommender(tmp_path / "copy").model_version == recommender.model_version
    assert all(a.experiment is None and a.arm is None for a in answers)  # no experiment configured
    assert Recommender(bundle, model_version="7").recommend([Query(item_ids=views)])[0].model_version == "7"


def test_a_stage_added_to_the_pipeline_runs_in_its_place_and_is_timed(bundle):
    """An experiment arm as one more stage: it sees the typed rows between retrieval and ranking."""
    from intentrec.serving.request import RequestError
    from intentrec.serving.rows import Batch, Row

    recommender = Recommender(bundle)
    _, top = recommender.bundle.items_by_category()
    views = next(iter(top.values()))[:3]
    requests = [Query(item_ids=views, k=5), Query(item_ids=views, k=0), Query(item_ids=["unknown"], k=5)]
    before = recommender.recommend(requests)
    assert [stage.name for stage in recommender.stages] == [
        "decode",
        "assign",
        "encode",
        "retrieve",
        "rank",
        "explore",
        "rules",
        "respond",
    ]
    held_out = recommender.catalogue.item_index[before[0].item_ids[0]]

    class HoldOut:  # an arm that never shows one item
        name = "holdout"

        def run(self, batch: Batch) -> None:
            for row in batch.active():
                keep = row.items != held_out
                row.items, row.scores = row.items[keep], row.scores[keep]
                row.info["arm"] = "holdout"

    recommender.stages.insert(4, HoldOut())
    after = recommender.recommend(requests)
    assert before[0].item_ids[0] not in after[0].item_ids and after[0].item_ids == before[0].item_ids[1:] + [
        after[0].item_ids[-1]
    ]
    assert after[0].info["arm"] == "holdout" and "arm" not in after[2].info  # the fallback row is not active
    assert isinstance(after[1], RequestError) and after[2].item_ids == before[2].item_ids
    assert list(recommender.timing) == [
        "decode",
        "assign",
        "encode",
        "retrieve",
        "holdout",
        "rank",
        "explore",
        "rules",
        "respond",
    ]
    assert isinstance(recommender.decode(requests[0]), Row)
