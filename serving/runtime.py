"""Where the served models run: ONNX Runtime sessions and the FAISS index on the GPU when there is one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Runtime:
    """Threads and device for the ONNX sessions and the FAISS search of one model instance."""

    threads: int = 1
    use_gpu: bool = False

    @classmethod
    def choose(cls, threads: int = 1, use_gpu: bool | None = None) -> Runtime:
        """`use_gpu=None`: the GPU when FAISS sees one."""
        import faiss

        faiss.omp_set_num_threads(threads)
        return cls(threads, (faiss.get_num_gpus() > 0) if use_gpu is None else bool(use_gpu))

    def session(self, path: Path):
        """An ONNX Runtime session of `path` (CUDA first when this runtime uses the GPU and it is available)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if self.use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        return ort.InferenceSession(str(path), options, providers=providers)

    def index(self, bundle):
        """The bundle's FAISS index, checked against the bundle, with its search parameters, on this device."""
        from intentrec.serving.bundle import check_index
        from intentrec.serving.index import read_index, set_search_params, to_search_device

        index = read_index(bundle.directory / "index.faiss")
        check_index(bundle, index)
        set_search_params(index, bundle.manifest["index"].get("search_params", {}))
        return to_search_device(index, self.use_gpu)
