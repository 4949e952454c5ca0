"""An export bundle: everything serving needs, checked against its manifest when loaded.

    <bundle>/manifest.json        versions, hashes, num_items, dim, similarity, vocab, index settings
    <bundle>/query_encoder.onnx   events + context -> query vector
    <bundle>/ranker.onnx          (query, candidates, context) -> logits   (when the run trained one)
    <bundle>/item_embeddings.npy  (num_items + 1, dim) float32; row 0 is padding
    <bundle>/items.parquet        item_idx, raw item_id, category, price, popularity, feature codes
    <bundle>/content_tables.npz   content-feature embedding tables (embeds items added later)
    <bundle>/index.faiss          FAISS index; row r is item r + 1
    <bundle>/cooccurrence.npz     (trained items + 1)^2 sparse co-occurrence counts (when the hybrid is served)
    <bundle>/intent.json          the intent heads' calibration and category names (when the model has heads)

`load_bundle` refuses a bundle whose files do not match the manifest (hash, shape, count) and says
which file and what to do. `add_items` embeds new catalogue items from their content features alone
(no retraining) and writes a new bundle with them appended to the table and the index.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from intentrec.data.item_content import code_matrix, encode_values, list_column, pad_column, split_values, table_arrays
from intentrec.errors import ConfigError, DataError
from intentrec.hashing import settings_hash
from intentrec.hashing import sha256_file as sha256

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
FILES = (
    "query_encoder.onnx",
    "ranker.onnx",
    "item_embeddings.npy",
    "items.parquet",
    "content_tables.npz",
    "index.faiss",
    "complements.json",
    "cooccurrence.npz",
    "intent.json",
)


def library_versions() -> dict:
    import faiss
    import onnx
    import onnxruntime
    import torch

    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
    }


@dataclass
class Bundle:
    directory: Path
    manifest: dict
    embeddings: np.ndarray  # (N + 1, D) float32
    items: dict[str, np.ndarray]  # columns of items.parquet, row r = item_idx r + 1

    @property
    def digest(self) -> str:
        """A short content digest of the bundle (its manifest's file hashes): the in-process model version."""
        return "bundle-" + settings_hash(self.manifest["files"], length=12)

    @property
    def num_items(self) -> int:
        return int(self.manifest["num_items"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def padded(self, column: str, fill=0) -> np.ndarray:
        return pad_column(self.items[column], fill)

    def items_by_category(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """(item id -> category, category -> item ids from the most to the least trained on)."""
        ids, categories = self.items["item_id"].astype(str).tolist(), self.items["category"].astype(str).tolist()
        top: dict[str, list[str]] = {}
        for i in np.argsort(-self.items["train_count"], kind="stable"):
            top.setdefault(categories[i], []).append(ids[i])
        return dict(zip(ids, categories)), top

    def attribute_tables(self) -> list[np.ndarray]:
        """The content-feature embedding tables in the model's feature order (empty without content features)."""
        path = self.directory / "content_tables.npz"
        if not path.is_file():
            return []
        tables = np.load(path)
        return [tables[column].astype(np.float32) for column in self.manifest["feature_columns"]]

    def feature_codes(self) -> np.ndarray:
        """(N + 1, F) content codes in the model's feature order (bags over their widths); row 0 padding."""
        columns = self.manifest["feature_columns"]
        if not columns:
            return np.zeros((self.num_items + 1, 0), np.int64)
        return code_matrix([self.padded(c) for c in columns], feature_widths(self.manifest))[0]


def write_manifest(directory: Path, manifest: dict) -> dict:
    files = {name: sha256(directory / name) for name in FILES if (directory / name).is_file()}
    manifest = {**manifest, "files": files, "bundle_format": BUNDLE_FORMAT}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(directory: Path) -> dict:
    """A bundle's manifest alone (checked to be one of this format), without reading or hashing its files."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise DataError(
            f"{path} not found: {directory} is not an export bundle; make one with python -m serving.export."
        )
    manifest = json.loads(path.read_text())
    if manifest.get("bundle_format") != BUNDLE_FORMAT:
        raise DataError(
            f"{path}: bundle_format={manifest.get('bundle_format')!r}, this intentrec reads {BUNDLE_FORMAT}; "
            "export the checkpoint again."
        )
    return manifest


def load_bundle(directory: Path, verify: bool = True) -> Bundle:
    """Read a bundle; with `verify`, every file must match the manifest's hash, and shapes must agree."""
    directory = Path(directory)
    path = directory / "manifest.json"
    manifest = read_manifest(directory)
    for name, digest in manifest["files"].items():
        file = directory / name
        if not file.is_file():
            raise DataError(f"{file} is listed in {path} but missing; copy the whole bundle or export again.")
        if verify and sha256(file) != digest:
            raise DataError(
                f"{file} does not match {path} (sha256 {sha256(file)[:12]}..., manifest {digest[:12]}...): the file was "
                "changed or comes from another export; export again or restore the bundle."
            )
    embeddings = np.load(directory / "item_embeddings.npy")
    expected = (manifest["num_items"] + 1, manifest["dim"])
    if embeddings.shape != expected or embeddings.dtype != np.float32:
        raise DataError(
            f"{directory / 'item_embeddings.npy'} has shape {embeddings.shape} {embeddings.dtype}; {path} says "
            f"num_items={manifest['num_items']}, dim={manifest['dim']}, so expected {expected} float32."
        )
    items = table_arrays(pq.read_table(directory / "items.parquet"))
    if len(items["item_idx"]) != manifest["num_items"]:
        raise DataError(
            f"{directory / 'items.parquet'} has {len(items['item_idx'])} rows; {path} says num_items={manifest['num_items']}."
        )
    return Bundle(directory, manifest, embeddings, items)


def check_index(bundle: Bundle, index) -> None:
    if index.ntotal != bundle.num_items or index.d != bundle.dim:
        raise DataError(
            f"{bundle.directory / 'index.faiss'} holds {index.ntotal} vectors of dim {index.d}; the manifest says "
            f"num_items={bundle.num_items}, dim={bundle.dim}; rebuild it with python -m serving.export."
        )


def feature_widths(manifest: dict) -> list[int]:
    return list(manifest.get("feature_widths") or [1] * len(manifest["feature_columns"]))


def attribute_vectors(tables: list[np.ndarray], widths: list[int], codes: np.ndarray, dim: int) -> np.ndarray:
    """(..., A, D) float32: each content feature's vector of items with codes (..., sum(widths)), as the item tower
    (models.towers.feature_vectors): a code's row, or the mean over a bag's known codes (row 0, zero, when none).
    An item's content vector is their sum over A."""
    out, start = [], 0
    for table, width in zip(tables, widths):
        block = codes[..., start : start + width]
        known = (block > 0)[..., None]
        out.append((table[block] * known).sum(axis=-2) / np.maximum(known.sum(axis=-2), 1))
        start += width
    return np.stack(out, axis=-2).astype(np.float32) if out else np.zeros((*codes.shape[:-1], 0, dim), np.float32)


def encode_item_features(manifest: dict, table: pa.Table) -> np.ndarray:
    """(M, F) content codes of new catalogue rows (canonical item columns and attributes), with the training
    vocabulary and the rules of data.item_content. Values never seen in training get code 0 (unknown)."""
    vocab = manifest["vocab"]
    columns = manifest["feature_columns"]
    widths = feature_widths(manifest)
    blocks = []
    for column, width in zip(columns, widths):
        name = column.removesuffix("_idx")
        source = {"category": "category_id", "price_bucket": "price"}.get(name, name)
        kind = {"category": "categorical", "brand": "categorical", "price_bucket": "numeric"}.get(name)
        kind = kind or vocab.get("item_attribute_kinds", {}).get(name, "categorical")
        if source not in table.column_names:
            blocks.append(np.zeros((table.num_rows, width), np.int64))
            continue
        values = {"category": vocab.get("categories"), "brand": vocab.get("brands")}.get(name)
        if values is None:
            values = vocab.get("item_attributes", {}).get(name, ["<unknown>"])
        edges = (
            vocab["price_bucket_edges"] if name == "price_bucket" else vocab.get("item_attribute_edges", {}).get(name)
        )
        raw = table[source]
        if kind == "multi" and not pa.types.is_list(raw.type):
            raw = split_values(raw.cast(pa.string()), vocab.get("item_list_sep", "|"))  # preparation's rule
        codes = encode_values(raw, kind, values, edges, width)
        blocks.append(codes.reshape(table.num_rows, width))
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((table.num_rows, 0), np.int64)


def add_items(bundle_dir: Path, items_file: Path, out_dir: Path) -> dict:
    """Embed the catalogue rows of `items_file` from their content features, append them, write a new bundle."""
    import faiss

    from intentrec.serving.index import set_search_params

    bundle = load_bundle(bundle_dir)
    tables_path = Path(bundle_dir) / "content_tables.npz"
    if not tables_path.is_file():
        raise ConfigError(
            f"{bundle_dir} was exported from a model without content features (item_features=id): items added later "
            "cannot be embedded without retraining; train with model.item_features=id+content."
        )
    items_file = Path(items_file)
    if not items_file.is_file():
        raise ConfigError(
            f"{items_file} not found; give a Parquet or CSV file of catalogue rows (item_id, category_id, ...)."
        )
    table = (
        pq.read_table(items_file)
        if items_file.suffix == ".parquet"
        else pa.Table.from_pandas(
            __import__("pandas").read_csv(items_file, dtype={"item_id": str}), preserve_index=False
        )
    )
    if "item_id" not in table.column_names:
        raise DataError(f"{items_file}: no item_id column; columns are {table.column_names}.")
    new_ids = [str(x) for x in table["item_id"].to_pylist()]
    known = set(bundle.items["item_id"].tolist())
    for row, item_id in enumerate(new_ids):
        if not item_id or item_id == "None":
            raise DataError(f"{items_file} row {row}: item_id is empty; every new item needs its raw id.")
        if item_id in known:
            raise DataError(
                f"{items_file} row {row}: item_id={item_id!r} is already in the catalogue of {bundle_dir}; "
                "only new items can be added."
            )
    if len(set(new_ids)) != len(new_ids):
        raise DataError(f"{items_file}: item ids repeat; each new item once.")
    codes = encode_item_features(bundle.manifest, table)
    vectors = attribute_vectors(bundle.attribute_tables(), feature_widths(bundle.manifest), codes, bundle.dim)
    vectors = vectors.sum(axis=-2)
    if bundle.manifest["model"]["similarity"] == "cosine":
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(bundle_dir).resolve():
        raise ConfigError("the new bundle must go to another folder than the one it is made from.")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(bundle_dir, out_dir)
    N = bundle.num_items
    np.save(out_dir / "item_embeddings.npy", np.concatenate([bundle.embeddings, vectors]))
    columns = dict(bundle.items)
    new_rows = {
        "item_idx": np.arange(N + 1, N + 1 + len(new_ids)),
        "item_id": np.asarray(new_ids, dtype=object),
        "category": _column(table, "category_id", len(new_ids)),
        "price": table["price"].cast(pa.float64()).to_numpy(zero_copy_only=False)
        if "price" in table.column_names
        else np.full(len(new_ids), np.nan),
        "train_count": np.zeros(len(new_ids), np.int64),
        "added": np.ones(len(new_ids), bool),
    }
    start = 0
    for column, width in zip(bundle.manifest["feature_columns"], feature_widths(bundle.manifest)):
        block = codes[:, start : start + width]
        start += width
        if columns[column].dtype == object:  # a bag: its known codes
            new_rows[column] = np.empty(len(block), object)
            new_rows[column][:] = [row[row > 0] for row in block]
        else:
            new_rows[column] = block[:, 0]
    for name in columns:
        added = np.asarray(new_rows[name])
        columns[name] = np.concatenate(
            [columns[name], added if columns[name].dtype == object else added.astype(columns[name].dtype)]
        )
    pq.write_table(pa.table({k: list_column(v) for k, v in columns.items()}), out_dir / "items.parquet")
    index = faiss.read_index(str(Path(bundle_dir) / "index.faiss"))
    index.add(np.ascontiguousarray(vectors))
    set_search_params(index, bundle.manifest["index"].get("search_params", {}))
    faiss.write_index(index, str(out_dir / "index.faiss"))
    manifest = dict(bundle.manifest)
    manifest.update(
        num_items=N + len(new_ids),
        added_items=int(manifest.get("added_items", 0)) + len(new_ids),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        parent=str(Path(bundle_dir).resolve()),
    )
    return write_manifest(out_dir, manifest)


def _column(table: pa.Table, name: str, length: int) -> np.ndarray:
    if name not in table.column_names:
        return np.full(length, "", dtype=object)
    return np.asarray([("" if v is None else str(v)) for v in table[name].to_pylist()], dtype=object)
