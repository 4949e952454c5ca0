"""Export a trained checkpoint into a serving bundle: ONNX query encoder and ranker, item table, FAISS index.

    python -m serving.export ckpt_path=<run>/checkpoints/best.ckpt export.out_dir=<out>
    python -m serving.export ckpt_path=... index=ivf index.search_params.nprobe=64 \
        export.out_dir=artifacts/exports/my_bundle       # index: flat | ivf | hnsw | ivf_pq (conf/index/)
    python -m serving.export ckpt_path=... 'index.factory="IVF1024,PQ32"'   # any index_factory string

The data, `data.max_seq_len`, `data.past_purchases`, `seed` and `ranker.*` are the checkpoint's
(training.run_settings); the manifest records them.

The bundle layout is in `serving.bundle`; `<out>/model_repository/` is a Triton model repository
serving it (`export.model_repository=false` skips it). The index's recall@10 and recall@100 against exact search,
over validation queries of the model itself, go into the manifest and the printed summary.
"""

from __future__ import annotations

import json
import logging
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from intentrec import progress
from intentrec.config import config_dict
from intentrec.data.features import NUM_GAP_BUCKETS, SESSION_GAP_MS
from intentrec.data.item_content import list_column
from intentrec.errors import ConfigError
from intentrec.models.context import CONTEXT_FIELDS
from intentrec.paths import CONF_DIR, REPO_ROOT
from intentrec.serving.bundle import library_versions, write_manifest
from intentrec.serving.index import build_index, recall_against_exact, resolve_factory, set_search_params, write_index
from intentrec.serving.onnx_models import export_query_encoder, export_ranker

log = logging.getLogger(__name__)

VOCAB_KEYS = (
    "event_types",
    "device_types",
    "referrers",
    "channels",
    "regions",
    "loyalty",
    "categories",
    "brands",
    "price_bucket_edges",
    "item_attributes",
    "item_attribute_kinds",
    "item_attribute_edges",
    "item_list_sep",
)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_metrics(ckpt: Path) -> dict:
    """The metrics.json of the run a checkpoint belongs to (`<run>/checkpoints/<name>.ckpt`), or {}."""
    path = ckpt.parent.parent / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _hybrid_settings(option, metrics: dict, ckpt: Path) -> dict | None:
    """The hybrid's settings to serve (weight chosen on val in training), or None.

    auto: when the run evaluated the hybrid and it beat the model's own val/ndcg@10 and the ranker's."""
    option = str(option).lower()
    if option not in ("auto", "true", "false", "none", "null"):
        raise ConfigError(f"export.hybrid={option!r}; expected auto, true or false.")
    if option in ("false", "none", "null"):
        return None
    settings = metrics.get("info", {}).get("hybrid")
    if settings is None:
        if option == "auto":
            return None
        raise ConfigError(
            f"export.hybrid={option} but {ckpt.parent.parent / 'metrics.json'} has no hybrid results; train or "
            "evaluate the run with hybrid.enabled=true first (it tunes the weight), or use export.hybrid=auto|false."
        )
    if option == "auto":
        best_other = max(metrics.get("val/ndcg@10", -1.0), metrics.get("rerank_val/ndcg@10", -1.0))
        if not metrics.get("hybrid_val/ndcg@10", -1.0) > best_other:
            return None
    from intentrec.training.hybrid import COOCCURRENCE_KEYS

    return {key: settings[key] for key in ("weight", "eps", *COOCCURRENCE_KEYS) if key in settings}


def _ranker_path(option, ckpt: Path, hybrid: dict | None) -> Path | None:
    if option in (None, "", "null", "none"):
        return None
    if option == "auto":
        path = ckpt.parent / "ranker.ckpt"
        return path if path.is_file() and hybrid is None else None
    if hybrid is not None:
        raise ConfigError(
            f"export.ranker_ckpt={option!r} and the hybrid are alternatives (the ranker was trained on the two-tower's "
            "own scores); set export.hybrid=false to serve the ranker, or export.ranker_ckpt=auto."
        )
    path = Path(option)
    if not path.is_file():
        raise ConfigError(f"export.ranker_ckpt={option!r} does not exist; give a ranker.ckpt, auto or null.")
    return path


