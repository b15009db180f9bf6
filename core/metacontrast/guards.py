"""Guards between backward and the optimizer: non-finite values and gradient clipping."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from metacontrast.records import LossTerms

NONFINITE_POLICIES = ("halt", "skip")


def nonfinite_term(terms: LossTerms) -> str | None:
    """The name of the first loss term that is NaN or infinite, else ``None`` (one host
    sync for all terms)."""
    values = torch.stack([t.detach().float() for t in terms.terms.values()])
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return None
    return list(terms.terms)[int((~finite).nonzero()[0])]


def nonfinite_gradient(model: nn.Module) -> str | None:
    """The name of the first parameter whose gradient holds a NaN or infinity."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    norms = torch.stack(torch._foreach_norm([g.float() for _, g in named]))
    finite = torch.isfinite(norms)
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def clip_gradients(params: Iterable[Tensor], max_norm: float = 0.0, max_value: float = 0.0) -> None:
    """Clip gradients in place: each element to ``[-max_value, max_value]`` (when
    ``max_value > 0``), then all gradients together to a global L2 norm of at most
    ``max_norm`` (when ``max_norm > 0``)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if max_value > 0:
        for g in grads:
            g.clamp_(-max_value, max_value)
    if max_norm > 0:
        total = torch.stack(torch._foreach_norm(grads)).norm()
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale)
