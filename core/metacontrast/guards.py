"""Guards between backward and the optimizer: non-finite values and gradient clipping.

``StepHealth`` keeps the step's verdict on the device so that a whole optimizer step reads
the host once; ``nonfinite_term`` and ``nonfinite_gradient`` name the culprit afterwards
(only when something was found)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from metacontrast.records import LossTerms

NONFINITE_POLICIES = ("halt", "skip")


class StepHealth:
    """Whether one optimizer step's loss terms and gradients are all finite, accumulated on
    ``device`` without reading it back: ``add_loss`` after each micro-batch's forward,
    ``add_gradients`` after the last backward; ``flags()`` is ``(loss_bad, grad_bad)`` as
    a float tensor ``(2,)`` for the caller's single host read (or all-reduce)."""

    def __init__(self, device: torch.device) -> None:
        self.loss_bad = torch.zeros((), device=device)
        self.grad_bad = torch.zeros((), device=device)
        self.terms: list[LossTerms] = []

    def add_loss(self, terms: LossTerms) -> None:
        values = torch.stack([t.detach().float() for t in terms.terms.values()])
        self.loss_bad = torch.maximum(self.loss_bad, (~torch.isfinite(values)).any().float())
        self.terms.append(terms.detached())

    def add_gradients(self, model: nn.Module) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            norms = torch.stack(torch._foreach_norm([g.float() for g in grads]))
            self.grad_bad = (~torch.isfinite(norms)).any().float()

    def flags(self) -> Tensor:
        return torch.stack([self.loss_bad, self.grad_bad])

    def describe_bad_term(self) -> str | None:
        """``"loss term 'name' is nan"`` for the first non-finite term of the step's
        micro-batches, else ``None`` (reads the host)."""
        for terms in self.terms:
            name = nonfinite_term(terms)
            if name is not None:
                return f"loss term {name!r} is {terms.terms[name].item()}"
        return None


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
