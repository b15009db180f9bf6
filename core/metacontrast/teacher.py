"""An exponential-moving-average teacher: BYOL's target network, MoCo's key encoder.

The teacher is a frozen copy of the encoder and head. After each optimizer step its
parameters move towards the online ones, ``t <- m * t + (1 - m) * o``, with ``m`` from a
schedule over training (BYOL: ``m = 1 - (1 - m0) * (cos(pi * k / K) + 1) / 2``). Its
buffers (BatchNorm statistics) are its own, updated by its forward in training mode. It is
a submodule of ``Model``, so checkpoints hold it and resume restores it exactly.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

SCHEDULES = ("cosine", "constant")


class EMATeacher(nn.Module):
    """``forward(images (N, C, H, W)) -> z (N, D_z)`` without gradient.

    ``views``: the view indices the teacher embeds (``None``: all; MoCo's key encoder needs
    only the key view). ``shuffle_bn``: under DDP, embed a batch shuffled across ranks so
    that BatchNorm statistics cannot tell which keys belong to which queries (MoCo's
    shuffling BN); a no-op in one process.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, momentum: float, final_momentum: float = 1.0,
                 schedule: str = "cosine", views: tuple[int, ...] | None = None,
                 shuffle_bn: bool = False, exclusive: bool = False) -> None:
        super().__init__()
        if views is not None and (not views or min(views) < 0 or len(set(views)) != len(views)):
            raise ValueError(f"teacher.views must be distinct view indices >= 0, got {list(views)}")
        self.views = None if views is None else tuple(int(v) for v in views)
        self.shuffle_bn = shuffle_bn
        if exclusive and views is None:
            raise ValueError("teacher.exclusive needs teacher.views: the online network must keep some views")
        self.exclusive = exclusive
        if not 0.0 <= momentum <= 1.0 or not 0.0 <= final_momentum <= 1.0:
            raise ValueError(f"teacher.momentum and teacher.final_momentum must be in [0, 1], got "
                             f"{momentum} and {final_momentum}")
        if schedule not in SCHEDULES:
            raise ValueError(f"teacher.schedule: unknown schedule {schedule!r}; available: cosine, constant")
        self.encoder = copy.deepcopy(encoder)
        self.head = copy.deepcopy(head)
        self.requires_grad_(False)
        self.momentum, self.final_momentum, self.schedule = momentum, final_momentum, schedule
        self.blend_weight: Tensor | None = None  # 1 - m on the device, for a captured update

    def momentum_at(self, step: int, total_steps: int) -> float:
        """m after optimizer step ``step`` (0-based) of ``total_steps``."""
        if self.schedule == "constant" or total_steps <= 1:
            return self.momentum
        progress = min(step / (total_steps - 1), 1.0)
        gap = self.final_momentum - self.momentum
        return self.final_momentum - gap * (math.cos(math.pi * progress) + 1) / 2

    def capture_weight(self) -> None:
        """Keep ``1 - m`` in a device tensor from now on (``prepare`` fills it before each
        update), so that a captured update (CUDA graphs) reads each step's momentum
        instead of the one it was captured with."""
        if self.blend_weight is None:
            self.blend_weight = torch.zeros((), device=next(self.parameters()).device)

    def prepare(self, step: int, total_steps: int) -> None:
        """Write ``1 - m`` of optimizer step ``step`` into the device tensor (one launch)."""
        if self.blend_weight is not None:
            self.blend_weight.fill_(1.0 - self.momentum_at(step, total_steps))

    @torch.no_grad()
    def update(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        """Move every teacher parameter towards its online twin (same module structure):
        ``t += (1 - m) (o - t)``, ``m`` of step ``step`` (from ``blend_weight`` once
        ``capture_weight`` made it: the caller then runs ``prepare`` first)."""
        teacher = [*self.encoder.parameters(), *self.head.parameters()]
        online = [o.detach() for o in (*encoder.parameters(), *head.parameters())]
        if len(teacher) != len(online):
            raise RuntimeError("teacher and online networks have different parameter lists")
        if self.blend_weight is None:
            torch._foreach_lerp_(teacher, online, 1.0 - self.momentum_at(step, total_steps))
        else:
            gap = torch._foreach_sub(online, teacher)
            torch._foreach_addcmul_(teacher, [self.blend_weight] * len(teacher), gap)

    @torch.no_grad()
    def forward(self, images: Tensor, mix: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``mix``: embedding mixup ``(weight (N,), partner (N,))`` for encoders that
        mix their input embeddings (see ``Views``)."""
        h = self.encoder(images) if mix is None else self.encoder(images, mix=mix)
        return self.head(h)
