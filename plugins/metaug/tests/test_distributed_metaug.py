"""MetAug under DDP: with 2 gloo processes every rank applies the mean of the ranks' own
gradients, the MAGs' meta-gradients included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HANG_GUARD_S = 900  # generous: a loaded machine takes many times the quiet time

WORKER = Path(__file__).with_name("ddp_metaug_worker.py")


def _cifar_like(root: Path) -> Path:
    g = np.random.default_rng(0)
    (root / "cifar10").mkdir(parents=True)
    np.savez(root / "cifar10" / "cifar10.npz", x_train=g.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
             y_train=g.integers(0, 10, 32), x_test=g.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
             y_test=g.integers(0, 10, 16))
    return root


@pytest.mark.distributed
def test_two_gloo_processes_apply_the_mean_of_the_ranks_gradients(tmp_path):
    root = _cifar_like(tmp_path / "data")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(tmp_path / "out"), str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    ranks = [torch.load(tmp_path / "out" / f"rank{r}.pt") for r in (0, 1)]
    local = [r["local"] for r in ranks]
    names = set(local[0])
    assert any(".mags." in n for n in names) and names == set(local[1]) == set(ranks[0]["synced"])
    for name in names:
        mean = (local[0][name] + local[1][name]) / 2
        for r in ranks:
            torch.testing.assert_close(r["synced"][name], mean, rtol=1e-4, atol=1e-7, msg=name)
    # the ranks saw different images: their own gradients differ (the check above is not trivial)
    mag = next(n for n in names if ".mags." in n)
    assert not torch.allclose(local[0][mag], local[1][mag])
    assert local[0][mag].abs().sum() > 0
