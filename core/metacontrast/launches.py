"""Counting the device operations a piece of code dispatches, on any device.

On a GPU at small image sizes a train step is bound by kernel launches, not arithmetic:
each operation the step dispatches costs the host a few microseconds to launch, whatever
its size. ``DeviceOps`` counts, at the dispatcher, the operations that would launch
device work (a kernel, a copy, a read to the host), so the figure can be measured and
guarded on a CPU-only machine.

Counted: every ATen operation that reaches a backend kernel. Not counted: views and
other metadata-only operations (``view``, ``expand``, ``transpose``, ``slice``,
``detach``, ...: ``OpOverload.is_view`` and the aliases below), bare allocations
(``empty``, ``empty_strided``), which launch nothing, and the host-side 0-dim tensors
that wrap a Python number (``scalar_tensor`` on the CPU: ``torch.where(mask, 1.0, x)``
on a GPU passes the 1.0 to the kernel, it launches nothing of its own). A multi-tensor ``_foreach_*``
operation counts once (on CUDA it launches one kernel per chunk of tensors). Composite
operations are seen as the operations they decompose into, as the device runs them.
"""

from __future__ import annotations

import collections
import contextlib
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Operations that allocate or relabel memory without launching device work.
NO_LAUNCH = {
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
    aten.new_empty.default, aten.new_empty_strided.default, aten._unsafe_view.default,
    aten._reshape_alias.default, aten.lift_fresh.default, aten.set_.source_Storage_storage_offset,
    aten.resize_.default, aten.detach.default, aten.alias.default,
}

_TORCH_DIR = Path(torch.__file__).resolve().parent


def launches(func: Any, kwargs: dict | None = None) -> bool:
    """Whether dispatching ``func`` (an ``OpOverload``) launches device work."""
    if func is aten.scalar_tensor.default:
        device = (kwargs or {}).get("device")
        return device is not None and torch.device(device).type != "cpu"
    return not (func in NO_LAUNCH or getattr(func, "is_view", False))


