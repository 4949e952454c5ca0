"""Serving the hybrid: export takes the weight tuned in training, and the served top k equals the
hybrid's ranking of the whole catalogue (logit + weight * log(eps + co-occurrence)) under the rules."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from intentrec.errors import ConfigError
from intentrec.serving.bundle import add_items, load_bundle
from intentrec.serving.export import export
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query
from intentrec.training.evaluate import evaluate
from tests.conftest import compose_config
from tests.serving.conftest import SERVING_SHOP, export_config


@pytest.fixture(scope="module")
def hybrid_run(serving_run, tmp_path_factory):
    """The serving model's run, copied and re-evaluated with the hybrid (weight 2 chosen from [2]; co-occurrence
    over 5 steps, discounted by popularity)."""
    artifacts, run = serving_run
    copy = tmp_path_factory.mktemp("hybrid") / "run"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "best.ckpt", copy / "checkpoints" / "best.ckpt")
    shutil.copy(run / "checkpoints" / "ranker.ckpt", copy / "checkpoints" / "ranker.ckpt")
    evaluate(
        compose_config(
            "evaluate",
            [
                *SERVING_SHOP,
                f"artifacts_dir={artifacts}",
                f"ckpt_path={copy / 'checkpoints' / 'best.ckpt'}",
                f"run_dir={copy}",
                "hybrid.enabled=true",
                "hybrid.weights=[2]",
                "hybrid.window=5",
                "hybrid.popularity_discount=0.5",
            ],
        )
    )
    return artifacts, copy


@pytest.fixture(scope="module")
def hybrid_bundle(hybrid_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid_bundle") / "v1"
    export(export_config(hybrid_run, out, "export.hybrid=true", "export.model_repository=false"))
    return out


def test_export_serves_the_weight_tuned_in_training_and_no_ranker(hybrid_run, hybrid_bundle):
    manifest = load_bundle(hybrid_bundle).manifest
    tuned = json.loads((hybrid_run[1] / "metrics.json").read_text())["info"]["hybrid"]
    assert manifest["hybrid"]["weight"] == tuned["weight"] == 2.0
    assert manifest["ranker"] is None and "cooccurrence.npz" in manifest["files"]


def test_served_top_k_equals_the_hybrid_ranking_of_the_whole_catalogue(hybrid_run, hybrid_bundle):
    from intentrec.training.baselines import CoOccurrence
    from intentrec.training.datamodule import PreparedData, read_split
    from intentrec.training.hybrid import COOCCURRENCE_KEYS

    artifacts, _ = hybrid_run
    data = PreparedData.load(artifacts / "data" / "synthetic")
    settings = load_bundle(hybrid_bundle).manifest["hybrid"]
    assert settings["window"] == 5 and settings["popularity_discount"] == 0.5
    cooc = CoOccurrence(
        data.padded("train_count"),
        read_split(data.directory / "train.parquet"),
        **{key: settings[key] for key in COOCCURRENCE_KEYS},
    )
    recommender = Recommender(hybrid_bundle)
    raw = data.padded("item_id", "").astype(str)
    rng = np.random.default_rng(1)
    queries = []
    for n in rng.integers(1, 12, 60):
        items = raw[rng.integers(1, data.num_items + 1, n)].tolist()
        types = ["view"] * (n - 1) + [str(rng.choice(["view", "add_to_cart", "purchase"]))]
        queries.append(Query(item_ids=items, event_types=types, k=20))
    decoded = [recommender.decode(q) for q in queries]
    vectors = recommender.encode(decoded)
    for row, vector in zip(decoded, vectors):
        row.query = vector
    served = recommender.retriever.candidates(decoded)
    steps = np.zeros((len(decoded), max(len(d.idx) for d in decoded)), np.int64)
    for row, d in enumerate(decoded):
        steps[row, : len(d.idx)] = d.idx
    evidence = cooc.sparse(steps).toarray()
    logits = (
        vectors.astype(np.float64) @ recommender.catalogue.embeddings.T.astype(np.float64) * recommender.catalogue.scale
    )
    full = logits + settings["weight"] * np.log(settings["eps"] + evidence)
    reached = 0
    for row, d in enumerate(decoded):
        full[row, 0] = -np.inf
        full[row, d.excluded] = -np.inf
        expected = np.argsort(-full[row], kind="stable")[:20]
        got_items, got_scores = served[row][0][:20], served[row][1][:20]
        np.testing.assert_allclose(got_scores, full[row, expected], rtol=1e-5, atol=1e-4)
        # Same items up to the order of near-ties (float32 FAISS vs float64 here).
        assert set(got_items.tolist()) == set(expected.tolist()) or np.allclose(
            np.sort(full[row, got_items]), np.sort(full[row, expected]), atol=1e-4
        )
        # Items beyond the FAISS candidates were reached through co-occurrence.
        reached += int(np.sum(evidence[row, got_items] > 0))
    assert reached > 0, "co-occurrence must have placed items in the served lists for this test to mean something"
    result = recommender.recommend(queries[:1])[0]
    found = np.flatnonzero(evidence[0] > 0)
    assert result.info["cooccurring_items"] == len(found[~np.isin(found, decoded[0].excluded)])
    assert len(result.item_ids) == 20


def test_export_hybrid_errors_name_the_key(serving_run, hybrid_run, tmp_path):
    with pytest.raises(ConfigError, match=r"export\.hybrid='maybe'; expected auto, true or false"):
        export(export_config(serving_run, tmp_path / "x", "export.hybrid=maybe", "export.model_repository=false"))
    with pytest.raises(ConfigError, match=r"export\.hybrid=true but .*metrics\.json has no hybrid results"):
        export(export_config(serving_run, tmp_path / "a", "export.hybrid=true", "export.model_repository=false"))
    ranker = hybrid_run[1] / "checkpoints" / "ranker.ckpt"
    with pytest.raises(ConfigError, match=r"export\.ranker_ckpt=.* and the hybrid are alternatives"):
        export(
            export_config(
                hybrid_run,
                tmp_path / "b",
                "export.hybrid=true",
                f"export.ranker_ckpt={ranker}",
                "export.model_repository=false",
            )
        )


def test_items_added_to_a_hybrid_bundle_are_served_without_co_occurrence(hybrid_bundle, tmp_path):
    pq.write_table(pa.table({"item_id": ["new-1"], "category_id": ["shoes"]}), tmp_path / "new.parquet")
    add_items(hybrid_bundle, tmp_path / "new.parquet", tmp_path / "v2")
    recommender = Recommender(tmp_path / "v2")
    assert recommender.catalogue.cooccurrence.shape == (recommender.catalogue.num_items + 1,) * 2
    result = recommender.recommend([Query(item_ids=["new-1"], k=5)])[0]
    assert result.info["fallback"] is None and result.info["cooccurring_items"] == 0 and len(result.item_ids) == 5


def test_a_changed_cooccurrence_file_is_refused(hybrid_bundle, tmp_path):
    import scipy.sparse as sp

    from intentrec.errors import DataError

    copy = tmp_path / "b"
    shutil.copytree(hybrid_bundle, copy)

    matrix = sp.load_npz(copy / "cooccurrence.npz")
    sp.save_npz(copy / "cooccurrence.npz", matrix * 2)
    with pytest.raises(DataError, match=r"cooccurrence\.npz does not match .*manifest\.json"):
        Recommender(copy)


def test_a_cooccurrence_matrix_of_another_catalogue_size_is_refused(hybrid_bundle, tmp_path):
    import scipy.sparse as sp

    from intentrec.errors import DataError

    copy = tmp_path / "b"
    shutil.copytree(hybrid_bundle, copy)
    matrix = sp.load_npz(copy / "cooccurrence.npz").tocsr()
    n = matrix.shape[0]
    sp.save_npz(copy / "cooccurrence.npz", matrix[: n - 1, : n - 1])
    with pytest.raises(
        DataError,
        match=rf"cooccurrence\.npz is {n - 1} x {n - 1}; the manifest's trained_items={n - 1} needs {n} x {n}",
    ):
        Recommender(copy, verify=False)
