"""Optimizers (LARS, SGD, Adam, AdamW) and the warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from metacontrast.config import ConfigError


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), as SimCLR uses it.

    For each parameter ``p`` with gradient ``g`` in a group with ``lars_adapt``:
    ``trust = eta * ||p|| / (||g|| + wd * ||p||)`` (1 where either norm is 0);
    ``u = trust * (g + wd * p)``; ``buf = momentum * buf + u``; ``p -= lr * buf``.
    Groups with ``lars_adapt=False`` (biases, norms) get ``u = g + wd * p``.

    Every parameter of every group is updated by the same few multi-tensor operations
    (norms of all parameters and gradients at once, the trust ratios as one vector, then
    ``buf *= momentum; buf += trust g; buf += trust wd p; p -= lr buf``), whatever the
    number of parameters: on CUDA each is one kernel per chunk of tensors (the per-tensor
    factors are 0-dim device tensors, which the multi-tensor kernels read on the device).
    ``lr`` may be a 0-dim tensor (CUDA graphs); groups that differ in ``lr`` or
    ``momentum`` are updated group by group.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.001) -> None:
        if lr < 0 or eta < 0 or weight_decay < 0:
            raise ValueError(f"LARS: lr, eta and weight_decay must be >= 0, got {lr}, {eta}, "
                             f"{weight_decay}")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars_adapt": True}
        super().__init__(params, defaults)
        self._layout_key: tuple = ()
        self._layout: tuple[Tensor, Tensor, Tensor] | None = None

    def _constants(self, groups: list[tuple[dict, list[Tensor]]]) -> tuple[Tensor, Tensor, Tensor]:
        """Per parameter (made again only when the parameters with gradients or their
        groups' settings change): weight decay, eta (0 where the group does not adapt) and
        whether it adapts, as device vectors."""
        key = tuple((id(p), g["weight_decay"], g["eta"], g["lars_adapt"]) for g, ps in groups for p in ps)
        if key != self._layout_key or self._layout is None:
            wd, eta, adapt = [], [], []
            for group, ps in groups:
                wd += [float(group["weight_decay"])] * len(ps)
                eta += [float(group["eta"]) if group["lars_adapt"] else 0.0] * len(ps)
                adapt += [bool(group["lars_adapt"])] * len(ps)
            device = groups[0][1][0].device
            self._layout = (torch.tensor(wd, device=device), torch.tensor(eta, device=device),
                            torch.tensor(adapt, device=device))
            self._layout_key = key
        return self._layout

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        groups = [(g, ps) for g, ps in groups if ps]
        if not groups:
            return loss
        params = [p for _, ps in groups for p in ps]
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        wd, eta, adapt = self._constants(groups)
        norms = torch.stack(torch._foreach_norm(params + grads))
        p_norm, g_norm = norms[:len(params)], norms[len(params):]
        ratio = eta * p_norm / torch.addcmul(g_norm, wd, p_norm)
        trust = torch.where(adapt & (torch.minimum(p_norm, g_norm) > 0), ratio, 1.0)
        trust_wd = trust * wd
        first = groups[0][0]
        shared = all(_same(g["lr"], first["lr"]) and g["momentum"] == first["momentum"] for g, _ in groups)
        spans = [(0, len(params), groups[0][0])] if shared else _group_spans(groups)
        for start, stop, group in spans:
            b, p, g = bufs[start:stop], params[start:stop], grads[start:stop]
            torch._foreach_mul_(b, group["momentum"])
            torch._foreach_addcmul_(b, list(trust[start:stop].unbind()), g)
            torch._foreach_addcmul_(b, list(trust_wd[start:stop].unbind()), p)
            lr = group["lr"]
            if isinstance(lr, Tensor):
                torch._foreach_addcmul_(p, [lr] * len(p), b, value=-1)
            else:
                torch._foreach_add_(p, b, alpha=-lr)
        return loss


def _same(a: float | Tensor, b: float | Tensor) -> bool:
    """Equal learning rates, compared without reading a device tensor."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    return a == b


def _group_spans(groups: list[tuple[dict, list[Tensor]]]) -> list[tuple[int, int, dict]]:
    spans, start = [], 0
    for group, ps in groups:
        spans.append((start, start + len(ps), group))
        start += len(ps)
    return spans


def _is_bias_or_norm(name: str, p: Tensor, module_of: dict[str, nn.Module]) -> bool:
    owner = module_of.get(name.rsplit(".", 1)[0] if "." in name else "")
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return p.dim() <= 1 or isinstance(owner, norm_types)


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: weights (decay, LARS adaptation) and biases/norm parameters (neither,
    when ``exclude_bias_and_norm``)."""
    modules = dict(model.named_modules())
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if exclude_bias_and_norm and _is_bias_or_norm(name, p, modules) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_adapt": True}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "lars_adapt": False})
    return groups


def effective_lr(cfg: Any, global_batch: int) -> float:
    return cfg.lr * global_batch / 256 if cfg.scale_lr_by_batch else cfg.lr


def kernel_options(device: torch.device) -> dict[str, bool]:
    """How torch's SGD/Adam/AdamW update the parameters on ``device``: one fused kernel
    on CUDA (its step counters then stay on the device too), multi-tensor ``foreach``
    operations elsewhere."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def build_optimizer(cfg: Any, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` over ``model``'s parameters (LARS: ``LARS``, with
    ``torch._foreach`` operations; the others: ``kernel_options`` of the parameters' device)."""
    lr = effective_lr(cfg, global_batch)
    groups = param_groups(model, cfg.weight_decay, cfg.exclude_bias_and_norm)
    name = str(cfg.name)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.eta)
    for g in groups:
        g.pop("lars_adapt")
    first = next((p for g in groups for p in g["params"]), None)
    kernels = kernel_options(first.device if first is not None else torch.device("cpu"))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, **kernels)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr, betas=tuple(cfg.betas), **kernels)
    raise ConfigError(f"optim.name: unknown optimizer {name!r}; available: adam, adamw, lars, sgd")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0,
                  schedule: str = "cosine") -> float:
    """LR multiplier at ``step``: linear from 1/warmup to 1 over ``warmup_steps``, then
    cosine (or constant) decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step ``LambdaLR`` following ``warmup_cosine``."""
    if cfg.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule: unknown schedule {cfg.schedule!r}; available: "
                          f"constant, cosine")
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    base = optimizer.param_groups[0]["lr"]
    min_ratio = cfg.min_lr / base if base > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup, min_ratio, cfg.schedule))