def validation_queries(task, cfg, data, count: int) -> np.ndarray:
    """Query vectors of up to `count` validation examples (what the index will really be asked)."""
    from intentrec.training.datamodule import ArrayDataset, evaluation_examples, read_split

    split = read_split(data.directory / "val.parquet")
    arrays, _, _ = evaluation_examples(
        split,
        int(cfg.data.max_seq_len),
        int(cfg.data.past_purchases),
        data.padded("category_idx"),
        data.padded("train_count"),
        5,
    )
    size = len(arrays["target"])
    chosen = np.sort(np.random.default_rng(0).choice(size, min(size, count), replace=False))
    dataset = ArrayDataset({k: v[chosen] for k, v in arrays.items()}, trim=True)
    with torch.no_grad():
        parts = [
            task.model.query(dataset[np.arange(s, min(s + 512, len(dataset)))]).numpy()
            for s in range(0, len(dataset), 512)
        ]
    return (
        np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, task.model.cfg.embedding_dim), np.float32)
    )


def item_categories(data) -> np.ndarray:
    """Each item's category as a string, "" where it has none (or the data has no categories)."""
    if "category_id" not in data.items:
        return np.full(data.num_items, "", dtype=object)
    import pandas as pd

    values = np.asarray(data.items["category_id"], dtype=object)
    return np.where(pd.isna(values), "", values.astype(str)).astype(object)


