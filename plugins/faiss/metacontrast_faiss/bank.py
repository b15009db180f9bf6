"""A memory bank indexed by sample id with momentum updates (InstDisc, CMC, MetAug)."""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from metacontrast.interfaces import BuildContext, Memory, MemoryConfig
from metacontrast_faiss.index import IndexConfig, nearest


@attrs.define
class MemoryBankConfig(MemoryConfig):
    """``size``: entries (0: one per training image). ``momentum`` m of
    ``v_i <- m v_i + (1 - m) f_i`` (then L2-normalised when ``normalize``; InstDisc and
    CMC use 0.5). Written with the online projections of view 0 by default.
    ``read_size``: entries each ``read()`` returns (0: the whole bank; n: n entries drawn
    uniformly with replacement, afresh on every read, as MetAug's 4096 negatives), from a
    stream seeded with ``read_seed`` and the count of reads so far (kept in the bank's
    state, so a resumed run draws what the uninterrupted one would)."""

    source: str = "z"
    views: list[int] = attrs.field(factory=lambda: [0])
    size: int = 0
    momentum: float = 0.5
    index: IndexConfig = attrs.field(factory=IndexConfig)
    read_size: int = 0
    read_seed: int = 0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.read_size < 0:
            raise ValueError(f"read_size: must be >= 0 (0: the whole bank), got {self.read_size}")
        if self.size < 0:
            raise ValueError(f"size: must be >= 0 (0: the number of training images), got {self.size}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum: must be in [0, 1), got {self.momentum}")


class MemoryBank(Memory):
    """``bank (N, D)``: one entry per sample id, initialised to random unit vectors.

    ``update(f, ids)`` applies ``v_i <- normalize(m v_i + (1 - m) f_i)`` for every row; a
    sample id that occurs several times in one update is updated once per occurrence, in
    order (as a loop over the rows would). ``sample(n, generator)`` draws ``n`` entries
    uniformly (negatives for InstDisc-style losses).
    """

    NAME = "memory_bank"
    Config = MemoryBankConfig

    def __init__(self, config: MemoryBankConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        size = config.size or context.num_train
        if size < 1:
            raise ValueError("size: the dataset size is unknown here; set memory.size")
        self.register_buffer("bank", F.normalize(torch.randn(size, config.dim(context)), dim=1))
        self.register_buffer("reads", torch.zeros((), dtype=torch.long))
        self._reads_on_host: int | None = None  # mirror of ``reads``: read from the device once

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._reads_on_host = None  # ``reads`` is replaced: read it again when next needed
        super()._load_from_state_dict(*args, **kwargs)

    def read(self) -> Tensor:
        """The whole bank ``(N, D)``, or ``read_size`` entries drawn for this read
        ``(read_size, D)``."""
        n = self.config.read_size
        if n == 0:
            return self.bank
        if self._reads_on_host is None:
            self._reads_on_host = int(self.reads)
        seed = self.config.read_seed * 1_000_003 + self._reads_on_host
        stream = torch.Generator(device=self.bank.device).manual_seed(seed)
        self._reads_on_host += 1
        self.reads += 1
        idx = torch.randint(self.bank.shape[0], (n,), generator=stream, device=self.bank.device)
        return self.bank[idx]

    @torch.no_grad()
    def update(self, keys: Tensor, ids: Tensor) -> None:
        """Momentum-update the entries ``ids (n,)`` with ``keys (n, D)``."""
        if keys.dim() != 2 or keys.shape[1] != self.bank.shape[1] or ids.shape != (keys.shape[0],):
            raise ValueError(f"memory_bank.update: expected keys (n, {self.bank.shape[1]}) and ids (n,), got "
                             f"{tuple(keys.shape)} and {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.bank.shape[0]):
            raise ValueError(f"memory_bank.update: ids must lie in [0, {self.bank.shape[0]}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]; set memory.size to the dataset size")
        ids = ids.to(self.bank.device)
        keys = keys.to(self.bank.dtype)
        occurrence = _occurrence(ids)
        m = self.config.momentum
        for k in range(int(occurrence.max()) + 1 if ids.numel() else 0):
            rows = (occurrence == k).nonzero().squeeze(1)
            v = m * self.bank[ids[rows]] + (1 - m) * keys[rows]
            self.bank[ids[rows]] = F.normalize(v, dim=1) if self.config.normalize else v

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` entries drawn uniformly with replacement: ``(n, D)``."""
        idx = torch.randint(self.bank.shape[0], (n,), generator=generator, device=self.bank.device)
        return self.bank[idx]

    def nearest(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` entries most similar to ``queries (T, D)``: ``(scores, sample ids)``."""
        return nearest(self.bank, queries, k, self.config.index)


def _occurrence(ids: Tensor) -> Tensor:
    """For each position, how many earlier positions hold the same id: ``(n,)``."""
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    starts = torch.ones_like(sorted_ids, dtype=torch.bool)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    pos = torch.arange(ids.numel(), device=ids.device)
    group_start = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), dim=0).values
    out = torch.empty_like(ids)
    out[order] = pos - group_start
    return out
