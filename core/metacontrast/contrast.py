"""Similarity logits shared by contrastive losses over a memory of keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def positive_and_memory_logits(queries: Tensor, keys: Tensor, memory: Tensor, temperature: float, *,
                               memory_normalized: bool = False) -> Tensor:
    """Cosine logits of each query against its own key and every memory entry.

    ``queries (B, D)``, ``keys (B, D)`` (row i is the positive of query i), ``memory
    (M, D)`` -> ``(B, 1 + M)`` float32: column 0 is ``cos(q_i, k_i) / temperature``,
    column ``1 + m`` is ``cos(q_i, memory_m) / temperature`` (MoCo's and CLSA's
    ``{positive key, queue}``). Queries and keys are L2-normalised here, the memory too
    unless ``memory_normalized`` says its rows are unit vectors already (a memory written
    with ``normalize``: ``LossInputs.memory_normalized``)."""
    if (queries.shape != keys.shape or queries.dim() != 2 or memory.dim() != 2
            or memory.shape[1] != queries.shape[1]):
        raise ValueError(f"positive_and_memory_logits: need queries (B, D), keys (B, D), memory (M, D); got "
                         f"{tuple(queries.shape)}, {tuple(keys.shape)}, {tuple(memory.shape)}")
    q = F.normalize(queries.float(), dim=1).div_(temperature)
    k = F.normalize(keys.float(), dim=1)
    m = memory.float() if memory_normalized else F.normalize(memory.float(), dim=1)
    return torch.cat([(q * k).sum(dim=1, keepdim=True), q @ m.T], dim=1)
