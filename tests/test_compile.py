"""``trainer.compile``: every method's first two steps compiled and eager, from one seed.

``step`` compiles the view generation (after the draw) and the model's forward (encoder,
head, solver, losses) into one graph each, without graph breaks; MetAug's second-order
step keeps its model eager (``torch.compile``'s autograd cannot differentiate twice). The
eager reference runs the same fused view path an accelerator runs (``ops.selection
("mask")``), so the two agree to float rounding: views and loss terms within 1e-5
(absolute and relative) with the ``aot_eager`` backend, which traces and functionalises
the step as inductor does and runs the traced operations; 1e-4 with ``inductor``, whose
fused kernels round differently (one method, for its compile time).
"""

from __future__ import annotations

import pytest
import torch

from metacontrast import compiling
from metacontrast.config import ConfigError, compose_config
from metacontrast.records import Batch
from metacontrast.trainer import setup, take_step
from metacontrast_kornia import ops

from .conftest import METHODS_ON_COLOUR, TINY

BASE = [o for o in TINY if not o.startswith("eval.")]
METHODS = METHODS_ON_COLOUR


def two_steps(overrides: list[str], tmp_path, compile: str = "off", backend: str = "aot_eager"):
    """Views and loss terms of the first two steps, and the compile report."""
    compiling.reset()
    cfg = compose_config([*BASE, *overrides, "eval=[knn]", "eval.knn.k=5", "trainer.device=cpu", "trainer.precision=fp32",
                          f"trainer.compile={compile}", f"trainer.compile_backend={backend}",
                          f"trainer.run_dir={tmp_path}"])
    run = setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    views = []
    run.components.view_generator.register_forward_hook(
        lambda module, args, out: views.append([v.detach().clone() for v in out.images]))
    terms = []
    b = int(cfg.trainer.batch_size)
    for step in range(2):
        batch = Batch(images=run.data.train_images[step * b:(step + 1) * b], index=torch.arange(b) + step * b)
        step_terms, updated = take_step(run, step_fn, batch)
        assert updated
        terms.append({k: v.detach() for k, v in step_terms.terms.items()})
        run.position.step += 1
        if run.compile_watch is not None:
            run.compile_watch.first_step_done()
    return views, terms, (run.compile_watch.report() if run.compile_watch else None)


def assert_same_steps(eager, compiled, tolerance: float) -> None:
    (views_e, terms_e, _), (views_c, terms_c, _) = eager, compiled
    for step, (ve, vc) in enumerate(zip(views_e, views_c, strict=True)):
        for v, (a, b) in enumerate(zip(ve, vc, strict=True)):
            torch.testing.assert_close(b, a, rtol=tolerance, atol=tolerance,
                                       msg=lambda m, s=step, v=v: f"step {s} view {v}: {m}")
    for step, (te, tc) in enumerate(zip(terms_e, terms_c, strict=True)):
        assert te.keys() == tc.keys()
        for name in te:
            torch.testing.assert_close(tc[name], te[name], rtol=tolerance, atol=tolerance,
                                       msg=lambda m, s=step, n=name: f"step {s} term {n}: {m}")


@pytest.mark.parametrize("method", list(METHODS))
def test_a_compiled_step_makes_the_views_and_losses_of_the_eager_step(method, colour_npz, tmp_path):
    overrides = [*METHODS[method], "data=npz", f"data.root={colour_npz}"]
    with ops.selection("mask"):
        eager = two_steps(overrides, tmp_path / "eager")
    compiled = two_steps(overrides, tmp_path / "compiled", compile="step")
    assert_same_steps(eager, compiled, 1e-5)
    report = compiled[2]
    assert report.graph_breaks == {} and report.recompiles == 0, report.summary()
    if method == "metaug":  # the views compiled, the model eager
        assert report.graphs == 1 and "differentiates twice" in report.eager[0]
    else:  # the views and the model's forward, one graph each
        assert report.graphs == 2 and report.eager == []


def test_inductor_compiles_the_simclr_step_to_the_same_values(colour_npz, tmp_path):
    overrides = [*METHODS["simclr"], "data=npz", f"data.root={colour_npz}"]
    with ops.selection("mask"):
        eager = two_steps(overrides, tmp_path / "eager")
    compiled = two_steps(overrides, tmp_path / "compiled", compile="step", backend="inductor")
    assert_same_steps(eager, compiled, 1e-4)
    assert compiled[2].graph_breaks == {} and compiled[2].graphs == 2


def test_compile_encoder_compiles_only_the_encoder(colour_npz, tmp_path):
    overrides = [*METHODS["simclr"], "data=npz", f"data.root={colour_npz}"]
    eager = two_steps(overrides, tmp_path / "eager")  # the CPU's own view path on both sides
    compiled = two_steps(overrides, tmp_path / "compiled", compile="encoder")
    assert_same_steps(eager, compiled, 1e-5)
    assert compiled[2].graphs == 1


def test_compile_modes_are_checked_and_earlier_booleans_still_mean_something():
    assert compiling.compile_mode(True) == "encoder" and compiling.compile_mode("false") == "off"
    assert compiling.compile_mode("step") == "step"
    with pytest.raises(ConfigError, match=r"trainer.compile: unknown mode 'graph'; available: off, encoder, step"):
        compiling.compile_mode("graph")
    with pytest.raises(ConfigError, match=r"trainer.compile_backend: unknown backend 'indcutor'; available: .*inductor"):
        compiling.compile_parts("step", torch.nn.Linear(2, 2), torch.nn.Identity(), [], backend="indcutor")


def _graphs_of_the_compiled_step(method: str, colour_npz: str, tmp_path) -> list[torch.fx.GraphModule]:
    graphs: list[torch.fx.GraphModule] = []
    name = "metacontrast_test_recording"
    if name not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(name=name)(lambda gm, inputs: (_RECORDED.append(gm), gm.forward)[1])
    _RECORDED.clear()
    two_steps([*METHODS[method], "data=npz", f"data.root={colour_npz}"], tmp_path, compile="step", backend=name)
    graphs.extend(_RECORDED)
    return graphs


_RECORDED: list[torch.fx.GraphModule] = []


FACTORIES = (torch.tensor, torch.as_tensor, torch.arange, torch.zeros, torch.ones, torch.full, torch.empty,
             torch.eye, torch.linspace, torch.randperm)


def _made_on_the_host(node: torch.fx.Node) -> bool:
    """A tensor of Python numbers, or one made by a factory without a device (so on the
    host, then moved): on a GPU, a copy from the host at every run of the graph."""
    if node.op != "call_function" or node.target not in FACTORIES:
        return False
    return node.target in (torch.tensor, torch.as_tensor) or "device" not in node.kwargs


@pytest.mark.parametrize("method", ["simclr", "clsa_multi", "protonet"])
def test_a_compiled_step_builds_no_tensor_on_the_host(method, colour_npz, tmp_path):
    """Constants (colour weights, canvas masks, normalisation, episode indices) are
    written on the device (``device_tensor``) and cached: a tensor of Python numbers, or one
    made on the host, traced into the graph would be copied to the device at every step,
    which a CUDA graph cannot capture."""
    graphs = _graphs_of_the_compiled_step(method, colour_npz, tmp_path)
    assert len(graphs) == 2  # the views and the model's forward
    built = [f"{node.name}: {node.meta.get('stack_trace', '').strip().splitlines()[-2:-1]}"
             for gm in graphs for node in gm.graph.nodes if _made_on_the_host(node)]
    assert built == []
