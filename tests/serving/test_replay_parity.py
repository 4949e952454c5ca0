"""Raw events replayed through serving give exactly the features preparation gave training.

Test sequences of the serving shop made with 31-120 minute breaks inside sessions
(`data.long_pause_prob`) are turned back into the events a shop sends: raw item ids, event types, times,
the shop's own session ids, channels, quantities and the context of the moment, with unknown items
mixed in. `Recommender.decode` must give the offline step and context codes of `training.datamodule`
for every one, the encoder the checkpoint's own queries, retrieval the catalogue ranking training.evaluate
computes, and the cart the same as the event platform's profile replays from the same events. The same
replay runs on the real Diginetica sample (../shared/data), whose session ids are its sequences.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from intentrec.data.features import SESSION_GAP_MS, replay_cart
from intentrec.models.context import CONTEXT_FIELDS  # the order of Recommender.decode's Row.context
from intentrec.models.intent import NOW_COLUMNS
from intentrec.serving.export import export
from intentrec.serving.recommender import Recommender
from intentrec.serving.request import Query
from intentrec.training.train import train
from tests.conftest import SHARED_DATA, compose_config
from tests.serving.conftest import HEADS, export_config, request_context, train_serving_model, triton_for

EXAMPLES = 600
STEP_FIELDS = {"idx": "item_ids", "event_types": "event_types", "gap_buckets": "gap_buckets", "channels": "channels"}


@pytest.fixture(scope="module")
def paused(tmp_path_factory):
    """(serving_run, bundle) of the serving shop with breaks of 31-120 minutes inside 3% of its steps."""
    root = tmp_path_factory.mktemp("paused")
    # Parity with the checkpoint's own features, queries and signals holds whatever it learnt: one epoch.
    run = train_serving_model(
        root / "artifacts", root / "run", "data.long_pause_prob=0.03", HEADS, "trainer.max_epochs=1"
    )
    export(export_config(run, root / "bundle"))
    return run, root / "bundle"


def replay_examples(data_dir, run, bundle, sessions_of, count: int = EXAMPLES) -> dict:
    """`count` random test examples of the prepared data in `data_dir`: their offline arrays and the raw-event
    queries rebuilt from them (raw ids, event types, times, channels, quantities, the context of the moment;
    `sessions_of(sequence_key, items, times, types)` gives the shop's session id of each event), with an item
    the catalogue does not know put into every fifth."""
    from intentrec.training.datamodule import PreparedData, evaluation_examples, read_split
    from intentrec.training.evaluate import load_checkpoint

    data = PreparedData.load(data_dir)
    task = load_checkpoint(run / "checkpoints" / "best.ckpt", data).eval()
    split = read_split(data.directory / "test.parquet")
    T = task.model.cfg.max_seq_len
    arrays, _, _ = evaluation_examples(split, T, 20, data.padded("category_idx"), data.padded("train_count"), 5)
    keys = pq.read_table(data.directory / "sequence_map.parquet", columns=["seq_idx", "sequence_key"])
    key_of = dict(zip(keys["seq_idx"].to_pylist(), keys["sequence_key"].to_pylist()))
    seq_idx = pq.read_table(data.directory / "test.parquet", columns=["seq_idx"])["seq_idx"].to_numpy()
    vocab = data.vocab_json
    raw_ids = data.padded("item_id", "").astype(str)
    steps = split.steps
    targets = np.flatnonzero(steps["target_mask"])
    position = targets - split.offsets[split.row_of_step[targets]]
    usable = np.flatnonzero(position >= 1)  # evaluation_examples keeps these, in this order
    chosen, queries, unknown = [], [], []
    rng = np.random.default_rng(0)
    for e in rng.permutation(len(usable))[:count]:
        target = targets[usable[e]]
        row = split.row_of_step[target]
        history = np.arange(split.offsets[row], target)
        types = [vocab["event_types"][c] for c in steps["event_types"][history]]
        times = steps["timestamps"][history].astype(np.int64).tolist()
        items = raw_ids[steps["item_ids"][history]].tolist()

        def name(table, code):
            return vocab[table][int(code)] if int(code) > 0 else None

        events = {
            "item_ids": items,
            "event_types": types,
            "timestamps": times,
            "session_ids": sessions_of(key_of[int(seq_idx[row])], items, times, types),
            "channels": [name("channels", c) or "" for c in steps["channels"][history]],
            "quantities": [int(q) for q in steps["quantities"][history]],
        }
        dropped = 0
        if len(chosen) % 5 == 0:  # an item the catalogue does not know, at a random place: skipped by serving
            at = int(rng.integers(0, len(items) + 1))
            for key, value in (
                ("item_ids", "never-sold-item"),
                ("event_types", "view"),
                ("timestamps", times[max(at - 1, 0)] if times else 0),
                ("session_ids", "s-unknown"),
                ("channels", "web"),
                ("quantities", 1),
            ):
                events[key] = events[key][:at] + [value] + events[key][at:]
            dropped = 1
        chosen.append(e)
        unknown.append(dropped)
        queries.append(Query(**events, **request_context(split, vocab, target)))
    chosen = np.asarray(chosen)
    return {
        "task": task,
        "arrays": {k: v[chosen] for k, v in arrays.items()},
        "queries": queries,
        "unknown": np.asarray(unknown),
        "recommender": Recommender(bundle),
        "T": T,
    }


@pytest.fixture(scope="module")
def replay(paused):
    """The serving shop's replay: session ids from the shop's raw events."""
    from intentrec.data.prepare import sequence_keys

    (artifacts, run), bundle = paused
    raw = pq.read_table(next((artifacts / "shops").iterdir()) / "events.parquet")
    times_ms = pc.cast(raw["event_time"], pa.int64()).to_pylist()
    # The shopper each raw event belongs to, by preparation's own stitching (anonymous events join the customer
    # of their device or session), tells apart events that tie on item, time and type (a campaign's e-mails).
    codes, shoppers, _, _ = sequence_keys(raw, "customer", True)
    columns = (raw[c].to_pylist() for c in ("item_id", "event_type", "session_id"))
    session_of = {(i, t, e, k): s for (i, e, s), t, k in zip(zip(*columns), times_ms, shoppers[codes])}

    def sessions_of(key, items, times, types):
        return [session_of[(i, t, k, key)] for i, t, k in zip(items, times, types)]

    return replay_examples(artifacts / "data" / "synthetic", run, bundle, sessions_of)


@pytest.fixture(scope="module")
def diginetica_replay(tmp_path_factory):
    """A small model of the real Diginetica sample (sessions are its sequences, so a session id is the key)."""
    shared_data = SHARED_DATA
    if not (shared_data / "diginetica").is_dir():
        pytest.skip(f"shared data not found at {shared_data} (the real-data replay needs ../shared/data/diginetica)")
    root = tmp_path_factory.mktemp("diginetica")
    overrides = [
        "data=diginetica",
        f"data.path={shared_data / 'diginetica'}",
        f"artifacts_dir={root / 'artifacts'}",
        "trainer.max_epochs=1",
        "model.embedding_dim=16",
        "ranker.enabled=false",
        "data.max_seq_len=8",  # shorter than many of its sessions, so truncation is replayed too
    ]
    train(compose_config("train", [*overrides, f"run_dir={root / 'run'}"]))
    export(compose_config("export", [*overrides, f"ckpt_path={root / 'run' / 'checkpoints' / 'best.ckpt'}",
                                     f"export.out_dir={root / 'bundle'}"]))  # fmt: skip
    return replay_examples(
        root / "artifacts" / "data" / "diginetica",
        root / "run",
        root / "bundle",
        lambda key, items, *_: [key] * len(items),
    )


def test_replayed_events_cover_the_cases_that_disagree(replay):
    """The sample holds in-session breaks over 30 minutes, truncation, unknown items, removals, quantities and
    store purchases, so the parity below is a claim about each."""
    queries, T = replay["queries"], replay["T"]
    assert len(queries) >= 500
    long_break = 0
    for q in queries:
        t, s = np.asarray(q.timestamps), np.asarray(q.session_ids)
        long_break += int((((t[1:] - t[:-1]) > SESSION_GAP_MS) & (s[1:] == s[:-1])).any())
    types = [t for q in queries for t in q.event_types]
    assert long_break >= 20, long_break
    assert sum(len(q.item_ids) > T + 1 for q in queries) >= 20
    assert replay["unknown"].sum() >= 100
    assert types.count("remove_from_cart") >= 10 and types.count("store_purchase") >= 1
    assert sum(max(q.quantities) > 1 for q in queries) >= 10


def test_the_real_diginetica_replay_holds_long_pauses_purchases_truncation_and_unknown_items(diginetica_replay):
    queries, T = diginetica_replay["queries"], diginetica_replay["T"]
    assert len(queries) >= 500
    pauses = sum(int((np.diff(np.asarray(q.timestamps)) > SESSION_GAP_MS).any()) for q in queries)
    assert pauses >= 5, pauses  # the sample's own sessions, with their own breaks
    assert sum("purchase" in q.event_types for q in queries) >= 20
    assert sum(len(q.item_ids) > T + 1 for q in queries) >= 1
    assert diginetica_replay["unknown"].sum() >= 100


@pytest.mark.parametrize("replayed", ["replay", "diginetica_replay"])
def test_serving_decodes_raw_events_into_the_features_training_saw(replayed, request):
    replay = request.getfixturevalue(replayed)
    recommender, arrays = replay["recommender"], replay["arrays"]
    decoded = [recommender.decode(q) for q in replay["queries"]]
    for n, d in enumerate(decoded):
        length = int((arrays["item_ids"][n] > 0).sum())
        for served, offline in STEP_FIELDS.items():
            assert getattr(d, served).tolist() == arrays[offline][n, :length].tolist(), (n, served)
        assert d.new_session.tolist() == arrays["new_session"][n, :length].tolist(), n
        context = [int(arrays[name][n, length - 1]) for name in CONTEXT_FIELDS]
        assert d.context == context, (n, d.context, context)
        assert d.info["unknown_items"] == replay["unknown"][n]
        assert d.loyalty == int(arrays["loyalty"][n])
    # ... and the encoder reads them into the checkpoint's own queries.
    served = recommender.encode(decoded)
    batch = {k: torch.as_tensor(v.astype(np.int64)) for k, v in arrays.items() if v.dtype.kind in "iub"}
    with torch.no_grad():
        expected = replay["task"].model.query(batch).numpy()
    assert np.abs(served - expected).max() < 1e-5
    # ... and, with intent heads, into the checkpoint's own signals (the request's context is the current one).
    encoder = recommender.encoder
    if replay["task"].model.intent is None:
        assert encoder.signals is None
        refused = recommender.intent(replay["queries"][:2])
        assert all("has no intent heads; train with intent.heads=second_stage" in str(r) for r in refused)
        return
    _, signals = encoder.encode_with_intent(decoded)
    now = {**batch, **{column: batch[field] for field, column in NOW_COLUMNS.items()}}
    with torch.no_grad():
        _, logits = replay["task"].model.query(now, intent=True)
    offline = encoder.signals.of(logits["binary"].numpy(), encoder.signals.distribution(logits["category"].numpy()))
    for got, want in zip(signals, offline):
        assert got.keys() == want.keys() == {"purchase", "exit", "abandon", "next_category"}
        for head in ("purchase", "exit", "abandon"):
            assert abs(got[head] - want[head]) < 1e-5, (head, got, want)
        assert [c["category"] for c in got["next_category"]][:1] == [c["category"] for c in want["next_category"]][:1]


@pytest.mark.parametrize("replayed", ["replay", "diginetica_replay"])
def test_served_top_k_and_scores_are_training_evaluates_for_the_same_checkpoint(replayed, request):
    """Retrieval (exact index) ranks the catalogue as training.evaluate ranks it for the model: the same top 20
    (up to the order of near-ties) with the same scores. The ranker and the list rules come after, apart."""
    from intentrec.serving.rows import Batch

    replay = request.getfixturevalue(replayed)
    recommender, arrays, task, K = replay["recommender"], replay["arrays"], replay["task"], 20
    within = [n for n, q in enumerate(replay["queries"]) if len(q.item_ids) <= recommender.limits.max_events]
    assert len(within) >= 450
    queries = [replay["queries"][n] for n in within]
    batch = Batch([replace(q, exclude_purchased=False, exclude_in_cart=False, k=K) for q in queries])
    for stage in recommender.stages[: [s.name for s in recommender.stages].index("rank")]:
        stage.run(batch)
    tensors = {k: torch.as_tensor(v[within].astype(np.int64)) for k, v in arrays.items() if v.dtype.kind in "iub"}
    with torch.no_grad():
        offline = task.catalogue_scores(tensors).double().numpy()
    for n, row in enumerate(batch.rows):
        assert not isinstance(row, Exception), f"{n}: {row}"
        items, scores = row.items[:K], row.scores[:K]
        expected = np.argsort(-offline[n], kind="stable")[:K]
        np.testing.assert_allclose(scores, offline[n, items], rtol=1e-6, atol=1e-5, err_msg=str(n))
        np.testing.assert_allclose(scores, offline[n, expected], rtol=1e-6, atol=1e-5, err_msg=str(n))
        swapped = np.setxor1d(items, expected)  # only items tied with the 20th within float error
        assert (np.abs(offline[n, swapped] - offline[n, expected[-1]]) < 1e-5).all(), n


def test_the_cart_serving_keeps_is_the_profiles(replay, tmp_path):
    """The recommender's cart (for exclude_in_cart) and the event platform's profile cart replay the same events
    with the same rule: quantities count, a removal takes units away, a store purchase leaves the web cart."""
    from intentrec.serving.events.profile import build_profile
    from intentrec.serving.events.store import open_store

    recommender = replay["recommender"]
    with_cart = [q for q in replay["queries"] if "add_to_cart" in q.event_types][:60]
    assert len(with_cart) >= 30
    store = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    for n, q in enumerate(with_cart):
        store.append(
            [
                {
                    "event_id": f"r{n}-{j}",
                    "event_time": t,
                    "event_type": k,
                    "item_id": i,
                    "quantity": c,
                    "device_id": f"d{n}",
                    "session_id": f"{n}/{s}",  # two examples of one shopper must not share a profile
                }
                for j, (i, k, t, s, c) in enumerate(
                    zip(q.item_ids, q.event_types, q.timestamps, q.session_ids, q.quantities)
                )
            ]
        )
    partial = 0
    for n, q in enumerate(with_cart):
        in_cart = set(recommender.catalogue.item_ids[recommender.decode(q).in_cart])
        profile = build_profile(store, "device", f"d{n}", now=q.now, window=len(q.item_ids))  # every event
        known = {i for i in profile.cart if i in recommender.catalogue.item_index}
        assert in_cart == known, n
        cart, _, _ = replay_cart(zip(q.item_ids, q.event_types, q.quantities, q.timestamps))
        assert profile.cart == cart
        partial += any(v > 1 for v in cart.values())
    assert partial >= 1


def test_a_sample_through_the_real_triton_server_answers_as_in_process(replay, paused, tmp_path):
    """The same raw events (session ids, quantities, unknown items included) sent to tritonserver over gRPC give
    the in-process recommender's items and scores: the Triton path decodes them by the same rules."""
    from intentrec.serving.client import Client

    short = [q for q in replay["queries"] if len(q.item_ids) <= 500]  # under the server's max_events
    sample = [replace(q, exclude_in_cart=True, k=20) for q in short[::10][:50]]
    assert len(sample) == 50 and sum(q.quantities is not None and max(q.quantities) > 1 for q in sample) >= 1
    expected = replay["recommender"].recommend(sample)
    with triton_for(paused[1], tmp_path) as server, Client(server.grpc_url) as client:
        served = client.recommend(sample)
    for mine, theirs in zip(expected, served):
        assert theirs.item_ids == mine.item_ids
        assert np.allclose(theirs.scores, mine.scores, atol=1e-5)
