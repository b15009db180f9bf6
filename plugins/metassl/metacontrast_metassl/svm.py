"""A differentiable multi-class (Crammer-Singer) SVM head, as in MetaOptNet, without an
external QP package.

Primal, per task with supports ``x_s`` of class ``y_s`` and N classes:
``min_w 1/2 sum_k ||w_k||^2 + C sum_s xi_s`` s.t. ``w_{y_s} x_s - w_k x_s >= 1 - [k = y_s] - xi_s``.
Dual: ``max_alpha -1/2 tr(alpha^T K alpha) + <alpha, Y>`` with ``K = X X^T``, each row
``alpha_s <= C e_{y_s}`` and ``sum_k alpha_s^k = 0``; then ``w_k = sum_s alpha_s^k x_s``.
Writing ``alpha = C Y - b`` turns each row's constraints into the simplex
``b_s >= 0, sum_k b_s^k = C``, so the dual is solved by accelerated projected gradient
ascent (FISTA) with the exact sort-based simplex projection, step ``1 / L`` with ``L`` a
Gershgorin bound on ``K``'s largest eigenvalue. The iterations are unrolled, so the query
loss differentiates through the solution back to the encoder.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from metacontrast_metassl.solvers import LinearTaskSolver


def project_simplex(v: Tensor, radius: float) -> Tensor:
    """Euclidean projection of each row of ``v (..., N)`` onto ``{b >= 0, sum b = radius}``."""
    u = torch.sort(v, dim=-1, descending=True).values
    css = u.cumsum(dim=-1) - radius
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    support = (u - css / k) > 0
    rho = support.to(v.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)  # last True
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def svm_dual_gradient(kernel: Tensor, y: Tensor, b: Tensor, c: float) -> Tensor:
    """Gradient of the dual objective with respect to ``b`` (ascent direction)."""
    return kernel @ (c * y - b) - y


def svm_dual(x: Tensor, y: Tensor, c: float, iterations: int) -> Tensor:
    """Dual variables ``alpha (n, S, N)`` for supports ``x (n, S, D)``, one-hot ``y (n, S, N)``."""
    kernel = x @ x.transpose(1, 2)
    lipschitz = kernel.abs().sum(dim=2).amax(dim=1).clamp_min(1e-6)[:, None, None]
    step = 1.0 / lipschitz
    b = torch.full_like(y, c / y.shape[-1])
    momentum_point, t = b, 1.0
    for _ in range(iterations):
        b_next = project_simplex(momentum_point + step * svm_dual_gradient(kernel, y, momentum_point, c), c)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        momentum_point = b_next + ((t - 1) / t_next) * (b_next - b)
        b, t = b_next, t_next
    return c * y - b


@attrs.define
class SVMConfig:
    """``c``: the slack penalty C (MetaOptNet: 0.1). ``iterations``: unrolled FISTA steps.
    ``scale_init``/``learn_scale``: learnable output scale (and bias). ``normalize``:
    L2-normalise embeddings first."""

    c: float = 0.1
    iterations: int = 30
    scale_init: float = 1.0
    learn_scale: bool = True
    normalize: bool = False

    def __attrs_post_init__(self) -> None:
        if self.c <= 0:
            raise ValueError(f"c must be > 0, got {self.c}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


class SVMSolver(LinearTaskSolver):
    NAME = "svm"
    Config = SVMConfig

    def fit(self, support: Tensor, targets: Tensor) -> Tensor:
        """``w_k = sum_s alpha_s^k x_s`` from the dual solution."""
        alpha = svm_dual(support, targets, self.config.c, self.config.iterations)
        return support.transpose(1, 2) @ alpha
