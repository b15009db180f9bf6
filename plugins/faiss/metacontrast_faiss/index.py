"""Nearest-neighbour search over a memory or a feature bank with faiss.

Inner-product search (cosine on L2-normalised rows): exact (``flat``) by default; ``ivf``
(inverted lists over k-means cells, ``nprobe`` cells visited) and ``hnsw`` (graph search)
trade exactness for speed on million-entry banks. A GPU index is used when faiss was
built with GPU support, a GPU is present and the data lives on a CUDA device
(``use_gpu=auto``), or always/never as configured.
"""

from __future__ import annotations

from typing import Any

import attrs
import faiss
import numpy as np
import torch
from torch import Tensor

INDEX_KINDS = ("flat", "ivf", "hnsw")
GPU_SETTINGS = ("auto", "always", "never")
MIN_POINTS_PER_CELL = 39  # faiss' k-means wants at least this many training points per cell


@attrs.define
class IndexConfig:
    """``kind``: flat | ivf | hnsw. ``nlist``/``nprobe``: IVF cells and cells searched.
    ``hnsw_m``/``ef_search``: HNSW links per node and search breadth. ``use_gpu``:
    auto | always | never."""

    kind: str = "flat"
    nlist: int = 1024
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128
    use_gpu: str = "auto"

    def __attrs_post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index.kind: unknown index {self.kind!r}; available: {', '.join(INDEX_KINDS)}")
        if self.use_gpu not in GPU_SETTINGS:
            raise ValueError(f"index.use_gpu: must be one of {', '.join(GPU_SETTINGS)}, got {self.use_gpu!r}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"index.{name}: must be >= 1, got {getattr(self, name)}")


def gpu_available() -> bool:
    """faiss was built with GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def wants_gpu(setting: str, device: torch.device, available: bool) -> bool:
    """Whether to search on the GPU: ``always`` (an error when impossible), ``never``, or
    ``auto`` = the data is on CUDA and faiss can use a GPU."""
    if setting == "always" and not available:
        raise RuntimeError("index.use_gpu=always, but this faiss has no GPU support or sees no GPU; "
                           "install faiss-gpu or set index.use_gpu=auto")
    if setting == "never":
        return False
    return available and (setting == "always" or device.type == "cuda")


def _as_numpy(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().float().cpu().numpy())


class NeighbourIndex:
    """``add(x (N, D))`` then ``search(q (T, D), k) -> (scores (T, k), indices (T, k))``,
    inner products, best first; results on ``q``'s device."""

    def __init__(self, dim: int, config: IndexConfig | None = None,
                 device: torch.device | None = None) -> None:
        self.dim, self.config = dim, config or IndexConfig()
        self.device = device or torch.device("cpu")
        self.gpu = wants_gpu(self.config.use_gpu, self.device, gpu_available())
        self._index: Any = None
        self._count = 0

    def _build(self, n: int) -> Any:
        c = self.config
        if c.kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
        elif c.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = c.ef_search
        else:
            nlist = max(1, min(c.nlist, n // MIN_POINTS_PER_CELL))
            self._quantizer = faiss.IndexFlatIP(self.dim)  # the IVF index keeps a pointer to it
            index = faiss.IndexIVFFlat(self._quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = min(c.nprobe, nlist)
        if self.gpu:  # pragma: no cover - needs faiss-gpu and a GPU
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, self.device.index or 0, index)
        return index

    def add(self, x: Tensor) -> NeighbourIndex:
        """Add rows ``x (N, D)``; an IVF index is trained on the first rows added."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"NeighbourIndex.add: expected (N, {self.dim}), got {tuple(x.shape)}")
        data = _as_numpy(x)
        if self._index is None:
            self._index = self._build(data.shape[0])
            if not self._index.is_trained:
                self._index.train(data)
        self._index.add(data)
        self._count += data.shape[0]
        return self

    def __len__(self) -> int:
        return self._count

    def search(self, q: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if self._index is None or self._count == 0:
            raise ValueError("NeighbourIndex.search: the index is empty; add rows first")
        if q.dim() != 2 or q.shape[1] != self.dim:
            raise ValueError(f"NeighbourIndex.search: expected queries (T, {self.dim}), got {tuple(q.shape)}")
        k = min(k, self._count)
        scores, indices = self._index.search(_as_numpy(q), k)
        return (torch.from_numpy(scores).to(q.device), torch.from_numpy(indices).long().to(q.device))


def nearest(bank: Tensor, queries: Tensor, k: int,
            config: IndexConfig | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` rows of ``bank (M, D)`` with the largest inner product with each of
    ``queries (T, D)``: ``(scores (T, k), indices (T, k))``, built into a fresh index."""
    index = NeighbourIndex(bank.shape[1], config, device=bank.device).add(bank)
    return index.search(queries, k)
