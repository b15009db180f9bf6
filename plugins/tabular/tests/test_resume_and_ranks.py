"""A table resumes exactly after an interruption and trains under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metacontrast import hookimpl, trainer
from metacontrast.checkpoint import list_checkpoints, load_safe
from metacontrast.config import compose_config
from metacontrast.plugins import PluginManager, as_module

STEPS = 6
BASE = ["data=tabular/wine", "method=r2d2", "trainer=debug", "trainer.device=cpu", "trainer.batch_size=16",
        "eval=[knn]", "eval.knn.k=5", "evaluation.baselines=[]"]


class Interrupted(Exception):
    pass


def _interrupt_at(step: int):
    @hookimpl
    def metacontrast_on_step_end(state):
        if state.step == step:
            raise Interrupted(f"stopped at step {step}")

    return as_module(f"table_interrupt_at_{step}", metacontrast_on_step_end=metacontrast_on_step_end)


def _cfg(run_dir: Path):
    return compose_config([*BASE, f"trainer.run_dir={run_dir}", f"trainer.max_steps={STEPS}", "trainer.epochs=2",
                           "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0", "trainer.resume=auto"])


def _final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_safe(list_checkpoints(run_dir / "checkpoints")[-1])["model"]


def test_a_table_run_resumes_to_the_uninterrupted_parameters(tmp_path):
    trainer.fit(_cfg(tmp_path / "straight"))
    with pytest.raises(Interrupted):
        trainer.fit(_cfg(tmp_path / "resumed"), PluginManager(extra=[_interrupt_at(4)]))
    assert trainer.fit(_cfg(tmp_path / "resumed"))["steps"] == STEPS
    straight, resumed = _final_model(tmp_path / "straight"), _final_model(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and any(".embed." in k for k in straight)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.distributed
def test_torchrun_trains_a_table_with_episodes_spanning_ranks(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "metacontrast.cli", "train", *BASE, "trainer.max_steps=2", "trainer.resume=never",
           f"trainer.run_dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_batch"] == 32 and results["steps"] == 2
    assert 0.0 <= results["metrics"]["pretrained"]["knn_top1"] <= 1.0
