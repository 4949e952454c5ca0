"""Event collector command line: serve the API, export events to Parquet, import a POS file.

    python -m serving.events serve store=sqlite:///artifacts/events/events.db port=8700
    INTENTREC_COLLECTOR_TOKEN=... python -m serving.events serve store=redis://127.0.0.1:6379/0
    python -m serving.events serve store=... host=0.0.0.0 token_file=/run/secrets/collector-token
    python -m serving.events export store=sqlite:///artifacts/events/events.db out=artifacts/events/export
    python -m serving.events import-pos file=pos.csv store=sqlite:///artifacts/events/events.db
    python -m serving.events import events=artifacts/shops/<shop> store=sqlite:///artifacts/events/events.db
    python -m serving.events attribute store=sqlite:///artifacts/events/events.db out=artifacts/attribution
    python -m serving.events attribute events=artifacts/events/export window_minutes=60 scope=shopper
    python -m serving.events report store=sqlite:///artifacts/events/events.db experiment_ab=model_vs_popularity
    python -m serving.events estimate store=sqlite:///artifacts/events/events.db bundle=<candidate> experiment=<name> arm=<exploring arm>

`serve` binds 127.0.0.1 unless told `host=`. The bearer token that every /v1 call must carry is read
from the environment variable INTENTREC_COLLECTOR_TOKEN or from `token_file=` (never from the command
line, which every local user can read in the process list); beyond loopback a token is required.
`export` writes `<out>/events.parquet` in the canonical
schema (what `python -m data.prepare data=generic data.format=parquet` reads). `import-pos` reads a
point-of-sale export (CSV) and stores each line as a `store_purchase` event (see `serving.events.pos`).
`import` stores canonical Parquet events (an export, a shop's history; `customers.parquet` beside it gives
loyalty), each validated as the collector would (see `serving.events.export.import_events`).
`attribute` credits add-to-carts and purchases to the served lists that led to them, per placement,
model version and arm, from a store or exported Parquet (see `serving.events.attribution`).
`report` writes an experiment's goal metrics per arm with intervals, lifts and the sample-ratio check
(see `serving.events.report`). `estimate` predicts a candidate bundle's clicks per list from the logs
of an exploring arm (IPS and SNIPS; see `serving.events.off_policy`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from intentrec.serving.cli import key_value_flags

DEFAULT_STORE = "sqlite:///artifacts/events/events.db"
TOKEN_ENV = "INTENTREC_COLLECTOR_TOKEN"
# What anyone could do to a service bound beyond loopback without its token.
RISKS = {"collector": "merge customers and read profiles", "web API": "read shoppers' lists and post their events"}


def collector_token(
    host: str, argv_token: str | None, token_file: Path | None, env: str = TOKEN_ENV, what: str = "collector"
) -> str | None:
    """The bearer token from the environment variable `env` ($INTENTREC_COLLECTOR_TOKEN) or `token_file`; required
    beyond loopback. The web API (serving.web, INTENTREC_WEB_TOKEN) reads its token by the same rule.

    Raises ConfigError for a token on the command line, an unreadable or empty file, or a host
    other than loopback without a token."""
    import ipaddress
    import os

    from intentrec.errors import ConfigError

    if argv_token is not None:
        raise ConfigError(
            f"token= on the command line is visible to every local user (ps); put the token in {env} "
            "or in a file readable by this user only and pass token_file=<path>."
        )
    token = os.environ.get(env, "").strip() or None
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as error:
            raise ConfigError(f"token_file={token_file}: cannot read it ({error.strerror}).") from None
        if not token:
            raise ConfigError(f"token_file={token_file} is empty; write the token into it.")
    if token is not None and (not token.isascii() or any(c.isspace() for c in token)):
        raise ConfigError(f"the {what} token must be printable ASCII without spaces (it travels in an HTTP header).")
    if token is None:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"host={host} is reachable beyond this machine and no {what} token is set: anyone could "
                f"{RISKS.get(what, 'call it')}. Set {env} or token_file=<path>, or bind 127.0.0.1."
            )
    return token


KEY_FLAGS = {
    "store": "--store",
    "host": "--host",
    "port": "--port",
    "token": "--token",
    "token_file": "--token-file",
    "catalogue": "--catalogue",
    "max_body_bytes": "--max-body-bytes",
    "max_batch_events": "--max-batch-events",
    "abandon_after_minutes": "--abandon-after-minutes",
    "out": "--out",
    "file": "--file",
    "events": "--events",
    "window_minutes": "--window-minutes",
    "scope": "--scope",
    "experiment": "--experiment",
    "experiment_ab": "--experiment-ab",
    "control": "--control",
    "ci": "--ci",
    "bootstrap": "--bootstrap",
    "seed": "--seed",
    "cuped_before": "--cuped-before",
    "bundle": "--bundle",
    "arm": "--arm",
    "policy": "--policy",
}
DEFAULT_OUT = {
    "export": Path("artifacts/events/export"),
    "attribute": Path("artifacts/attribution"),
    "report": Path("artifacts/report"),
    "estimate": Path("artifacts/off_policy"),
}


def _categories(path: Path | None) -> dict[str, str] | None:
    """item id -> category id from a canonical items table (Parquet) or a prepared data folder."""
    if path is None:
        return None
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / "items.parquet"
    table = pq.read_table(path)
    columns = set(table.column_names)
    item_column = "item_id" if "item_id" in columns else "raw_item_id"
    if item_column not in columns or "category_id" not in columns:
        raise SystemExit(
            f"error: catalogue={path} has columns {sorted(columns)}; expected item_id (or raw_item_id) and category_id"
        )
    return {
        str(i): str(c)
        for i, c in zip(table.column(item_column).to_pylist(), table.column("category_id").to_pylist())
        if c is not None
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", choices=["serve", "export", "import", "import-pos", "attribute", "report", "estimate"]
    )
    parser.add_argument("--store", default=DEFAULT_STORE, help="sqlite:///<path> or redis://host:port/db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--token", default=None, help=argparse.SUPPRESS)  # refused: see collector_token
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"file holding the bearer token required on /v1 calls (or set {TOKEN_ENV})",
    )
    parser.add_argument(
        "--catalogue", type=Path, default=None, help="items.parquet (or prepared data folder) for categories"
    )
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--max-batch-events", type=int, default=1000)
    parser.add_argument("--abandon-after-minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--file", type=Path, default=None)
    parser.add_argument(
        "--events",
        type=Path,
        default=None,
        help="attribute: exported Parquet instead of a store; import: the Parquet to store",
    )
    parser.add_argument("--window-minutes", type=float, default=1440.0)
    parser.add_argument("--scope", default="session")
    parser.add_argument("--experiment", default=None, help="report: the experiment's name in the events")
    parser.add_argument("--experiment-ab", default=None, help="report: its config (conf/experiment_ab name or path)")
    parser.add_argument("--control", default=None)
    parser.add_argument("--ci", default="delta")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, default=None, help="estimate: the candidate's export bundle")
    parser.add_argument("--arm", default=None, help="estimate: the exploring arm whose logs are used")
    parser.add_argument("--policy", default="model", help="estimate: model | no_context")
    parser.add_argument("--cuped-before", default=None, help="report: ISO 8601 time or epoch ms (CUPED pre-period)")
    args = parser.parse_args(key_value_flags(sys.argv[1:] if argv is None else argv, KEY_FLAGS))
    args.out = args.out or DEFAULT_OUT.get(args.command)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from intentrec.errors import IntentrecError
    from intentrec.serving.events.store import open_store

    if args.command == "attribute":
        return _attribute(args)
    if args.command == "report":
        return _report(args)
    if args.command == "estimate":
        return _estimate(args)
    try:
        token = collector_token(args.host, args.token, args.token_file) if args.command == "serve" else None
        store = open_store(args.store)
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "serve":
        import uvicorn

        from intentrec.serving.events.app import CollectorSettings, create_app

        settings = CollectorSettings(
            max_body_bytes=args.max_body_bytes,
            max_batch_events=args.max_batch_events,
            token=token,
            abandon_after_minutes=args.abandon_after_minutes,
        )
        app = create_app(store, settings, categories=_categories(args.catalogue))
        print(f"[collector] {store.url.split('@')[-1]} on http://{args.host}:{args.port}", flush=True)
        if token is None:
            print(
                f"[collector] no token: any local process can post events, merge customers and read profiles; "
                f"set {TOKEN_ENV} or token_file=<path> to require one",
                flush=True,
            )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0
    if args.command == "export":
        from intentrec.serving.events.export import export_events

        summary = export_events(store, args.out)
        print(json.dumps(summary))
        return 0
    from intentrec.serving.events.export import import_events
    from intentrec.serving.events.pos import import_pos

    # import: canonical Parquet; import-pos: a point-of-sale CSV. (what it reads, how to name it)
    load, source, needed = {
        "import": (import_events, args.events, "events=<canonical events.parquet or its folder>"),
        "import-pos": (import_pos, args.file, "file=<path of the POS export (CSV)>"),
    }[args.command]
    if source is None:
        print(f"error: {args.command} needs {needed}", file=sys.stderr)
        return 2
    try:
        summary = load(source, store)
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if not summary["rejected"] and not summary["conflicts"] else 1


def _analyse(args, work, needs: dict[str, str] | None = None) -> int:
    """Run an analysis (`work(source) -> summary`) on the store or the export the arguments name, after
    checking the arguments it `needs` ({name: what it is})."""
    from intentrec.errors import ConfigError, IntentrecError
    from intentrec.serving.events.store import open_store

    try:
        missing = [name for name in needs or {} if not getattr(args, name)]
        if missing:
            raise ConfigError(
                f"{args.command} needs {', '.join(f'{m}=' for m in missing)}: {', '.join(needs[m] for m in missing)}"
            )
        source = args.events if args.events is not None else open_store(args.store, readonly=True)
        summary = work(source)
    except IntentrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), **summary}))
    return 0


def _attribute(args) -> int:
    from intentrec.serving.events.attribution import AttributionSettings, run

    def work(source) -> dict:
        settings = AttributionSettings(window_minutes=args.window_minutes, scope=args.scope)
        settings.check()
        return run(args.out, source, settings)["counts"]

    return _analyse(args, work)


def _estimate(args) -> int:
    from intentrec.serving.events.off_policy import run

    def work(source) -> dict:
        return run(args.out, source, args.bundle, args.experiment, args.arm, args.policy)["candidate_clicks_per_list"]

    needs = {"bundle": "the candidate's export bundle", "experiment": "the experiment", "arm": "its exploring arm"}
    return _analyse(args, work, needs)


def _report(args) -> int:
    from intentrec.serving.events.report import ReportSettings, parse_time, run

    def work(source) -> dict:
        name, shares = args.experiment, None
        if args.experiment_ab:
            from intentrec.serving.experiments import load_experiment

            config = load_experiment(args.experiment_ab)
            name, shares = name or config.name, {arm.name: arm.share for arm in config.arms}
        settings = ReportSettings(
            experiment=name,
            control=args.control,
            shares=shares,
            ci=args.ci,
            bootstrap=args.bootstrap,
            seed=args.seed,
            cuped_before=None if args.cuped_before is None else parse_time(args.cuped_before, "cuped_before"),
        )
        settings.check()
        document = run(args.out, source, settings)
        return {"shoppers": document["shoppers"], "sample_ratio_mismatch": document["sample_ratio"]["mismatch"]}

    return _analyse(args, work)


if __name__ == "__main__":
    raise SystemExit(main())
