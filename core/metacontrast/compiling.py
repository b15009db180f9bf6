"""``trainer.compile``: which parts of the step ``torch.compile`` compiles, and what it did.

- ``off``: nothing (eager).
- ``encoder``: the encoder's forward (and so its backward).
- ``step``: the view generation, the view transforms and the model's whole forward
  (encoder, head, solver, losses: one graph), and so their backward. The optimizer,
  guards and boundary hooks stay eager: they are a handful of multi-tensor operations.

The step's code is written to compile without graph breaks (``fullgraph`` holds for the
built-in components, ``tests/test_compile.py``); a component of a plugin that breaks
the graph still runs, in several graphs, and the report names the reasons. The report
(``CompileReport``: graphs, graph breaks with their reasons, frames compiled, recompiles
after the first step) goes into ``results.json`` and, when something broke or recompiled,
to the terminal.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Any

import torch
from torch import nn

from metacontrast.config import ConfigError

COMPILE_MODES = ("off", "encoder", "step")
LEGACY = {"true": "encoder", "false": "off"}


def compile_mode(value: Any) -> str:
    """``trainer.compile`` as one of ``COMPILE_MODES`` (``true``/``false`` of earlier
    configs mean ``encoder``/``off``)."""
    mode = str(value).lower()
    mode = LEGACY.get(mode, mode)
    if mode not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile: unknown mode {value!r}; available: {', '.join(COMPILE_MODES)}")
    return mode


def compile_parts(mode: str, model: nn.Module, view_generator: nn.Module, view_transforms: list[nn.Module],
                  backend: str = "inductor") -> list[str]:
    """Compile, in place, the parts ``mode`` names (see the module). Returns why a part
    stayed eager: under ``step``, a model whose loss differentiates twice (MetAug's
    second-order step) keeps its forward eager, and so does its encoder."""
    if mode == "off":
        return []
    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ConfigError(f"trainer.compile_backend: unknown backend {backend!r}; available: "
                          f"{', '.join(b for b in backends if 'TESTING' not in b)}")
    warnings.filterwarnings("ignore", message=".*functools.lru_cache.*-wrapped function")  # pure, cached
    options = {"backend": backend, "dynamic": False}
    losses = getattr(model, "losses", {})
    twice = [name for name, loss in losses.items() if getattr(loss, "differentiates_twice", False)]
    eager = [f"the model: loss {', '.join(twice)} differentiates twice (torch.compile's autograd cannot)"] \
        if twice else []
    if mode == "encoder":
        if not twice:
            model.encoder.compile(**options)
        return eager
    for generator in (view_generator, *view_transforms):
        generator.compile(**options)
    if not twice:
        model.compile(**options)
    return eager


@dataclasses.dataclass
class CompileReport:
    """What ``torch.compile`` did in this process: ``graphs`` (unique graphs compiled),
    ``graph_breaks`` (reason -> count), ``frames`` (Python frames compiled), and
    ``recompiles``: frames compiled after the first optimizer step (a shape, dtype or
    Python value the guards saw change; evaluation recompiles the encoder for its own
    batch size under ``encoder``); ``eager``: the parts left eager, and why."""

    mode: str
    backend: str
    eager: list[str] = dataclasses.field(default_factory=list)
    graphs: int = 0
    frames: int = 0
    recompiles: int = 0
    graph_breaks: dict[str, int] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for the terminal."""
        breaks = sum(self.graph_breaks.values())
        line = (f"torch.compile ({self.mode}, {self.backend}): {self.graphs} graph(s), {breaks} graph "
                f"break(s), {self.recompiles} recompile(s) after the first step")
        if breaks:
            reasons = sorted(self.graph_breaks.items(), key=lambda kv: -kv[1])[:3]
            line += "; breaks: " + "; ".join(f"{r} ({n})" for r, n in reasons)
        if self.eager:
            line += "; eager: " + "; ".join(self.eager)
        return line


class CompileWatch:
    """Reads dynamo's counters: ``first_step_done()`` after the first optimizer step,
    ``report()`` at the end."""

    def __init__(self, mode: str, backend: str, eager: list[str] | None = None) -> None:
        self.mode, self.backend, self.eager = mode, backend, list(eager or [])
        self.start = self._counters()
        self.after_first: collections.Counter[str] | None = None

    @staticmethod
    def _counters() -> collections.Counter[str]:
        from torch._dynamo.utils import counters

        return collections.Counter({"frames": counters["frames"]["total"],
                                    "graphs": counters["stats"]["unique_graphs"]})

    @staticmethod
    def _breaks() -> dict[str, int]:
        from torch._dynamo.utils import counters

        return {str(reason).splitlines()[0][:200]: int(n) for reason, n in counters["graph_break"].items()}

    def first_step_done(self) -> None:
        if self.after_first is None:
            self.after_first = self._counters()

    def report(self) -> CompileReport:
        now = self._counters()
        first = self.after_first if self.after_first is not None else now
        start = self.start
        return CompileReport(mode=self.mode, backend=self.backend, eager=self.eager,
                             graphs=now["graphs"] - start["graphs"],
                             frames=now["frames"] - start["frames"],
                             recompiles=now["frames"] - first["frames"], graph_breaks=self._breaks())


def reset() -> None:
    """Forget every compiled graph and counter (between runs in one process)."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
