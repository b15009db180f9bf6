"""Which features MetAug contrasts, as similarity matrices with positive/negative masks.

Features are ``(R, M, D)``: R view-samples (rows of ``Embeddings.z``), each cut into M
channel-view parts. A feature is ``(r, j)``. Two features pair when they come from
different views (``j != j'``; with a single part, from different rows): a positive when
their rows show the same image, a negative otherwise. Memory entries are negatives only.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

SIMILARITIES = ("cosine", "unit_interval")


@dataclasses.dataclass(frozen=True, eq=False)
class PairSims:
    """``sims (A, C)``: anchor x candidate similarities; ``pos``, ``neg``: boolean masks
    ``(A, C)`` of the positive and negative pairs."""

    sims: Tensor
    pos: Tensor
    neg: Tensor

    def cat(self, other: PairSims) -> PairSims:
        """More candidates for the same anchors (columns appended)."""
        return PairSims(torch.cat([self.sims, other.sims], 1), torch.cat([self.pos, other.pos], 1),
                        torch.cat([self.neg, other.neg], 1))


def split_parts(z: Tensor, parts: int) -> Tensor:
    """``z (R, M * D)`` -> unit-norm parts ``(R, M, D)`` (half precision computed in float32)."""
    if z.dim() != 2 or z.shape[1] % parts:
        raise ValueError(f"features {tuple(z.shape)} do not split into {parts} equal parts")
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    return F.normalize(z.reshape(z.shape[0], parts, -1), dim=2)


def similarity(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """``a (A, D)``, ``b (C, D)`` unit vectors -> ``d (A, C)``: cosine, or
    ``(1 + cos) / 2`` in ``[0, 1]`` (``unit_interval``, the range equations 9-10 assume)."""
    cos = a @ b.T
    if kind == "cosine":
        return cos
    if kind == "unit_interval":
        return (1 + cos) / 2
    raise ValueError(f"similarity: unknown {kind!r}; available: {', '.join(SIMILARITIES)}")


def pair_sims(anchors: Tensor, anchor_ids: Tensor, candidates: Tensor, candidate_ids: Tensor | None,
              kind: str, same_features: bool = False) -> PairSims:
    """Anchors ``(R, M, D)`` with image ids ``(R,)`` against candidates ``(C, M, D)`` with
    ids ``(C,)`` (``None``: memory entries, never positives). ``same_features``: the
    candidates are the anchors themselves (with one part, a row then never pairs with
    itself). Rows/columns are flattened row-major: feature ``(r, j)`` is ``r * M + j``."""
    r, m, _ = anchors.shape
    c = candidates.shape[0]
    sims = similarity(anchors.reshape(r * m, -1), candidates.reshape(c * m, -1), kind)
    dev = anchors.device
    part_a = torch.arange(m, device=dev).repeat(r)
    part_c = torch.arange(m, device=dev).repeat(c)
    if m > 1:
        other_view = part_a[:, None] != part_c[None, :]
    elif same_features:  # one part: pair different rows (augmentations), never a row with itself
        other_view = ~torch.eye(r, c, dtype=torch.bool, device=dev)
    else:
        other_view = torch.ones(r, c, dtype=torch.bool, device=dev)
    if candidate_ids is None:
        return PairSims(sims, torch.zeros_like(other_view), other_view)
    same = anchor_ids.repeat_interleave(m)[:, None] == candidate_ids.repeat_interleave(m)[None, :]
    return PairSims(sims, other_view & same, other_view & ~same)