def category_complements(data, top: int = 5) -> dict:
    """Which categories shoppers move to next: within-session transitions between different categories.

    Counted over consecutive views of the same session in the training split (a view and the next one
    in another category; cart and purchase steps repeat earlier views and are left out); for each
    category, the `top` next categories with their share of its transitions. `recommend` keeps
    complements of a recent purchase in its lists from these, and the abandoned-cart job orders its
    suggestions by them.
    """
    from intentrec.training.datamodule import read_split

    categories = item_categories(data)
    if not categories.any():
        return {"method": "no categories in the catalogue", "next": {}}
    split = read_split(data.directory / "train.parquet")
    view = data.vocab_json["event_types"].index("view")
    views = split.steps["event_types"] == view
    item = split.steps["item_ids"][views].astype(np.int64)
    category = np.concatenate([[""], categories])[item]
    position = np.flatnonzero(views)
    # A pair of views is in one session when no step between them (or the second) starts a session or a row.
    starts = split.steps["new_session"].astype(bool).copy()
    starts[split.offsets[:-1]] = True
    same_session = np.cumsum(starts)[position[1:]] == np.cumsum(starts)[position[:-1]]
    step = np.flatnonzero(same_session & (category[1:] != category[:-1]) & (category[1:] != "") & (category[:-1] != ""))
    names, codes = np.unique(category, return_inverse=True)
    pair_codes, counts = np.unique(codes[step] * len(names) + codes[step + 1], return_counts=True)
    pairs: dict[str, dict[str, int]] = {}
    for pair, count in zip(pair_codes.tolist(), counts.tolist()):
        pairs.setdefault(str(names[pair // len(names)]), {})[str(names[pair % len(names)])] = count
    following = {}
    for before, row in pairs.items():
        total = sum(row.values())
        ranked = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        following[before] = [[after, round(count / total, 4)] for after, count in ranked]
    return {"method": "within-session view-to-view transitions to another category, training split", "next": following}


def export_intent(cfg, task, data, out: Path) -> dict:
    """`intent.json` of a model with intent heads: each head's calibration fitted on the run's validation steps
    (training.intent.evaluate_heads, with the checkpoint's intent settings) and the category names by code;
    returns the manifest's `intent` (the heads served, what was measured on test)."""
    from omegaconf import open_dict

    from intentrec.serving.intent import INTENT_FILE
    from intentrec.training.intent import calibrate_heads
    from intentrec.training.prepared import build_datamodule

    with open_dict(cfg):
        cfg.intent.heads = task.intent_mode or "second_stage"
    datamodule = build_datamodule(cfg, data)
    datamodule.setup()
    specs = calibrate_heads(task.model, datamodule, str(cfg.intent.calibration))
    unavailable = {head: reason for head, reason in datamodule.intent_heads.items() if reason}
    spec: dict = {"heads": {h: s for h, s in specs.items() if h != "next_category"}, "unavailable": unavailable}
    if "next_category" in specs:
        names = [str(name) for name in data.vocab_json.get("categories", [])]
        spec["next_category"] = {**specs["next_category"], "names": names}
    (out / INTENT_FILE).write_text(json.dumps(spec, indent=1))
    run = ckpt_run_report(cfg)
    return {
        "heads": [*spec["heads"], *(["next_category"] if "next_category" in spec else [])],
        "calibration": str(cfg.intent.calibration),
        "unavailable": unavailable,
        "test": run,
    }


def ckpt_run_report(cfg) -> dict | None:
    """The test figures of the checkpoint's run (`<run>/intent.json`, written by training), when there."""
    path = Path(cfg.ckpt_path).resolve().parent.parent / "intent.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {head: {k: v for k, v in entry["test"].items() if k != "n"} for head, entry in report["heads"].items()}


def default_out_dir(cfg, data) -> Path:
    """`<artifacts_dir>/exports/<data name>/<time>`."""
    return Path(cfg.artifacts_dir) / "exports" / data.stats["name"] / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def export(cfg) -> dict:
    """Write the bundle for `cfg.ckpt_path`; returns its manifest."""
    import onnx
    from omegaconf import open_dict

    from intentrec.training.evaluate import open_run
    from intentrec.training.ranking import RankerTask

    stages = progress.Stages("export", 6)
    stages.next("checkpoint and prepared data")
    ckpt, task, data, forced = open_run(cfg, "python -m serving.export")
    task = task.eval()
    options = config_dict(cfg, "export")
    index_cfg = config_dict(cfg, "index")
    out = Path(options["out_dir"]) if options.get("out_dir") else default_out_dir(cfg, data)
    with open_dict(cfg):
        cfg.export.out_dir = str(out)
    hybrid = _hybrid_settings(options.get("hybrid", "auto"), run_metrics(ckpt), ckpt)
    ranker_ckpt = _ranker_path(options.get("ranker_ckpt"), ckpt, hybrid)
    model = task.model
    if int(cfg.data.max_seq_len) > model.cfg.max_seq_len:
        raise ConfigError(
            f"data.max_seq_len={cfg.data.max_seq_len} is longer than the checkpoint's model.max_seq_len="
            f"{model.cfg.max_seq_len}; export with data.max_seq_len={model.cfg.max_seq_len} or less."
        )
    out.mkdir(parents=True, exist_ok=True)
    vocab = task.vocab
    D = model.cfg.embedding_dim
    stages.next("item embeddings and item table")
    with torch.no_grad():
        embeddings = model.item_embeddings().numpy().astype(np.float32)
    np.save(out / "item_embeddings.npy", embeddings)

    # Items: raw ids, category, price, popularity and the content codes the towers read.
    columns = data.feature_columns()
    codes = model.item_tower.feature_codes
    items = {
        "item_idx": np.arange(1, data.num_items + 1, dtype=np.int64),
        "item_id": data.items["item_id"].astype(str),
        "category": item_categories(data),
        "price": data.items["price"].astype(np.float64),
        "train_count": data.items["train_count"].astype(np.int64),
        "added": np.zeros(data.num_items, bool),
    }
    for column in columns:
        values = data.items[column]
        items[column] = list_column(values) if values.dtype == object else values.astype(np.int64)
    pq.write_table(pa.table(items), out / "items.parquet")
    _, _, widths = data.feature_codes()
    if codes is not None:
        if len(model.item_tower.feature_embeddings) != len(columns):
            raise ConfigError(
                f"{ckpt} reads {len(model.item_tower.feature_embeddings)} item features but {data.directory} has "
                f"{len(columns)} ({columns}); export with the data config it was trained on."
            )
        tables = {
            c: e.weight.detach().numpy().astype(np.float32)
            for c, e in zip(columns, model.item_tower.feature_embeddings)
        }
        np.savez(out / "content_tables.npz", **tables)

    (out / "complements.json").write_text(json.dumps(category_complements(data), indent=1, sort_keys=True))

    sizes = {
        "event_types": vocab.num_event_types,
        "gap_buckets": vocab.num_gap_buckets,
        "channels": vocab.num_channels,
        **vocab.context_sizes,
    }
    past = int(cfg.data.past_purchases)
    stages.next("ONNX query encoder")
    export_query_encoder(model, out / "query_encoder.onnx", sizes, model.cfg.max_seq_len, past)
    intent_info = export_intent(cfg, task, data, out) if model.intent is not None else None

    if hybrid is not None:
        import scipy.sparse as sp

        from intentrec.training.hybrid import build_cooccurrence

        sp.save_npz(out / "cooccurrence.npz", build_cooccurrence(data, hybrid).matrix.tocsr())
    ranker_info = None
    stages.next("co-occurrence and ONNX ranker")
    if ranker_ckpt is not None:
        F = 0 if codes is None else codes.shape[1]
        ranker = RankerTask.load_from_checkpoint(
            str(ranker_ckpt),
            map_location="cpu",
            item_vectors=torch.zeros(data.num_items + 1, D),
            feature_codes=torch.zeros(data.num_items + 1, F, dtype=torch.long),
        ).eval()
        context_sizes = list(ranker.hparams.context_sizes)
        feature_sizes = list(ranker.hparams.feature_sizes)
        export_ranker(
            ranker.ranker, out / "ranker.onnx", D, feature_sizes, context_sizes, list(ranker.ranker.feature_widths)
        )
        ranker_info = {
            "checkpoint": str(ranker_ckpt),
            "num_candidates": int(cfg.ranker.num_candidates),
            "context_fields": [*CONTEXT_FIELDS, "loyalty"],
            "feature_sizes": feature_sizes,
            "inputs": [i.name for i in onnx.load(str(out / "ranker.onnx")).graph.input],
        }

    # FAISS index over rows 1..N, with recall measured on the model's own validation queries.
    stages.next("FAISS index and its recall")
    vectors = embeddings[1:]
    index = build_index(vectors, str(index_cfg["factory"]), seed=int(cfg.seed), use_gpu=index_cfg.get("use_gpu"))
    set_search_params(index, index_cfg.get("search_params") or {})
    write_index(index, out / "index.faiss")
    queries = validation_queries(task, cfg, data, int(options.get("recall_queries", 2000)))
    recall = {
        f"recall@{k}": recall_against_exact(index, vectors, queries, k) if len(queries) else None for k in (10, 100)
    }
    minimum = float(index_cfg.get("min_recall_at_100", 0.0))
    if recall["recall@100"] is not None and recall["recall@100"] < minimum:
        log.warning(
            "index %s %s: recall@100 %.4f is below index.min_recall_at_100=%.2f; raise nprobe/efSearch or use index=flat",
            index_cfg["factory"],
            index_cfg.get("search_params"),
            recall["recall@100"],
            minimum,
        )

    manifest = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "intentrec_commit": git_commit(),
        "versions": library_versions(),
        "checkpoint": str(ckpt.resolve()),
        "model": {
            "variant": task.hparams.get("variant", "two_tower"),
            "encoder": model.cfg.encoder,
            "context": model.cfg.context,
            "item_features": model.cfg.item_features,
            "similarity": model.cfg.similarity,
            "logit_scale": float(model.logit_scale()),
            "max_seq_len": int(model.cfg.max_seq_len),
        },
        "data": dict(task.hparams.data_fingerprint),
        "num_items": int(data.num_items),
        "trained_items": int(data.num_items),
        "added_items": 0,
        "dim": int(D),
        "past_purchases": past,
        "num_gap_buckets": NUM_GAP_BUCKETS,
        "session_gap_s": SESSION_GAP_MS // 1000,
        "feature_columns": columns,
        "feature_widths": widths,
        "vocab": {key: data.vocab_json[key] for key in VOCAB_KEYS if key in data.vocab_json},
        "index": {
            "factory": resolve_factory(str(index_cfg["factory"]), len(vectors)),
            "search_params": dict(index_cfg.get("search_params") or {}),
            "metric": "inner_product" + (" (normalized vectors)" if model.cfg.similarity == "cosine" else ""),
            **recall,
            "min_recall_at_100": minimum,
            "recall_queries": int(len(queries)),
        },
        "ranker": ranker_info,
        "hybrid": hybrid,
        "intent": intent_info,
        "settings": task.hparams.get("settings"),
        "forced": forced,
    }
    manifest = write_manifest(out, manifest)
    log.info("bundle written to %s", out)
    stages.next("Triton model repository")
    if options.get("model_repository", True):
        from intentrec.serving.repository import build, serving_options

        build(out, out / "model_repository", serving_options(CONF_DIR / "serving.yaml"))
        log.info("Triton model repository written to %s", out / "model_repository")
    stages.finish()
    return manifest


def _cli(cfg) -> None:
    manifest = export(cfg)
    out = Path(cfg.export.out_dir)
    index = manifest["index"]
    print(f"bundle: {out}")
    if (out / "model_repository").is_dir():
        print(f"  Triton model repository: {out / 'model_repository'} (python -m serving.server model_repository=...)")
    print(
        f"  {manifest['num_items']:,} items, dim {manifest['dim']}, {manifest['model']['similarity']} similarity, "
        f"ranker {'yes' if manifest['ranker'] else 'no'}, "
        f"hybrid {'weight ' + format(manifest['hybrid']['weight'], 'g') if manifest.get('hybrid') else 'no'}"
    )
    print(
        f"  index {index['factory']} {index['search_params'] or ''}: recall@10 {index['recall@10']:.4f}, "
        f"recall@100 {index['recall@100']:.4f} against exact search ({index['recall_queries']} validation queries)"
    )


if __name__ == "__main__":
    from intentrec.config import hydra_main

    hydra_main("export", _cli)
