"""One small but real model of the synthetic shop, exported once and shared by the serving tests.

The shop has a stronger context effect than the default (`context_strength=5`) so that a model
trained for about a minute on 2 cores has learned it; everything else is the default generator.
"""

from __future__ import annotations

import itertools
import shutil
from contextlib import contextmanager

import pytest

from intentrec.serving.events.local import RedisServer
from intentrec.serving.events.store import RedisStore, open_store
from intentrec.serving.export import export
from intentrec.serving.repository import ServingOptions, build
from intentrec.serving.server import TritonServer
from intentrec.training.train import train
from tests.conftest import compose_config

SERVING_SHOP = [
    "debug=fast",
    "data.num_events=80000",
    "data.context_strength=5",
    "data.batch_size=128",
    "trainer.limit_train_batches=1.0",
    "trainer.max_epochs=5",
    "model.embedding_dim=32",
    "ranker.max_train_examples=5000",
    "ranker.epochs=2",
]
# The served model and the replayed one carry intent heads; they learn after the tower, which stays as without them.
HEADS = "intent.heads=second_stage"


def request_context(split, vocab: dict, target: int) -> dict:
    """The context fields of a recommend request made at step `target` of a prepared split (raw values)."""
    steps, row = split.steps, split.row_of_step[target]

    def name(table, code):
        return vocab[table][int(code)] if int(code) > 0 else None

    return {
        "now": int(steps["timestamps"][target]),
        "device_type": name("device_types", steps["device_types"][target]),
        "referrer": name("referrers", steps["referrers"][target]),
        "region": name("regions", steps["regions"][target]),
        "hour": int(steps["hours"][target]) - 1,
        "day_of_week": int(steps["days_of_week"][target]),
        "loyalty": name("loyalty", split.loyalty[row]),
    }


def train_serving_model(artifacts, run, *overrides):
    """Train a model of the serving shop into `run` (the shop prepared under `artifacts`, once)."""
    train(compose_config("train", [*SERVING_SHOP, f"artifacts_dir={artifacts}", f"run_dir={run}", *overrides]))
    return artifacts, run


@pytest.fixture(scope="session")
def serving_run(tmp_path_factory):
    """(artifacts_dir, run_dir) of the trained default model."""
    root = tmp_path_factory.mktemp("serving")
    return train_serving_model(root / "artifacts", root / "run", HEADS)


def export_config(serving_run, out, *overrides):
    artifacts, run = serving_run
    return compose_config(
        "export",
        [
            *SERVING_SHOP,
            f"artifacts_dir={artifacts}",
            f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            f"export.out_dir={out}",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def bundle(serving_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "v1"
    export(export_config(serving_run, out))
    return out


@pytest.fixture(scope="session")
def shop_truth(serving_run):
    import json

    artifacts, _ = serving_run
    shop = next((artifacts / "shops").iterdir())
    return json.loads((shop / "truth" / "effects.json").read_text())


@contextmanager
def triton_for(bundle, root, options=None):
    """The real tritonserver on a fresh repository of `bundle` under `root` (serving `options`), on free loopback ports."""
    repository = build(bundle, root / "repository", options)
    with TritonServer(repository, None, None, None, log_file=root / "server.log", backend_root=root / "backends") as s:
        yield s
    shutil.rmtree(root / "repository", ignore_errors=True)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """The real tritonserver on a fresh repository of `bundle`, on free loopback ports: recommend and
    similar_items (tests/serving/test_triton.py serves the intent and banners models as well)."""
    with triton_for(bundle, tmp_path_factory.mktemp("triton"), ServingOptions(intent_model=False)) as s:
        yield s


# Event stores: every store test runs on SQLite and on a real redis-server.
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (Debian package redis-server; ./scripts/test.sh installs it as root)")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    else:
        server = request.getfixturevalue("redis_server")
        opened = RedisStore(server.url, prefix=f"test{next(_databases)}-{tmp_path.name}:")
    yield opened
    opened.close()
