"""A FIFO queue of keys (MoCo): the most recent K keys of past batches, any K."""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.interfaces import BuildContext, Memory, MemoryConfig
from metacontrast_faiss.index import IndexConfig, nearest


@attrs.define
class QueueConfig(MemoryConfig):
    """``size``: K keys (MoCo: 65536; no need to divide the dataset or batch size).
    Written with the teacher's projections of view 1 by default (MoCo's keys).
    ``index``: how ``nearest`` searches the queue."""

    size: int = 65536
    index: IndexConfig = attrs.field(factory=IndexConfig)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.size < 1:
            raise ValueError(f"size: must be >= 1, got {self.size}")


class KeyQueue(Memory):
    """``keys (K, D)`` buffer, oldest overwritten first; ``pointer`` is the next slot and
    ``ids (K,)`` the dataset index of each key (-1: an initial random key).

    Starts full of random unit vectors (as MoCo), drawn from torch's global generator at
    construction, so every rank (seeded alike) starts with the same queue. Enqueuing
    ``n`` keys puts key ``j`` at slot ``(pointer + j) % K``, exactly as enqueuing them
    one at a time; when ``n > K`` only the last K survive.
    """

    NAME = "queue"
    Config = QueueConfig

    def __init__(self, config: QueueConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        dim = config.dim(context)
        self.register_buffer("keys", F.normalize(torch.randn(config.size, dim), dim=1))
        self.register_buffer("ids", torch.full((config.size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    def read(self) -> Tensor:
        """All K keys ``(K, D)``."""
        return self.keys

    @torch.no_grad()
    def update(self, keys: Tensor, ids: Tensor) -> None:
        """Enqueue ``keys (n, D)`` with dataset indices ``ids (n,)``, in order."""
        if keys.dim() != 2 or keys.shape[1] != self.keys.shape[1] or ids.shape != (keys.shape[0],):
            raise ValueError(f"queue.update: expected keys (n, {self.keys.shape[1]}) and ids (n,), got "
                             f"{tuple(keys.shape)} and {tuple(ids.shape)}")
        n, k = keys.shape[0], self.size
        first = max(0, n - k)  # earlier keys would be overwritten within this call
        slots = (self.pointer + torch.arange(first, n, device=self.keys.device)) % k
        self.keys[slots] = keys[first:].to(self.keys.dtype)
        self.ids[slots] = ids[first:].to(self.ids.device)
        self.pointer.copy_((self.pointer + n) % k)

    def nearest(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` queue slots most similar to ``queries (T, D)``: ``(scores, slots)``."""
        return nearest(self.keys, queries, k, self.config.index)
