"""FAISS index over the item embeddings: built from an `index_factory` string, on GPU when there is one.

The metric follows the model's similarity: inner product for `dot`, and inner product over
L2-normalized vectors for `cosine` (the item table is stored normalized then). Row i of the index is
item index i + 1 (the padding row 0 of the embedding table is never indexed).

Search parameters (`nprobe` for IVF, `efSearch` for HNSW) are set on the index after loading, from
`index.search_params`; `recall_against_exact` measures what they give against exact search.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from intentrec.errors import ConfigError

log = logging.getLogger(__name__)

FACTORY_EXAMPLES = ("Flat", "IVF256,Flat", "HNSW32", "IVF256,PQ16")


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def build_index(vectors: np.ndarray, factory: str, seed: int = 0, use_gpu: bool | None = None) -> faiss.Index:
    """Index rows of `vectors` (M, D) float32 with `faiss.index_factory(D, factory, inner product)`.

    Trains when the factory needs it (IVF, PQ) on all vectors (or 256 per list, whichever is less).
    Built on GPU when `use_gpu` (default: a GPU is present and faiss has GPU support), returned on CPU
    so that it can be written to disk.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    M, D = vectors.shape
    factory = resolve_factory(factory, M)
    try:
        index = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ConfigError(
            f"index.factory={factory!r} is not a FAISS index_factory string ({str(error).splitlines()[0][:200]}); "
            f"examples: {', '.join(FACTORY_EXAMPLES)}."
        ) from None
    lists = _ivf_lists(index)
    if lists and lists > M:
        raise ConfigError(
            f"index.factory={factory!r} asks for {lists} inverted lists but the catalogue has only {M} items; "
            f"use at most about sqrt(num_items) = {max(1, int(np.sqrt(M)))} lists (e.g. 'IVF{max(1, int(np.sqrt(M)))},Flat')."
        )
    use_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
    target = index
    if use_gpu:
        resources = faiss.StandardGpuResources()
        target = faiss.index_cpu_to_gpu(resources, 0, index)
    if not target.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors if M <= 256 * (lists or 1000) else vectors[rng.choice(M, 256 * (lists or 1000), replace=False)]
        target.train(sample)
    target.add(vectors)
    return faiss.index_gpu_to_cpu(target) if use_gpu else target


def resolve_factory(factory: str, num_items: int) -> str:
    """Fill `{nlist}` with round(4 * sqrt(num_items)) (FAISS's rule of thumb for IVF cells)."""
    return factory.replace("{nlist}", str(max(1, round(4 * np.sqrt(num_items)))))


def _ivf_lists(index: faiss.Index) -> int:
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except (RuntimeError, TypeError):
        return 0


def set_search_params(index: faiss.Index, params: dict) -> None:
    """Apply e.g. {"nprobe": 32, "efSearch": 128}; keys that do not apply to this index are refused."""
    space = faiss.ParameterSpace()
    for name, value in (params or {}).items():
        try:
            space.set_index_parameter(index, str(name), float(value) if name != "nprobe" else int(value))
        except RuntimeError:
            raise ConfigError(
                f"index.search_params.{name}={value!r} does not apply to this index ({type(index).__name__}); "
                "use nprobe for IVF indexes and efSearch for HNSW."
            ) from None


def to_search_device(index: faiss.Index, use_gpu: bool | None = None) -> faiss.Index:
    """The index on GPU 0 when one is present (and faiss has GPU support), else as is."""
    if (gpu_count() > 0) if use_gpu is None else use_gpu:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top k by inner product, (Q, k)."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_against_exact(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean share of the exact top k that the index returns in its top k."""
    k = min(k, len(vectors))
    truth = exact_top(vectors, queries, k)
    found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found)]
    return float(np.mean(hits) / k)


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def read_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))
