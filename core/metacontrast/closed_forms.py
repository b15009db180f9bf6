"""Ridge regression fitted on a support set in closed form, shared by the R2-D2 solver
and the few-shot evaluator."""

from __future__ import annotations

import torch
from torch import Tensor


def ridge_weights(x: Tensor, y: Tensor, lam: float, space: str = "auto") -> Tensor:
    """Ridge regression ``min_W ||X W - Y||^2 + lam ||W||^2`` per task.

    ``x (n, S, D)``, ``y (n, S, N)`` -> ``W (n, D, N)``. ``space``: ``primal`` solves the
    D x D system ``(X^T X + lam I) W = X^T Y``; ``dual`` the S x S one,
    ``W = X^T (X X^T + lam I)^-1 Y`` (Woodbury); ``auto`` picks the smaller."""
    s, d = x.shape[1], x.shape[2]
    if space == "auto":
        space = "dual" if s <= d else "primal"
    xt = x.transpose(1, 2)
    # cholesky_ex: lam > 0 makes the Gram matrices positive definite; not checking saves a
    # host read of the status on accelerators (a failure would show as non-finite loss)
    if space == "dual":
        gram = x @ xt + lam * torch.eye(s, device=x.device, dtype=x.dtype)
        return xt @ torch.cholesky_solve(y, torch.linalg.cholesky_ex(gram).L)
    if space == "primal":
        gram = xt @ x + lam * torch.eye(d, device=x.device, dtype=x.dtype)
        return torch.cholesky_solve(xt @ y, torch.linalg.cholesky_ex(gram).L)
    raise ValueError(f"space must be auto, primal or dual, got {space!r}")