def _caller() -> str:
    """``file.py`` of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if _TORCH_DIR not in path.parents and path != Path(__file__).resolve():
            return path.name
    return "?"


class DeviceOps(TorchDispatchMode):
    """Context manager counting dispatched device operations.

    ``total``: the count; ``by_op``: ``Counter`` of operation names; ``by_phase``: of the
    phase named by the innermost ``in_phase`` block (``""`` outside any); with
    ``where=True`` also ``by_file``: ``Counter`` of the innermost calling file outside
    torch (slower: it walks the Python stack at every operation).

    >>> with DeviceOps() as ops:
    ...     _ = (torch.ones(3) * 2).view(3, 1)
    >>> ops.total
    2
    """

    def __init__(self, where: bool = False) -> None:
        super().__init__()
        self.where = where
        self.phase = ""
        self.by_op: collections.Counter[str] = collections.Counter()
        self.by_file: collections.Counter[str] = collections.Counter()
        self.by_phase: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        """Count the operations dispatched inside the block under ``by_phase[name]``."""
        previous, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = previous

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if launches(func, kwargs):
            self.by_op[str(func.overloadpacket.__name__)] += 1
            self.by_phase[self.phase] += 1
            if self.where:
                self.by_file[_caller()] += 1
        return func(*args, **(kwargs or {}))


@attrs.frozen
class EncoderCall:
    """One call a step made to an encoder: the module, its input's shape and dtype, and
    whether gradients were on."""

    module: nn.Module
    shape: tuple[int, ...]
    dtype: torch.dtype
    grad: bool


@attrs.frozen
class StepLaunches:
    """The device operations of one optimizer step.

    ``total``: all of them. ``network``: those of the bare encoder passes the step made
    (forward, and backward where it had gradients), replayed alone. ``outside``:
    ``total - network``, what the framework adds around the network (views, head, solver,
    losses, guards, optimizer, scheduler, EMA update, memory write). ``by_phase``: the
    step's operations by part (``views``, ``network forward``, ``forward`` for the rest of
    the forward, ``backward``, ``guards``, ``optimizer``, ``teacher``, ``memory``).
    ``by_op``: by operation name; ``by_file``: by calling file (when asked)."""

    total: int
    network: int
    network_forward: int
    by_phase: dict[str, int]
    by_op: dict[str, int]
    by_file: dict[str, int]

    @property
    def outside(self) -> int:
        return self.total - self.network


@contextlib.contextmanager
def _phase_hooks(ops: DeviceOps, modules: dict[str, list[nn.Module]]) -> Iterator[None]:
    """While active, calls of the ``modules`` count under their phase name."""
    stack: list[str] = []

    def enter(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            stack.append(ops.phase)
            ops.phase = name
        return hook

    def leave(*_: Any) -> None:
        ops.phase = stack.pop()

    handles = []
    for name, mods in modules.items():
        for m in mods:
            handles += [m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _encoders(run: Any) -> list[nn.Module]:
    model = run.model
    encoders = [model.encoder]
    if getattr(model, "teacher", None) is not None:
        encoders.append(model.teacher.encoder)
    return encoders


@contextlib.contextmanager
def recording_encoder_calls(run: Any) -> Iterator[list[EncoderCall]]:
    """While active, every call to the online and teacher encoders of ``run`` is appended
    to the list it yields."""
    calls: list[EncoderCall] = []

    def record(module: nn.Module, inputs: tuple) -> None:
        x = inputs[0]
        calls.append(EncoderCall(module, tuple(x.shape), x.dtype, torch.is_grad_enabled()))

    handles = [m.register_forward_pre_hook(record) for m in _encoders(run)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


class BarePasses:
    """The encoder ``calls`` of a step replayed on the bare modules: random inputs of the
    same shapes, dtype and memory layout, one autocast region (as the step's forward:
    weights cast once), forward only where the step had no gradient, then a backward from
    gradients of ones through the outputs that had. ``wrap`` replaces each module (e.g.
    ``torch.compile``). Calling it runs forward and backward and releases the gradients."""

    def __init__(self, run: Any, calls: list[EncoderCall],
                 wrap: Callable[[nn.Module], Callable[[Tensor], Tensor]] | None = None) -> None:
        self.run, self.calls = run, calls
        channels_last = getattr(run.model, "channels_last", False)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.inputs = []
        for call in calls:
            x = torch.randn(call.shape, device=run.device).to(call.dtype)
            self.inputs.append(x.contiguous(memory_format=layout) if x.dim() == 4 else x)
        self.modules = {id(c.module): (wrap or (lambda m: m))(c.module) for c in calls}
        self.grads: list[Tensor] | None = None

    def forward(self) -> list[Tensor]:
        outputs = []
        with self.run.autocast():
            for call, x in zip(self.calls, self.inputs, strict=True):
                with torch.set_grad_enabled(call.grad):
                    h = self.modules[id(call.module)](x)
                if call.grad:
                    outputs.append(h)
        return outputs

    def backward(self, outputs: list[Tensor]) -> None:
        if self.grads is None:  # made once, outside whatever is counted or timed
            self.grads = [torch.ones_like(h) for h in outputs]
        if outputs:
            torch.autograd.backward(outputs, self.grads)
        self.run.model.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        self.backward(self.forward())


def count_step(run: Any, step_fn: Any, batch: Any, *, where: bool = False) -> StepLaunches:
    """Count one optimizer step of ``run`` (a ``trainer.Run``) on ``batch``, as the
    trainer takes it, then the bare encoder passes it made (``BarePasses``). Run a warm-up
    step first: lazily made state (optimizer buffers, cached constants) would otherwise
    count."""
    from metacontrast import trainer

    generators = [run.components.view_generator, *run.components.view_transforms]
    with recording_encoder_calls(run) as calls, DeviceOps(where=where) as step_ops, _phase_hooks(
            step_ops, {"views": generators, "network forward": _encoders(run)}):
        if not trainer.take_step(run, step_fn, batch, phase=step_ops.in_phase)[1]:
            raise RuntimeError("count_step: the counted step was skipped (non-finite values)")
    forward, total = bare_network_ops(run, calls)
    return StepLaunches(total=step_ops.total, network=total, network_forward=forward,
                        by_phase=dict(step_ops.by_phase), by_op=dict(step_ops.by_op),
                        by_file=dict(step_ops.by_file))


def bare_network_ops(run: Any, calls: list[EncoderCall]) -> tuple[int, int]:
    """``(forward, forward + backward)`` operations of the encoder ``calls`` replayed on
    the bare modules."""
    passes = BarePasses(run, calls)
    passes()  # the output gradients are made here, not counted
    with DeviceOps() as ops:
        outputs = passes.forward()
        n_forward = ops.total
        passes.backward(outputs)
    return n_forward, ops.total
