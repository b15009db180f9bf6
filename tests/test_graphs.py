"""``trainer.cuda_graphs`` without a GPU: the refusals, and the captured step's structure.

CUDA graphs need a GPU. What a CPU can check: every option that cannot be captured is
refused naming it; a step that makes the host wait is found during the warm-up and
refused naming the place; and the two-graph step (static input buffers, learning rates
and the teacher's momentum held in device tensors, the read between the graphs, skipped
steps) trains exactly as the eager loop does when each "replay" runs the captured
function again (``graphs.RerunCapture``). On a GPU, ``benchmarks/gpu_session.sh`` runs the
real capture.
"""

from __future__ import annotations

import pytest
import torch

from metacontrast import graphs
from metacontrast.builtin.loggers import JsonlLogger
from metacontrast.config import ConfigError, compose_config
from metacontrast.interfaces import RunStart
from metacontrast.metrics import RunLog
from metacontrast.records import Batch
from metacontrast.trainer import setup, train_steps
from metacontrast_kornia import ops

from .conftest import TINY


def test_capture_is_refused_where_it_cannot_work_naming_the_option():
    cuda = torch.device("cuda", 0)
    cases = [
        ((torch.device("cpu"), 1, 1, None), "this run's device is cpu"),
        ((cuda, 2, 1, None), "2 processes"),
        ((cuda, 1, 4, None), "trainer.accumulate=4"),
        ((cuda, 1, 1, torch.float16), "trainer.precision=fp16"),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError, match=f"trainer.cuda_graphs: .*{message}"):
            graphs.check_capturable(*args)
    graphs.check_capturable(cuda, 1, 1, torch.bfloat16)  # a capturable run


def test_setup_refuses_cuda_graphs_on_the_cpu(tmp_path):
    cfg = compose_config([*TINY, "trainer.cuda_graphs=true", "trainer.device=cpu", f"trainer.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="trainer.cuda_graphs: CUDA graphs capture GPU kernels; this run's "
                                          "device is cpu"):
        setup(cfg)




def _train(overrides: list[str], run_dir, graphed: bool, monkeypatch, steps: int = 6):
    # the capture simulated (RerunCapture) on the CPU, bit for bit; a GPU's own is the test below
    cfg = compose_config([*TINY, *overrides, "trainer.device=cpu", f"trainer.max_steps={steps}", "trainer.precision=fp32",
                          "trainer.log_every=1000", "trainer.checkpoint_every=0", f"trainer.run_dir={run_dir}"])
    run = setup(cfg)
    if graphed:  # as on a GPU, with each replay running the captured function again
        run.cfg.trainer.cuda_graphs = True
        monkeypatch.setattr(graphs, "default_capture", lambda run: graphs.RerunCapture())
    losses = []
    run.plugins.hooks.register(type("Watch", (), {"metacontrast_on_step_end": staticmethod(
        graphs_hookimpl(lambda state: losses.append(float(state.terms.total))))})(), "watch")
    run_dir.mkdir(parents=True, exist_ok=True)
    with ops.selection("mask"):
        train_steps(run, RunLog({}, total_steps=steps, initial_step=0, progress=False))
    return run, losses


def graphs_hookimpl(fn):
    from metacontrast import hookimpl

    return hookimpl(specname="metacontrast_on_step_end")(lambda state: fn(state))


# the speedrun calibration's model: two BatchNorm batches, SGD on every parameter, no BN in the
# head, unnormalised pixels
CALIBRATION = ["views=simclr_cifar", "trainer.forward_chunks=2", "optim=sgd", "optim.exclude_bias_and_norm=false",
               "head.batchnorm=false", "data.mean=[0,0,0]", "data.std=[1,1,1]"]


@pytest.mark.parametrize("method", [["views=simclr_cifar"], ["method=byol", "views=simclr_cifar"],
                                    ["method=moco_v2", "views=moco_v2_cifar"], CALIBRATION],
                         ids=["simclr", "byol", "moco_v2", "calibration"])
def test_the_captured_step_trains_exactly_as_the_eager_loop(method, colour_npz, tmp_path, monkeypatch):
    overrides = [*method, "data=npz", f"data.root={colour_npz}"]
    eager, eager_losses = _train(overrides, tmp_path / "eager", False, monkeypatch)
    graphed, graphed_losses = _train(overrides, tmp_path / "graphed", True, monkeypatch)
    assert len(eager_losses) == 6 and graphed_losses == eager_losses
    for (name, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    lr = graphed.optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(eager.optimizer.param_groups[0]["lr"], rel=1e-6)
    if graphed.model.teacher is not None:
        assert graphed.model.teacher.blend_weight is not None


def test_a_step_that_waits_for_the_device_is_refused_naming_the_place(colour_npz, tmp_path, monkeypatch):
    cfg = compose_config([*TINY, "views=simclr_cifar", "data=npz", f"data.root={colour_npz}", "trainer.max_steps=4",
                          f"trainer.run_dir={tmp_path}"])
    run = setup(cfg)
    run.cfg.trainer.cuda_graphs = True
    monkeypatch.setattr(graphs, "default_capture", lambda run: graphs.RerunCapture())
    logger = RunLog({}, total_steps=4, initial_step=0, progress=False)
    with ops.selection("subset"), pytest.raises(ConfigError, match=r"trainer.cuda_graphs: the step makes the host "
                                                                   r"wait for the device at ops.py:\d+"):
        train_steps(run, logger)  # the CPU's own view path finds its rows with nonzero
    assert run.position.step == 2  # the warm-up steps ran, the third was to be captured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_on_a_gpu_the_captured_step_trains_as_the_eager_one(colour_npz, tmp_path):
    """Real capture and replay (``benchmarks/gpu_session.sh`` runs this): deterministic
    kernels, so the replayed steps may differ from the eager ones only by the rounding of
    LARS's device learning rate."""
    losses = {}
    for graphed in (False, True):
        run_dir = tmp_path / ("graphed" if graphed else "eager")
        cfg = compose_config([*TINY, "views=simclr_cifar", "data=npz", f"data.root={colour_npz}", "trainer.device=cuda",
                              "trainer.max_steps=6", "trainer.log_every=1", "trainer.deterministic=true",
                              f"trainer.cuda_graphs={str(graphed).lower()}", f"trainer.run_dir={run_dir}"])
        run = setup(cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        log = RunLog({"jsonl": JsonlLogger(None, None)}, total_steps=6, initial_step=0, progress=False)
        log.start(RunStart(run_dir=run_dir, config={}, step=0, total_steps=6, resumed=False))
        train_steps(run, log)
        log.close("finished")
        import json

        losses[graphed] = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses[True]) == 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_a_batch_of_another_shape_is_refused_by_the_captured_step(colour_npz, tmp_path):
    cfg = compose_config([*TINY, "views=simclr_cifar", "data=npz", f"data.root={colour_npz}",
                          "trainer.device=cpu", f"trainer.run_dir={tmp_path}"])  # the capture simulated
    run = setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    graphed = graphs.GraphedStep(run, step_fn, capture=graphs.RerunCapture())
    images = run.data.train_images
    with ops.selection("mask"):
        graphed._capture(Batch(images=images[:16], index=torch.arange(16)))
        graphed.step(Batch(images=images[16:32], index=torch.arange(16, 32)))  # same shape: replayed
        with pytest.raises(ConfigError, match=r"trainer.cuda_graphs: a batch of shape \(8, 3, 32, 32\), the "
                                              r"captured step takes \(16, 3, 32, 32\)"):
            graphed.step(Batch(images=images[:8], index=torch.arange(8)))
