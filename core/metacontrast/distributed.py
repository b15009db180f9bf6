"""Everything that touches ``torch.distributed`` lives here (and nowhere else).

One code path serves a single process, gloo processes on CPU and NCCL on GPUs under
``torchrun``: with no process group every collective below is the identity.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class WorldInfo:
    """Position of this process: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str, timeout_s: float = 1800.0) -> WorldInfo:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); a plain process is
    rank 0 of 1. gloo on CPU, NCCL on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return WorldInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, store=_attempt_store(rank, world_size, timeout),
                                rank=rank, world_size=world_size, timeout=timeout)
    return WorldInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def _attempt_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store, with keys private to this restart attempt.

    After a worker dies, ``torchrun --max-restarts`` starts every worker again against
    the same TCP store its agent hosts. The keys the previous attempt's process group
    wrote (each rank's gloo address) are still there, and the new group would read them
    and connect to dead ports. Prefixing every key with ``TORCHELASTIC_RESTART_COUNT``
    gives each attempt a clean namespace. Without an agent store (plain
    ``MASTER_ADDR``/``MASTER_PORT``), rank 0 hosts the store as ``env://`` would."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world_size=world_size, is_master=not agent_hosts and rank == 0,
                          timeout=timeout, multi_tenant=not agent_hosts)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"metacontrast/attempt-{attempt}", store)


def current() -> WorldInfo:
    """The world as the initialised process group sees it (rank 0 of 1 if none)."""
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                         local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return WorldInfo()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient of the gathered tensor and
    hands each rank the slice of its own input."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        ctx.rank, ctx.size = dist.get_rank(), t.shape[0]
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of each rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t (B, ...)`` from all ranks along dim 0 -> ``(world * B, ...)``,
    rank-major; every rank must give the same B. Gradients flow back to every rank's own
    slice (the backward sums the contributions of all ranks' losses)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    return _GatherWithGrad.apply(t)


@torch.no_grad()
def gather_no_grad(t: Tensor) -> Tensor:
    """Concatenate ``t (B, ...)`` from all ranks (no gradient), rank-major."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def shuffled_forward(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn(x)`` for this rank's ``x (B, ...)``, computed on a batch shuffled across ranks.

    All ranks' inputs are gathered, permuted by one random permutation (drawn on rank 0
    from torch's global generator and broadcast), each rank runs ``fn`` on its share, and
    the outputs return to the rank and row they came from (MoCo's shuffling BN: batch
    statistics in ``fn`` mix samples of different ranks). Without a process group:
    ``fn(x)``. Every rank must give the same B."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn(x)
    world, rank, b = dist.get_world_size(), dist.get_rank(), x.shape[0]
    everything = gather_no_grad(x)
    perm = torch.randperm(world * b).to(x.device) if rank == 0 else torch.empty(world * b, dtype=torch.long,
                                                                                 device=x.device)
    dist.broadcast(perm, src=0)
    mine = perm[rank * b:(rank + 1) * b]
    out = gather_no_grad(fn(everything[mine]))  # row j of out is fn of input row perm[j]
    restored = torch.empty_like(out)
    restored[perm] = out
    return restored[rank * b:(rank + 1) * b]


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks (no gradient); identity without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


_control: dict[int, Any] = {}


def _control_group() -> Any:
    """A gloo group over the same ranks for host-side flags, so that agreeing on a Python
    value never waits for the device (``None``: the default group, when it is gloo)."""
    if dist.get_backend() == "gloo":
        return None
    key = id(dist.group.WORLD)
    if key not in _control:
        _control.clear()
        _control[key] = dist.new_group(backend="gloo")
    return _control[key]


def max_over_ranks(value: int) -> int:
    """The largest host-side ``value`` over ranks (``value`` itself without a group),
    through a CPU (gloo) all-reduce: no device synchronisation."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group())
    return int(t.item())


def any_rank(flag: bool) -> bool:
    """Whether host-side ``flag`` is true on at least one rank (see ``max_over_ranks``)."""
    return bool(max_over_ranks(1 if flag else 0))


def max_over_ranks_tensor(t: Tensor) -> Tensor:
    """Element-wise maximum of ``t`` over ranks (a copy; ``t`` itself without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from rank ``src`` to all ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list[object]:
    """The list of ``obj`` from every rank, in rank order (``[obj]`` without a group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the global batch, on any device and backend.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this one uses a differentiable
    all-reduce of the per-channel sum and sum of squares, so
    gloo on CPU gets the same statistics as one process on the whole batch. Input
    ``(N, C, ...)``.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...), got {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training or not (dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        shape = [1, c] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm by a cross-rank one: torch's SyncBatchNorm on CUDA,
    ``GlobalBatchNorm`` elsewhere. Parameters and buffers are kept."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            # a frozen module (an EMA teacher) stays frozen: DDP would wait for its gradients
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            out.running_mean.copy_(module.running_mean)
            out.running_var.copy_(module.running_var)
            out.num_batches_tracked.copy_(module.num_batches_tracked)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def wrap_ddp(model: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    """``DistributedDataParallel`` when a process group is up, the model itself otherwise."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused)


def run_on_main_first(fn: Callable[[], object]) -> object:
    """Run ``fn`` on rank 0, then on the others (e.g. to unpack a dataset once)."""
    info = current()
    if info.is_main:
        out = fn()
        barrier()
        return out
    barrier()
    return fn()
