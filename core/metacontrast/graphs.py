"""``trainer.cuda_graphs``: the whole train step captured as CUDA graphs and replayed.

A captured step launches its hundreds of kernels with one call, so the host's launch
overhead vanishes from the step. The step is captured as two graphs, with the trainer's
one read of the device between them, so that nothing about a step changes:

1. ``forward``: views, episode, encoder, head, solver, losses, backward, and the health
   evidence (finite-ness of the loss totals and gradient norms) of a static batch;
2. the host reads the evidence (one read per step, as without graphs) and applies
   ``trainer.nonfinite`` before anything is updated;
3. ``update``: clipping, the optimizer (its learning rates are device tensors that the
   scheduler fills), the EMA teacher (its ``1 - m`` likewise) and the memory write.

Each step copies its batch into the static input, replays ``forward``, reads, replays
``update`` (or skips), then advances the schedule. The first ``trainer.cuda_graph_warmup``
optimizer steps run eagerly (on a side stream, as CUDA's capture asks): optimizer state,
cuDNN's algorithms and cached constants are made there, and the last of them runs under
``HostReads``: a step that makes the host wait for the device cannot be captured, and the
run stops naming where. The augmentation generator is registered with the graph, so every
replay draws fresh views and resume stays exact.

What cannot be captured is refused when the run is built, naming the option:
``check_capturable``. Python code inside the step runs once, at capture: a component
whose behaviour changes from step to step through Python values, not tensors, is
replayed as it was captured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import torch

from metacontrast.config import ConfigError
from metacontrast.guards import StepHealth
from metacontrast.host_reads import HostReads
from metacontrast.records import Batch, LossTerms


def check_capturable(device: torch.device, world_size: int, accumulate: int, precision: torch.dtype | None,
                     *, scaler: bool = False) -> None:
    """Refuse ``trainer.cuda_graphs=true`` where the step cannot be captured, naming the
    option at fault."""
    if device.type != "cuda":
        raise ConfigError(f"trainer.cuda_graphs: CUDA graphs capture GPU kernels; this run's device is "
                          f"{device.type} (trainer.device). Use trainer.cuda_graphs=false on a machine "
                          f"without a GPU")
    if world_size > 1:
        raise ConfigError(f"trainer.cuda_graphs: {world_size} processes; the captured step has no "
                          f"all-reduce of its gradients. Run one process, or trainer.cuda_graphs=false")
    if accumulate > 1:
        raise ConfigError(f"trainer.cuda_graphs: trainer.accumulate={accumulate}; a captured step takes "
                          f"one batch. Use a larger trainer.batch_size or trainer.accumulate=1")
    if precision == torch.float16 or scaler:
        raise ConfigError("trainer.cuda_graphs: trainer.precision=fp16 needs a gradient scaler, whose "
                          "checks read the device; use trainer.precision=bf16")


class Capture(Protocol):
    """How graphs are made and replayed: ``capture(fn)`` records ``fn`` (without running
    it) and returns a handle; ``replay(handle)`` runs it and returns ``fn``'s outputs;
    ``fresh_gradients(model)`` before each forward replay makes its backward write the
    gradients afresh, as the captured one does."""

    def capture(self, fn: Callable[[], Any]) -> Any: ...

    def replay(self, handle: Any) -> Any: ...

    def warmup(self) -> contextlib.AbstractContextManager: ...

    def fresh_gradients(self, model: torch.nn.Module) -> None: ...


class CudaCapture:
    """CUDA graphs sharing one memory pool, the augmentation ``generator`` registered
    with each (every replay advances it as an eager step would)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.pool: Any = None
        self.side = torch.cuda.Stream()

    def capture(self, fn: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = fn()
        if self.pool is None:
            self.pool = graph.pool()
        return graph, outputs

    def replay(self, handle: tuple[torch.cuda.CUDAGraph, Any]) -> Any:
        graph, outputs = handle
        graph.replay()
        return outputs

    def fresh_gradients(self, model: torch.nn.Module) -> None:
        """Nothing to do: the captured backward writes the gradient buffers (it was
        captured with none allocated) rather than adding to them."""

    @contextlib.contextmanager
    def warmup(self) -> Any:
        """Eager steps before capture run on a side stream (CUDA's capture asks it)."""
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            yield
        torch.cuda.current_stream().wait_stream(self.side)


class RerunCapture:
    """A stand-in for machines without a GPU: "capture" keeps the function and each
    replay runs it again. It checks the captured step's structure (static buffers,
    learning rates and momentum in device tensors, the two-graph flow) on the CPU; it
    cannot tell a value baked into a graph from one read at each replay."""

    def capture(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        return fn

    def replay(self, handle: Callable[[], Any]) -> Any:
        return handle()

    def warmup(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def fresh_gradients(self, model: torch.nn.Module) -> None:
        """An eager backward adds to existing gradients: release them first."""
        model.zero_grad(set_to_none=True)


def default_capture(run: Any) -> Capture:
    return CudaCapture(run.generator)


class GraphedStep:
    """The train step of ``run`` as two captured graphs (see the module). ``ready``: the
    graphs exist; ``eager_step_done(batch, healthy)`` counts the warm-up and captures after
    the last one; ``step(batch)`` replays: ``(terms, health, healthy)``."""

    def __init__(self, run: Any, step_fn: Any, capture: Capture | None = None) -> None:
        self.run, self.step_fn = run, step_fn
        self.capture_with = capture or default_capture(run)
        self.warmup_steps = int(run.cfg.trainer.cuda_graph_warmup)
        self.eager_steps = 0
        self.forward: Any = None
        self.update: Any = None
        self.images: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self._reads: HostReads | None = None  # the last warm-up step's

    @property
    def ready(self) -> bool:
        return self.forward is not None

    def warming_up(self) -> contextlib.AbstractContextManager:
        """The context of an eager warm-up step; the last one is checked for host reads."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.capture_with.warmup())
        if self.eager_steps == self.warmup_steps - 1:
            self._reads = stack.enter_context(HostReads())
        return stack

    def eager_step_done(self, batch: Batch) -> None:
        self.eager_steps += 1
        reads = self._reads
        if reads is not None and reads.total:
            places = ", ".join(f"{where} ({n})" for where, n in reads.reads.most_common(5))
            raise ConfigError(f"trainer.cuda_graphs: the step makes the host wait for the device at "
                              f"{places}; such a step cannot be captured. Use trainer.cuda_graphs=false")
        if self.eager_steps >= self.warmup_steps:
            self._capture(batch)

    def _capture(self, batch: Batch) -> None:
        run, step_fn = self.run, self.step_fn
        self.images, self.index = batch.images.clone(), batch.index.clone()
        static = Batch(images=self.images, index=self.index)
        for group in run.optimizer.param_groups:  # the scheduler fills device learning rates in place
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=run.device)
            if "capturable" in group:  # torch's Adam checks it under capture (fused: steps on the device)
                group["capturable"] = True
        if run.model.teacher is not None:
            run.model.teacher.capture_weight()
        run.model.zero_grad(set_to_none=True)  # the backward allocates the gradients in the graph

        def forward() -> tuple[LossTerms, StepHealth, torch.Tensor]:
            from metacontrast.loop import forward_backward

            health = StepHealth()
            terms = forward_backward(run, step_fn, static, health)
            health.add_gradients(run.model)
            return terms, health, health.finite()

        def update() -> None:
            from metacontrast.loop import optimizer_step

            optimizer_step(run, release_grads=False, schedule=False)
            step_fn.after_optimizer_step(run.position.step, run.schedule_steps)

        self.forward = self.capture_with.capture(forward)
        self.update = self.capture_with.capture(update)

    def step(self, batch: Batch) -> tuple[LossTerms, StepHealth, bool]:
        """One optimizer step on ``batch`` by replaying the graphs."""
        from metacontrast.loop import settle_step

        run = self.run
        assert self.images is not None and self.index is not None
        if batch.images.shape != self.images.shape:
            raise ConfigError(f"trainer.cuda_graphs: a batch of shape {tuple(batch.images.shape)}, the "
                              f"captured step takes {tuple(self.images.shape)}; batches must keep their "
                              f"shape (data.bad_files=skip can shrink one: use strict, or "
                              f"trainer.cuda_graphs=false)")
        self.images.copy_(batch.images, non_blocking=True)
        self.index.copy_(batch.index, non_blocking=True)
        self.capture_with.fresh_gradients(run.model)
        terms, health, finite = self.capture_with.replay(self.forward)

        def update() -> None:
            if run.model.teacher is not None:
                run.model.teacher.prepare(run.position.step, run.schedule_steps)
            self.capture_with.replay(self.update)
            run.scheduler.step()

        return terms, health, settle_step(run, health, finite, update, release_grads=False)
