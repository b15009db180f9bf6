"""The train step never makes the host wait for the device.

``HostReads`` finds, on the CPU, the operations that stall a GPU's host (``.item()``,
``nonzero``, boolean masks, tensors built from Python data). Every method's step, after a
warm-up step, runs with none of them when the view generators select rows the way they do
on an accelerator (``ops.selection("mask")``); the trainer's own single read of the step
flags is a ``tolist``, which the dispatcher does not see on the CPU (``test_trainer``
counts it).
"""

from __future__ import annotations

import pytest
import torch

from metacontrast.config import compose_config
from metacontrast.host_reads import HostReads
from metacontrast.metrics import RunLog
from metacontrast.trainer import setup, train_steps
from metacontrast_kornia import ops

from .conftest import TINY


def test_host_reads_names_each_kind_of_wait_and_ignores_queued_work():
    x = torch.arange(6.0)
    with HostReads() as queued:
        y = torch.where(x > 2, x, 0.0) @ x
        _ = x[2:] * y
        _ = x.index_select(0, torch.arange(3))
    assert queued.total == 0, queued.reads
    cases = {
        "nonzero": lambda: (x > 2).nonzero(),
        "boolean-mask index": lambda: x[x > 2],
        "read to host": lambda: x.sum().item(),
        "tensor from Python data": lambda: torch.tensor([1.0, 2.0]),
        "linalg error check": lambda: torch.linalg.cholesky(torch.eye(2)),
        "unique": lambda: x.unique(),
        "masked_select": lambda: x.masked_select(x > 1),
    }
    for what, op in cases.items():
        with HostReads() as reads:
            op()
        assert [key.split(" (", 1)[1] for key in reads.reads] == [f"{what})"], (what, reads.reads)
        assert next(iter(reads.reads)).startswith("test_host_reads.py:"), reads.reads


SMALL_STRONG = ["encoder.pool=avg", "views.weak.size=32", "views.strong_sizes=[16]"]
METHODS = {
    "simclr": ["views=simclr"],  # ImageNet's composition: blur and jitter on
    "protonet": ["method=protonet"],
    "r2d2": ["method=r2d2"],
    "byol": ["method=byol"],
    "moco_v2": ["method=moco_v2"],
    "clsa_single": ["method=clsa_single", "views=clsa_single_cifar", *SMALL_STRONG],
    "clsa_multi": ["method=clsa_multi", "views=clsa_multi_cifar", *SMALL_STRONG, "views.strong_sizes=[24,16]"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_a_train_step_queues_its_work_without_waiting(method, tmp_path):
    cfg = compose_config([*TINY, *METHODS[method], "trainer.max_steps=3", "trainer.log_every=1000",
                          "trainer.checkpoint_every=0", f"trainer.run_dir={tmp_path}"])
    run = setup(cfg)
    logger = RunLog({}, total_steps=3, initial_step=0, progress=False)
    with ops.selection("mask"):
        run.total_steps = 1  # warm-up: constants made once per device, lazily built state
        train_steps(run, logger)
        run.total_steps = 3
        with HostReads() as reads:
            train_steps(run, logger)
    assert run.position.step == 3
    assert reads.total == 0, reads.reads
