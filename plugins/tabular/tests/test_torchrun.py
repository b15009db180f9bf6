"""A table trains under torchrun: two gloo processes, R2-D2 episodes spanning both."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HANG_GUARD_S = 900  # generous: a loaded machine takes many times the quiet time

BASE = ["data=tabular/wine", "method=r2d2", "trainer=debug", "trainer.device=cpu", "trainer.batch_size=16",
        "eval=[knn]", "eval.knn.k=5", "evaluation.baselines=[]"]


@pytest.mark.distributed
def test_torchrun_trains_a_table_with_episodes_spanning_ranks(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "metacontrast.cli", "train", *BASE, "trainer.max_steps=2", "trainer.resume=never",
           f"trainer.run_dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_batch"] == 32 and results["steps"] == 2
    assert 0.0 <= results["metrics"]["pretrained"]["knn_top1"] <= 1.0
