"""The `intentrec` command: one entry for every stage, arguments passed through to the stage.

intentrec --help                       # every stage with an example (fast: nothing heavy is imported)
intentrec <stage> --help               # the stage's own usage
intentrec <stage> [arguments ...]      # the same as python -m intentrec.<module> [arguments ...]
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import runpy
import sys

# stage -> (module, what it does, example). Hydra stages take key=value overrides; the others say so.
STAGES = {
    "prepare": (
        "intentrec.data.prepare",
        "load a data set (any format) and write the prepared folder",
        "intentrec prepare data=generic data.path=events.csv data.name=shop [explain=true]",
    ),
    "synthetic": (
        "intentrec.data.synthetic",
        "generate the built-in synthetic shop",
        "intentrec synthetic data.num_events=1000000 data.seed=0",
    ),
    "train": (
        "intentrec.training.train",
        "train and evaluate a model (full-catalogue ranking)",
        "intentrec train data_dir=artifacts/data/shop model=transformer",
    ),
    "evaluate": (
        "intentrec.training.evaluate",
        "evaluate a checkpoint again (its data and settings come with it)",
        "intentrec evaluate ckpt_path=<run>/checkpoints/best.ckpt",
    ),
    "intent": (
        "intentrec.training.intent",
        "intent signals: labels and the session-feature baseline the intent heads must beat",
        "intentrec intent data_dir=artifacts/data/shop",
    ),
    "compare": (
        "intentrec.training.compare",
        "leaderboard of a multirun of variants and seeds",
        "intentrec compare artifacts/multiruns/<time>",
    ),
    "significance": (
        "intentrec.training.significance",
        "paired permutation and bootstrap tests between two variants' runs",
        "intentrec significance --a <runs of A> --b <runs of B> [--metric test/ndcg@10]",
    ),
    "study": (
        "intentrec.training.study",
        "report of a hyper-parameter search (hparams_search=<variant>)",
        "intentrec study artifacts/multiruns/<time>",
    ),
    "export": (
        "intentrec.serving.export",
        "ONNX models, item table and FAISS index of a checkpoint (a bundle)",
        "intentrec export ckpt_path=<run>/checkpoints/best.ckpt export.out_dir=bundle",
    ),
    "add-items": (
        "intentrec.serving.add_items",
        "embed new catalogue items from their content into a new bundle",
        "intentrec add-items --bundle bundle --items new.csv --out bundle2",
    ),
    "publish": (
        "intentrec.serving.repository",
        "build, publish, promote or validate a Triton model repository",
        "intentrec publish build --bundle bundle --out repository",
    ),
    "serve": (
        "intentrec.serving.server",
        "run the real Triton server on a repository (127.0.0.1)",
        "intentrec serve --repository repository",
    ),
    "client": (
        "intentrec.serving.client",
        "ask a running server for recommendations or similar items",
        "intentrec client recommend --items i1,i2 --k 10",
    ),
    "events": (
        "intentrec.serving.events",
        "event collector, export, in-store purchases, attribution and the experiment report",
        "intentrec events serve store=sqlite:///artifacts/events/events.db",
    ),
    "simulate": (
        "intentrec.serving.simulator",
        "simulated shoppers of the synthetic shop against a running server and collector",
        "intentrec simulate --shop artifacts/shops/<fingerprint> --shoppers 2000",
    ),
    "carts": (
        "intentrec.serving.abandoned_carts",
        "abandoned-cart messages with recommendations",
        "intentrec carts bundle=bundle store=<url> out=carts.jsonl after_minutes=30",
    ),
    "web": (
        "intentrec.serving.web",
        "JSON web API over Triton (CORS allowlist, token) and the playground page",
        "intentrec web triton=127.0.0.1:8001 collector=http://127.0.0.1:8700 bundle=bundle port=8800",
    ),
    "triggers": (
        "intentrec.serving.triggers",
        "trigger rules over the intent signals: exit offers, cart pushes, clienteling (batch or as events arrive)",
        "intentrec triggers bundle=bundle store=<url> rules=conf/triggers/default.yaml out=messages.jsonl",
    ),
    "batch": (
        "intentrec.serving.batch",
        "top-k per customer for a campaign",
        "intentrec batch bundle=bundle store=<url> out=recs.parquet k=10",
    ),
}


def usage() -> str:
    width = max(map(len, STAGES))
    lines = [
        "usage: intentrec <stage> [arguments ...]      (intentrec <stage> --help: the stage's usage)",
        "",
        "stages:",
    ]
    for name, (_, what, example) in STAGES.items():
        lines += [f"  {name:<{width}}  {what}", f"  {'':<{width}}    {example}"]
    lines += [
        "",
        "Hydra stages (prepare, synthetic, train, evaluate, export) take key=value overrides; every stage",
        "is also python -m <module>. Set INTENTREC_PROGRESS=0 for no progress output.",
    ]
    return "\n".join(lines)


def module_doc(module: str) -> str:
    """The module's docstring, read from its source without importing it (so help is instant)."""
    spec = importlib.util.find_spec(module)
    origin = spec.origin if spec else None
    if spec and spec.submodule_search_locations and origin and origin.endswith("__init__.py"):
        main = importlib.util.find_spec(module + ".__main__")
        origin = main.origin if main else origin
    if not origin:
        return ""
    with open(origin, encoding="utf-8") as handle:
        return ast.get_docstring(ast.parse(handle.read())) or ""


HYDRA = {"prepare", "synthetic", "train", "evaluate", "export"}


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _main(argv: list[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    stage, rest = args[0], args[1:]
    if stage not in STAGES:
        close = difflib.get_close_matches(stage, STAGES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        print(
            f"intentrec: unknown stage {stage!r}; {hint}stages are {', '.join(STAGES)} (intentrec --help).",
            file=sys.stderr,
        )
        return 2
    module, what, example = STAGES[stage]
    if stage in HYDRA and any(a in ("-h", "--help") for a in rest):
        print(f"intentrec {stage}: {what}\n\n  {example}\n\n{module_doc(module)}\n")
        print(f"Every config key: intentrec {stage} --cfg job   (keys are documented in conf/*.yaml)")
        return 0
    sys.argv = [f"intentrec {stage}", *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
