"""A/B experiments: configs, deterministic assignment, arms in the serving path (in process and in Triton)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from intentrec.errors import ConfigError
from intentrec.paths import CONF_DIR
from intentrec.serving.events.store import open_store
from intentrec.serving.experiments import Experiment, check_registry, load_experiment
from intentrec.serving.recommender import Recommender
from intentrec.serving.repository import ServingOptions, add_version, build, set_experiment
from intentrec.serving.repository import main as repository_main
from intentrec.serving.request import Query
from intentrec.serving.server import TritonServer

TWO_ARMS = {
    "name": "home",
    "salt": "home-1",
    "arms": [{"name": "model", "share": 0.5}, {"name": "popularity", "share": 0.5, "policy": "popularity"}],
}


def experiment(**changes) -> Experiment:
    return Experiment.from_dict({**TWO_ARMS, **changes})


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ([{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}], r"shares \[0.5, 0.4\] sum to 0.9; expected 1"),
        ([{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}], r"arm names \['a', 'a'\] repeat"),
        ([{"name": "a", "share": 1, "policy": "random"}], r"arms\[0\]\.policy='random'; expected one of \['model'"),
        ([{"name": "a", "share": 0}, {"name": "b", "share": 1}], r"arms\[0\]\.share=0; expected a number in \(0, 1\]"),
        ([{"name": "a", "share": 1, "model": "2"}], r"arms\[0\]: unknown keys \['model'\]"),
        (
            [{"name": "a", "share": 1, "policy": "popularity", "model_version": "2"}],
            r"a popularity arm uses no model; remove model_version='2'",
        ),
        ([], r"arms=\[\]; expected a list of arms"),
        (
            [{"name": "a", "share": 1, "explore": 0.2, "explore_pool": 1}],
            r"arms\[0\]\.explore_pool=1; expected an integer of at least 2",
        ),
    ],
)
def test_a_bad_experiment_config_names_the_key_and_what_is_expected(arms, message):
    with pytest.raises(ConfigError, match=message):
        Experiment.from_dict({**TWO_ARMS, "arms": arms}, "conf/experiment_ab/x.yaml")


def test_a_config_that_is_no_experiment_is_refused_naming_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"x.yaml: salt=''; expected a non-empty string"):
        Experiment.from_dict({**TWO_ARMS, "salt": ""}, "x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: unknown keys \['owner'\]; expected name, salt, arms"):
        Experiment.from_dict({**TWO_ARMS, "owner": "me"}, "x.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML"):
        load_experiment(broken)
    with pytest.raises(ConfigError, match=r"has no recommend/config.pbtxt; build the repository first"):
        set_experiment(tmp_path, "aa", ServingOptions())


def test_every_shipped_experiment_config_loads():
    names = sorted(p.stem for p in (CONF_DIR / "experiment_ab").glob("*.yaml"))
    assert {"aa", "model_vs_popularity", "context"} <= set(names)
    for name in names:
        assert load_experiment(name).arms
    with pytest.raises(ConfigError, match=r"experiment_ab='nope': no file .*expected a path or one of \['aa'"):
        load_experiment("nope")


def test_assignment_is_deterministic_follows_the_shares_and_a_new_salt_reshuffles():
    uneven = experiment(arms=[{"name": "a", "share": 0.6}, {"name": "b", "share": 0.4}])
    units = [f"customer:c{i}" for i in range(20_000)]
    arms = [uneven.assign(u).name for u in units]
    share = Counter(arms)["a"] / len(units)
    assert abs(share - 0.6) < 0.015, share
    again = Experiment.from_dict(uneven.as_dict())  # another process, after a restart: the same arms
    assert [again.assign(u).name for u in units[:2000]] == arms[:2000]
    moved = np.mean(
        [
            a != b
            for a, b in zip(
                arms, (Experiment.from_dict({**uneven.as_dict(), "salt": "home-2"}).assign(u).name for u in units)
            )
        ]
    )
    assert 0.44 < moved < 0.52  # independent of the first: 2 x 0.6 x 0.4 = 48% change arm


def test_a_changed_split_under_the_same_salt_is_refused(tmp_path):
    registry = tmp_path / "experiments.json"
    check_registry(registry, experiment())
    check_registry(registry, experiment())  # the same split again: fine
    changed = experiment(arms=[{"name": "model", "share": 0.7}, {"name": "popularity", "share": 0.3}])
    with pytest.raises(ConfigError, match=r"salt 'home-1' already split traffic as \[\['model', 0.5\].*new salt"):
        check_registry(registry, changed)
    check_registry(registry, Experiment.from_dict({**changed.as_dict(), "salt": "home-2"}))
    assert set(json.loads(registry.read_text())) == {"home-1", "home-2"}


# ------------------------------------------------------------------------------------------ in process


def views_of(recommender, count=3):
    _, top = recommender.bundle.items_by_category()
    return next(iter(top.values()))[:count]


def without_context(recommender, query) -> list[str]:
    """The list of `query` with its context, loyalty and past purchases left out, as the no_context policy says
    (a request cannot leave out the hour: without one it is the clock's)."""
    from intentrec.serving.rows import Batch

    row = recommender.decode(query)
    row.context, row.loyalty, row.past = [0] * len(row.context), 0, row.past[:0]
    batch = Batch([query], rows=[row])
    for stage in recommender.stages[2:]:  # after decode and the (absent) experiment's assignment
        stage.run(batch)
    return batch.results[0].item_ids


def test_arms_answer_with_their_policy_and_carry_their_labels(bundle):
    plain = Recommender(bundle)
    views = views_of(plain)
    context = {"device_type": "mobile", "hour": 20, "day_of_week": 5}
    three = Experiment.from_dict(
        {
            "name": "ctx",
            "salt": "ctx-1",
            "arms": [
                {"name": "model", "share": 0.4},
                {"name": "popularity", "share": 0.3, "policy": "popularity"},
                {"name": "no_context", "share": 0.3, "policy": "no_context"},
            ],
        }
    )
    recommender = Recommender(bundle, experiment=three)
    shoppers = [f"customer:c{i}" for i in range(30)]
    answers = recommender.recommend([Query(item_ids=views, k=5, shopper=s, **context) for s in shoppers])
    expected = {
        "model": plain.recommend([Query(item_ids=views, k=5, **context)])[0].item_ids,
        "popularity": plain.recommend([Query(item_ids=[], k=5)])[0].item_ids,
        "no_context": without_context(plain, Query(item_ids=views, k=5, **context)),
    }
    assert expected["model"] != expected["popularity"]
    seen = set()
    for shopper, answer in zip(shoppers, answers):
        arm = three.assign(shopper).name
        seen.add(arm)
        assert (answer.experiment, answer.arm) == ("ctx", arm)
        assert answer.item_ids == expected[arm], arm
        assert answer.info.get("policy") == (None if arm == "model" else arm)
        assert answer.info.get("fallback") is None  # a popularity arm is not a fallback
    assert seen == {"model", "popularity", "no_context"}
    # No shopper named: outside the experiment, served by the model.
    outside = recommender.recommend([Query(item_ids=views, k=5, **context)])[0]
    assert (outside.experiment, outside.arm, outside.item_ids) == (None, None, expected["model"])
    assert "name the shopper" in outside.info["experiment_unit"]


def test_a_shopper_keeps_their_arm_across_devices_once_the_devices_are_linked(bundle, tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    recommender = Recommender(bundle, experiment=experiment(), profile_store=store)
    views = views_of(recommender)
    # Find a customer whose arm differs from that of both their devices on their own.
    split = experiment()
    customer = next(
        f"c{i}"
        for i in range(1000)
        if split.assign(f"customer:c{i}").name != split.assign(f"device:d{i}a").name
        and split.assign(f"customer:c{i}").name != split.assign(f"device:d{i}b").name
    )
    number = customer[1:]
    before = recommender.recommend([Query(item_ids=views, shopper=f"device:d{number}a")])[0].arm
    assert before == split.assign(f"device:d{number}a").name
    store.identify(customer, device_id=f"d{number}a")
    store.identify(customer, device_id=f"d{number}b")
    arms = [
        recommender.recommend([Query(item_ids=views, shopper=f"device:d{number}a")])[0].arm,
        recommender.recommend([Query(item_ids=views, shopper=f"device:d{number}b")])[0].arm,
        recommender.recommend([Query(item_ids=views, identity=f"device:d{number}b")])[0].arm,
        recommender.recommend([Query(item_ids=views, shopper=customer)])[0].arm,
    ]
    assert arms == [split.assign(f"customer:{customer}").name] * 4
    bad = recommender.recommend([Query(item_ids=views, shopper="phone:1")])[0]
    assert "shopper='phone:1'; expected customer:<id>, device:<id>" in str(bad)
    store.close()


def test_an_arm_on_another_model_version_is_answered_by_that_version(bundle, tmp_path):
    versions = Experiment.from_dict(
        {
            "name": "v",
            "salt": "v-1",
            "arms": [
                {"name": "new", "share": 0.5, "model_version": "2"},
                {"name": "old", "share": 0.5, "model_version": "1"},
            ],
        }
    )
    with pytest.raises(ConfigError, match=r"arm model version\(s\) \['1'\] are not available here"):
        Recommender(bundle, model_version="2", experiment=versions)
    recommender = Recommender(bundle, model_version="2", experiment=versions, arm_bundles={"1": bundle})
    views = views_of(recommender)
    shoppers = [f"device:x{i}" for i in range(20)]
    answers = recommender.recommend([Query(item_ids=views, shopper=s) for s in shoppers])
    for shopper, answer in zip(shoppers, answers):
        arm = versions.assign(shopper)
        assert (answer.arm, answer.model_version) == (arm.name, arm.model_version)
    assert {a.model_version for a in answers} == {"1", "2"}
    assert len({a.recommendation_id for a in answers}) == len(answers)


# ------------------------------------------------------------------------------------------ Triton


def test_triton_assigns_arms_and_serves_an_older_version_as_an_arm(bundle, tmp_path, capsys):
    from intentrec.serving.client import Client

    repository = build(bundle, tmp_path / "repository", ServingOptions())
    config = tmp_path / "versions.yaml"
    config.write_text(
        "name: versions\nsalt: versions-1\narms:\n"
        "  - {name: new, share: 0.4, model_version: '2'}\n"
        "  - {name: old, share: 0.3, model_version: '1'}\n"
        "  - {name: popularity, share: 0.3, policy: popularity}\n"
    )
    # The experiment names version 2 before it exists: refused, nothing changed.
    assert repository_main(["experiment", "--out", str(repository), "--experiment-ab", str(config)]) == 2
    assert "arm model version(s) ['2'] are not in" in capsys.readouterr().err
    add_version(repository, bundle)
    assert repository_main(["experiment", "--out", str(repository), "--experiment-ab", str(config)]) == 0
    split = load_experiment(config)
    with TritonServer(repository, None, None, None, log_file=tmp_path / "server.log", backend_root=tmp_path / "b") as s:
        with Client(s.grpc_url) as client:
            views = views_of(Recommender(bundle))
            shoppers = [f"customer:t{i}" for i in range(24)]
            replies = client.recommend([Query(item_ids=views, k=5, shopper=u) for u in shoppers])
            outside = client.recommend(Query(item_ids=views, k=5))
    for shopper, reply in zip(shoppers, replies):
        arm = split.assign(shopper)
        assert (reply.experiment, reply.arm) == ("versions", arm.name)
        assert reply.model_version == (arm.model_version or "2"), (arm, reply.model_version)
        assert len(reply.item_ids) == 5
    assert {r.arm for r in replies} == {"new", "old", "popularity"}
    assert (outside.experiment, outside.arm, outside.model_version) == (None, None, "2")
    # The same salt with another split is refused; a new salt is accepted.
    config.write_text(
        config.read_text().replace("share: 0.4", "share: 0.5").replace("share: 0.3, model", "share: 0.2, model")
    )
    with pytest.raises(ConfigError, match="already split traffic"):
        set_experiment(repository, str(config), ServingOptions())
    shutil.rmtree(repository, ignore_errors=True)


def test_an_exploring_arm_shows_shuffled_lists_with_exact_propensities(bundle):
    plain = Recommender(bundle)
    views = views_of(plain)
    greedy = plain.recommend([Query(item_ids=views, k=5)])[0].item_ids
    pool = plain.recommend([Query(item_ids=views, k=20)])[0].item_ids
    exploring = Experiment.from_dict(
        {"name": "x", "salt": "x-1", "arms": [{"name": "explore", "share": 1, "explore": 0.5, "explore_pool": 20}]}
    )
    recommender = Recommender(bundle, experiment=exploring)
    answers = recommender.recommend([Query(item_ids=views, k=5, shopper=f"device:e{i}") for i in range(200)])
    shuffled = [a for a in answers if a.info.get("explored")]
    assert 60 < len(shuffled) < 140  # about half
    for answer in answers:
        expected = [0.5 / 20 + 0.5 * (item == greedy[p]) for p, item in enumerate(answer.item_ids)]
        assert answer.info["propensities"] == pytest.approx(expected, abs=1e-6)
        assert set(answer.item_ids) <= set(pool)
    assert all(a.item_ids == greedy for a in answers if not a.info.get("explored"))
    with pytest.raises(ConfigError, match=r"explore=1.5; expected a probability in \[0, 1\]"):
        Experiment.from_dict({**TWO_ARMS, "arms": [{"name": "a", "share": 1, "explore": 1.5}]})
    with pytest.raises(ConfigError, match="a popularity arm cannot explore"):
        Experiment.from_dict({**TWO_ARMS, "arms": [{"name": "a", "share": 1, "policy": "popularity", "explore": 0.1}]})
