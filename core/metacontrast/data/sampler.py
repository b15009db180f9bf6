"""A seeded, resumable, rank-aware batch sampler over indices held in memory."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from metacontrast.config import ConfigError


class EpochBatchSampler:
    """Each epoch a permutation of ``range(n)`` drawn from ``seed + epoch``, cut into
    global batches of ``world_size * batch_size`` (the incomplete last one dropped).
    Rank ``r`` takes slice ``[r * batch_size, (r + 1) * batch_size)`` of each global
    batch, so one process with the global batch sees exactly what all ranks see.
    The position is just ``(epoch, batch)``: resuming needs nothing else."""

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.steps_per_epoch = n // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"trainer.batch_size: {world_size} x {batch_size} samples per step "
                             f"exceed the {n} training samples")

    def epoch_order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def batches(self, epoch: int, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(batch_index, indices (batch_size,))`` of ``epoch`` for batch indices
        ``start <= i < stop`` (``stop`` defaults to the end of the epoch)."""
        order = self.epoch_order(epoch)
        global_batch = self.batch_size * self.world_size
        end = self.steps_per_epoch if stop is None else min(stop, self.steps_per_epoch)
        for i in range(start, end):
            lo = i * global_batch + self.rank * self.batch_size
            yield i, order[lo:lo + self.batch_size]
