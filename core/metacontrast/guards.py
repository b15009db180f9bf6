"""Guards between backward and the optimizer: non-finite values and gradient clipping.

``StepHealth`` keeps the step's evidence on the device (each micro-batch's total loss and
every gradient's norm) so that a whole optimizer step is checked by three device
operations and read by the host once; the culprit (loss term or parameter) is named
afterwards, only when something was found."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from metacontrast.records import LossTerms

NONFINITE_POLICIES = ("halt", "skip")


class StepHealth:
    """Whether one optimizer step's loss terms and gradients are all finite, gathered on
    the device without reading it back: ``add_loss`` after each micro-batch's forward
    (its total: non-finite when any term is), ``add_gradients`` after the last backward
    (the norm of every gradient); ``finite()`` is one boolean per micro-batch, then one
    per gradient, for the caller's single host read (or all-reduce)."""

    def __init__(self) -> None:
        self.totals: list[Tensor] = []
        self.grad_norms: list[Tensor] = []
        self.grad_names: list[str] = []
        self.terms: list[LossTerms] = []

    def add_loss(self, terms: LossTerms, total: Tensor | None = None) -> None:
        """``total``: ``terms.total`` when the caller has it already."""
        self.totals.append((terms.total if total is None else total).detach().float())
        self.terms.append(terms.detached())

    def add_gradients(self, model: nn.Module) -> None:
        named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
        self.grad_names = [n for n, _ in named]
        self.grad_norms = list(torch._foreach_norm([g for _, g in named])) if named else []

    def finite(self) -> Tensor:
        """``(micro-batches + gradients,)`` booleans: each total loss, then each gradient's
        norm, finite."""
        return torch.isfinite(torch.stack([*self.totals, *(n.float() for n in self.grad_norms)]))

    def verdict(self, finite: list[bool]) -> tuple[bool, bool]:
        """``(loss_bad, grad_bad)`` from the host copy of ``finite()``."""
        k = len(self.totals)
        return not all(finite[:k]), not all(finite[k:])

    def bad_gradient(self, finite: list[bool]) -> str | None:
        """The name of the first parameter whose gradient is not finite, from the host
        copy of ``finite()``."""
        k = len(self.totals)
        return next((n for n, ok in zip(self.grad_names, finite[k:], strict=True) if not ok), None)

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
