"""The device operations a train step dispatches, counted on the CPU and kept low.

``DeviceOps`` counts operations at the dispatcher as a GPU would launch them (views and
bare allocations launch nothing); ``count_step`` counts one optimizer step and the bare
encoder passes it made. Every method's step stays under the budget recorded here (the
figures of docs/benchmarks.md, "Device operations per train step", measured on a
ResNet-18 and CIFAR-10; here a Conv-4 on small colour images, which changes nothing
outside the network). SimCLR's step dispatches at most a fifth of what it did before the
views were fused (1222 operations outside the network), and every method but CLSA's and
MetAug's at most twice SimCLR's.
"""

from __future__ import annotations

import pytest
import torch

from metacontrast.config import compose_config
from metacontrast.launches import DeviceOps, count_step
from metacontrast.records import Batch
from metacontrast.trainer import setup, take_step
from metacontrast_kornia import ops

from .conftest import METHODS_ON_COLOUR, TINY

BEFORE_SIMCLR = 1222  # SimCLR's operations outside the network before the cuts (docs/benchmarks.md)
METHODS = {k: v for k, v in METHODS_ON_COLOUR.items() if k != "metaug"}  # MetAug: its own step
# operations outside the network, measured here; a change that adds launches fails
BUDGET = {"simclr": 194, "protonet": 226, "r2d2": 215, "byol": 256, "moco_v2": 219, "clsa_single": 606,
          "clsa_multi": 636}


def test_device_ops_count_kernels_not_views_allocations_or_wrapped_numbers():
    x = torch.rand(4, 3)
    with DeviceOps() as ops_:
        y = x.view(3, 4).t().expand(2, 4, 3)  # views: nothing
        _ = torch.empty(5)  # an allocation: nothing
        z = torch.where(x > 0.5, 1.0, x)  # comparison and where; the 1.0 is passed to the kernel
        torch._foreach_add_([x, z], 1.0)  # one multi-tensor operation
    assert dict(ops_.by_op) == {"gt": 1, "where": 1, "_foreach_add_": 1}, ops_.by_op
    assert y.shape == (2, 4, 3)
    w = torch.rand(3, requires_grad=True)
    with DeviceOps() as ops_:
        (w * 2).sum().backward()  # forward and backward both dispatch
    assert ops_.total >= 4 and "mul" in ops_.by_op




@pytest.fixture(scope="module")
def outside(colour_npz, tmp_path_factory) -> dict[str, int]:
    counts = {}
    for name, overrides in METHODS.items():
        run_dir = tmp_path_factory.mktemp(name)
        cfg = compose_config([*TINY, *overrides, "data=npz", f"data.root={colour_npz}", "trainer.device=cpu",
                              "trainer.precision=bf16", f"trainer.run_dir={run_dir}"])
        run = setup(cfg)
        step_fn = run.plugins.make_train_step(cfg, run.components)
        b = int(cfg.trainer.batch_size)
        batch = Batch(images=run.data.train_images[:b], index=torch.arange(b))
        with ops.selection("mask"):
            assert take_step(run, step_fn, batch)[1]  # warm-up: optimizer state, constants
            n = count_step(run, step_fn, batch)
        assert n.by_phase["network forward"] == n.network_forward, (name, n.by_phase, n.network_forward)
        counts[name] = n.outside
    return counts


@pytest.mark.parametrize("method", list(METHODS))
def test_a_steps_operations_outside_the_network_stay_within_budget(outside, method):
    assert outside[method] <= BUDGET[method], (
        f"{method}: {outside[method]} device operations outside the network, budget {BUDGET[method]}; "
        f"benchmarks/step_launches.py --where names the files that dispatch them")


def test_simclr_dispatches_a_fifth_of_what_it_did_and_other_methods_at_most_twice_that(outside):
    assert outside["simclr"] * 5 <= BEFORE_SIMCLR
    for method in ("protonet", "r2d2", "byol", "moco_v2"):
        assert outside[method] <= 2 * outside["simclr"], (method, outside)
    for method in ("clsa_single", "clsa_multi"):  # five rounds of 14 operations: see docs/benchmarks.md
        assert outside[method] <= 3.5 * outside["simclr"], (method, outside)
