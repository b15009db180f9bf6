"""Small constant tensors made on the device, never copied from the host at a step.

A tensor built from Python numbers (``torch.tensor([...], device=cuda)``) is a pageable
host-to-device copy: the host waits for it, and a CUDA graph cannot capture it. The view
pipeline and the normalisation need a few such constants (colour weights, ranges, masks).
``device_tensor`` writes each value with a fill on the device instead, and keeps the
result (``lru_cache``) so eager steps make it once. ``torch.compile`` ignores
``lru_cache`` and traces the fills into the graph: a compiled step writes its constants
again at every run, on the device (no host copy, so a CUDA graph can capture it), at the
cost of one fill per value in the traced graph (about 120 in SimCLR's views graph, 960
in CLSA-multi's, where the strong views' affine table is most of them).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=256)
def device_tensor(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``torch.tensor(values, device=device, dtype=dtype)`` (1-D, ``(len(values),)``),
    written on the device and made once per arguments. Outside inference mode, so autograd
    can use it even when it was first made during evaluation."""
    with torch.inference_mode(False):
        if not values:
            return torch.empty(0, device=device, dtype=dtype)
        return torch.stack([torch.full((), v, device=device, dtype=dtype) for v in values])
