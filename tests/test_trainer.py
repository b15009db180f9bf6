"""Trainer behaviours: accumulation, evaluation during training, non-finite losses, devices."""

from __future__ import annotations

import json

import pytest
import torch

from metacontrast import hookimpl
from metacontrast.config import ConfigError, compose_config
from metacontrast.interfaces import Loss
from metacontrast.plugins import PluginManager, as_module
from metacontrast.trainer import TrainingError, fit, resolve_device, resolve_precision

from .conftest import TINY


def _rows(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    run_dir = tmp_path / "run"
    results = fit(compose_config([*TINY, "trainer.batch_size=8", "trainer.accumulate=2",
                                  f"trainer.run_dir={run_dir}"]))
    assert results["steps"] == 2 and results["global_batch"] == 16
    assert [r["step"] for r in _rows(run_dir)] == [1, 2]


def test_evaluation_every_epoch_is_logged(tmp_path):
    run_dir = tmp_path / "run"
    fit(compose_config([*TINY, "data.train_subset=32", "trainer.max_steps=0", "trainer.epochs=2",
                        "trainer.eval_every_epochs=1", f"trainer.run_dir={run_dir}"]))
    evals = [r for r in _rows(run_dir) if "eval/knn_top1" in r]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert all(0.0 <= r["eval/linear_top1"] <= 1.0 for r in evals)


class _NaNLoss(Loss):
    NAME = "nan_loss"

    def __init__(self, config, context):
        super().__init__()

    def forward(self, inputs):
        return inputs.embeddings.z.sum() * float("nan")


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path):
    plugin = as_module("nan_plugin", metacontrast_register_losses=hookimpl(lambda: [_NaNLoss]))
    cfg = compose_config([*TINY, "+loss.nan_loss.weight=1.0", f"trainer.run_dir={tmp_path / 'run'}"])
    with pytest.raises(TrainingError, match=r"step 0: loss term 'nan_loss' is nan"):
        fit(cfg, PluginManager(extra=[plugin]))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="trainer.device: 'cuda' asked for but no CUDA device"):
        resolve_device("cuda")


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
