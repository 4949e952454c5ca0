"""A newcomer's journey through the installed `intentrec` command, from a folder outside the checkout that
has its own `data/` folder: prepare -> train -> evaluate -> export -> serve on the real Triton -> client,
on (a) a CSV of user, item and time only, (b) a CSV with canonical names plus an items table with
multi-valued tags and a numeric column, (c) an S3-Rec text file with its attributes JSON (a LastFM
extract). Plus every stage given a bad argument: a clear message, never a traceback."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import SHARED_DATA

INTENTREC = Path(sys.executable).parent / "intentrec"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(pythonpath: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["INTENTREC_PROGRESS"] = "0"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


# How the journey calls intentrec: the installed command, or (installed_wheel) the wheel's own module.
COMMAND = {"command": [str(INTENTREC)], "env": environment()}


def intentrec(cwd: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*COMMAND["command"], *args], cwd=cwd, env=COMMAND["env"], capture_output=True, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"intentrec {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def user_item_time(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    with (folder / "data" / "clicks.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        for i in range(2500):
            w.writerow([f"u{i % 120}", f"sku{rng.integers(0, 50)}", 1_700_000_000 + i * 60])
    return ["data=generic", "data.path=data/clicks.csv", "data.name=clicks"]


def canonical_with_items(folder: Path) -> list[str]:
    rng = np.random.default_rng(1)
    with (folder / "data" / "events.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "session_id", "item_id", "timestamp", "event_type", "category_id", "price"])
        for i in range(2500):
            item = int(rng.integers(0, 50))
            kind = "view" if i % 6 else "add_to_cart"
            w.writerow(
                [f"u{i % 120}", f"s{i // 8}", f"sku{item}", 1_700_000_000 + i * 60, kind, f"c{item % 5}", 5 + item]
            )
    with (folder / "data" / "items.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "tags", "weight_kg"])
        for item in range(50):
            w.writerow([f"sku{item}", "|".join(f"t{(item + k) % 9}" for k in range(1 + item % 3)), 0.1 * item])
    return [
        "data=generic",
        "data.path=data/events.csv",
        "data.name=shop",
        "data.items.path=data/items.csv",
        "data.items.lists=[tags]",
    ]


def lastfm_extract(folder: Path) -> list[str]:
    if not (SHARED_DATA / "lastfm").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA / 'lastfm'} (the S3-Rec case reads a LastFM extract)")
    lines = (SHARED_DATA / "lastfm" / "LastFM.txt").read_text().splitlines()[:80]
    (folder / "data" / "LastFM.txt").write_text("\n".join(lines) + "\n")
    items = {item for line in lines for item in line.split()[1:]}
    attributes = json.loads((SHARED_DATA / "lastfm" / "LastFM_item2attributes.json").read_text())
    (folder / "data" / "attrs.json").write_text(json.dumps({k: v for k, v in attributes.items() if k in items}))
    return ["data=lastfm", "data.name=lastfm_extract", "data.path=data/LastFM.txt", "data.items.path=data/attrs.json"]


CASES = {"user_item_time": user_item_time, "canonical_with_items": canonical_with_items, "s3rec": lastfm_extract}


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_journey_from_a_folder_with_its_own_data_folder(tmp_path, case):
    # The formats differ up to the bundle; serving it is the same for all, so one of them (and the wheel) serves.
    journey(tmp_path, case, serve=case == "canonical_with_items")


def journey(tmp_path: Path, case: str, serve: bool = True) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("raise ImportError('the user folder data/, not intentrec')\n")
    data = CASES[case](tmp_path)
    name = next(a.split("=", 1)[1] for a in data if a.startswith("data.name="))
    intentrec(tmp_path, "prepare", *data, "artifacts_dir=artifacts", "explain=true")
    intentrec(tmp_path, "prepare", *data, "artifacts_dir=artifacts")
    intentrec(tmp_path, "train", f"data_dir=artifacts/data/{name}", "debug=fast", "run_dir=run")
    ckpt = "ckpt_path=run/checkpoints/best.ckpt"
    intentrec(tmp_path, "evaluate", ckpt, "run_dir=evaluation")
    assert 0.0 <= json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["test/ndcg@10"] <= 1.0
    intentrec(tmp_path, "export", ckpt, "export.out_dir=bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["settings"]["data"]["name"] == name
    items = [str(i) for i in pq.read_table(tmp_path / "bundle" / "items.parquet")["item_id"].to_pylist()]
    if case != "user_item_time":
        # The attributes reached the item tower: two new items that differ only in them get other vectors.
        attribute = "tags" if case == "canonical_with_items" else "attributes"
        kinds = manifest["vocab"]["item_attribute_kinds"]
        assert kinds[attribute] == "multi" and attribute + "_idx" in manifest["feature_columns"]
        values = manifest["vocab"]["item_attributes"][attribute][1:]
        with (tmp_path / "new.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", attribute])
            w.writerows([["new1", "|".join(values[:2])], ["new2", "|".join(values[-2:])]])
        intentrec(tmp_path, "add-items", "--bundle", "bundle", "--items", "new.csv", "--out", "bundle2")
        vectors = np.load(tmp_path / "bundle2" / "item_embeddings.npy")[-2:]
        assert np.abs(vectors[0] - vectors[1]).max() > 1e-4
    if not serve:
        return
    grpc, http, metrics = free_port(), free_port(), free_port()
    server = subprocess.Popen(
        [*COMMAND["command"], "serve", "--repository", "bundle/model_repository", "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--model-control", "off"],
        cwd=tmp_path, env=COMMAND["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            reply = intentrec(
                tmp_path,
                "client",
                "recommend",
                "--url",
                f"127.0.0.1:{grpc}",
                "--items",
                ",".join(items[:3]),
                "--k",
                "5",
                check=False,
                timeout=60,
            )
            if reply.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(1.0)
        assert reply.returncode == 0, f"{reply.stderr}\nserver: {server.poll()}"
        answer = json.loads(reply.stdout)
        assert len(answer["item_ids"]) == 5 and set(answer["item_ids"]) <= set(items)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.slow
@pytest.mark.triton
def test_a_wheel_installed_outside_the_checkout_runs_the_journey_and_claims_no_generic_names(tmp_path, monkeypatch):
    import shutil

    from intentrec.paths import PACKAGE_ROOT

    # The wheel is built from a copy of the sources, so the build leaves nothing in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "intentrec", "conf", "data", "models", "training", "serving"):
        copy = shutil.copytree if (PACKAGE_ROOT / name).is_dir() else shutil.copy2
        copy(
            PACKAGE_ROOT / name,
            source / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}),
        )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("intentrec-*.whl"))
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert sorted(
        p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".data")) and p.name != "bin"
    ) == ["intentrec"]
    assert (site / "intentrec" / "conf" / "train.yaml").is_file() and (
        site / "intentrec" / "conf" / "data" / "lastfm.yaml"
    ).is_file()
    monkeypatch.setitem(COMMAND, "command", [sys.executable, "-m", "intentrec.cli"])
    monkeypatch.setitem(COMMAND, "env", environment(site))
    where = intentrec(tmp_path, "--help")
    assert "stages:" in where.stdout
    origin = subprocess.run(
        [sys.executable, "-c", "import intentrec.data, intentrec.paths as p; print(intentrec.data.__file__, p.CHECKOUT)"],
        cwd=tmp_path, env=environment(site), capture_output=True, text=True,
    )  # fmt: skip
    assert origin.stdout.startswith(str(site)) and origin.stdout.split()[-1] == "False", origin.stdout + origin.stderr
    (tmp_path / "journey").mkdir()
    journey(tmp_path / "journey", "canonical_with_items")


BAD_ARGUMENTS = {
    "prepare": (["data=nosuch"], r"nosuch"),
    "synthetic": (["data.num_events=5"], r"data\.num_events=5; expected 1,000 to 50,000,000"),
    "train": (["data_dir=/nonexistent/folder"], r"holds no prepared data"),
    "evaluate": (["ckpt_path=/nonexistent.ckpt"], r"does not exist"),
    "compare": (["/nonexistent/multirun"], r"nonexistent"),
    "intent": (["data_dir=/nonexistent/folder"], r"data_dir=/nonexistent/folder holds no prepared data"),
    "significance": (["--a", "/nonexistent/a", "--b", "/nonexistent/b"], r"/nonexistent/a has no ranks\.npz"),
    "study": (["/nonexistent/sweep"], r"/nonexistent/sweep is not a folder; give the sweep folder"),
    "export": (["ckpt_path=/nonexistent.ckpt"], r"does not exist"),
    "add-items": (["--bundle", "/nonexistent"], r"error|required"),
    "publish": (["build", "--bundle", "/nonexistent", "--out", "x"], r"nonexistent"),
    "serve": (["--repository", "/nonexistent/repository"], r"nonexistent"),
    "client": (["recommend", "--k", "ten"], r"invalid int value: 'ten'"),
    "events": (["frobnicate"], r"frobnicate"),
    "simulate": (
        ["--shop", "/nonexistent/shop"],
        r"/nonexistent/shop: no shop\.json; expected a synthetic shop folder",
    ),
    "carts": (
        ["store=sqlite:///nonexistent/x.db", "out=x.jsonl"],
        r"nonexistent/x\.db does not exist; point store= at",
    ),
    "web": (["host=0.0.0.0"], r"host=0\.0\.0\.0 is reachable beyond this machine and no web API token is set"),
    "triggers": (
        ["bundle=b", "store=sqlite:///nonexistent/x.db", "out=o.jsonl"],
        r"nonexistent/x\.db does not exist; point store= at",
    ),
    "batch": (["--bundle", "b", "--store", "s", "--out", "o", "--k", "ten"], r"argument --k: invalid int value: 'ten'"),
}


def test_help_lists_every_stage_with_an_example_and_is_fast(tmp_path):
    from intentrec.cli import STAGES

    started = time.perf_counter()
    done = intentrec(tmp_path, "--help")
    assert time.perf_counter() - started < 2.0
    for stage, (_, _, example) in STAGES.items():
        assert f"  {stage} " in done.stdout and example in done.stdout
    assert set(BAD_ARGUMENTS) == set(STAGES)
    wrong = intentrec(tmp_path, "trian", check=False)
    assert wrong.returncode == 2 and "unknown stage 'trian'; did you mean 'train'?" in wrong.stderr
    train_help = intentrec(tmp_path, "train", "--help")
    assert "intentrec train data_dir=" in train_help.stdout and "Traceback" not in train_help.stderr


@pytest.mark.parametrize("stage", sorted(BAD_ARGUMENTS))
def test_every_stage_answers_a_bad_argument_with_a_message_not_a_traceback(tmp_path, stage):
    import re

    args, message = BAD_ARGUMENTS[stage]
    done = intentrec(tmp_path, stage, *args, check=False, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "Traceback" not in out, out
    assert re.search(message, out), out
