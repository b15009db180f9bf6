"""Small constant tensors made on the device, never copied from the host at a step.

A tensor built from Python numbers (``torch.tensor([...], device=cuda)``) is a pageable
host-to-device copy: the host waits for it, and a CUDA graph cannot capture it. The view
pipeline and the normalisation need a few such constants (colour weights, ranges, masks).
``device_tensor`` writes each value with a fill kernel on the device instead, and keeps
the result (``lru_cache``) so eager steps make it once. Under ``torch.compile`` (dynamo
traces through ``lru_cache``) the fills have constant inputs and are folded into the
graph, so no step copies from the host there either.
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
