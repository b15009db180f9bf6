"""Two gloo processes on the global batch == one process on the whole batch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metacontrast.distributed import GlobalBatchNorm, convert_sync_batchnorm

from .launch import HANG_GUARD_S

WORKER = Path(__file__).with_name("ddp_equivalence_worker.py")


def _run(world: int, out: Path, gather: bool = True, method: str = "simclr", span: bool = True) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NT_XENT_GATHER": "1" if gather else "0",
           "METHOD": method, "SPAN": "1" if span else "0"}
    if world == 1:
        cmd = [sys.executable, str(WORKER), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               str(WORKER), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.distributed
def test_two_gloo_processes_match_one_process(tmp_path):
    _run(1, tmp_path / "one")
    _run(2, tmp_path / "two")
    one = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    for r in ranks:
        torch.testing.assert_close(r["loss"], one["loss"], rtol=1e-5, atol=1e-6)
        assert r["grads"].keys() == one["grads"].keys()
        for name, g in one["grads"].items():
            # float32 summation order differs between the two layouts: ~1e-5 on values ~1
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=5e-5, msg=name)
        for name, m in one["running_mean"].items():  # batch statistics were global
            torch.testing.assert_close(r["running_mean"][name], m, rtol=1e-4, atol=1e-6, msg=name)
    # negative control: without the cross-rank negatives the same check fails
    _run(2, tmp_path / "local", gather=False)
    local = torch.load(tmp_path / "local" / "rank0.pt")
    assert abs(local["loss"].item() - one["loss"].item()) > 1e-3


def _matches_one_process(tmp_path, method: str, min_gap: float, **control) -> None:
    """Both ranks' loss and gradients equal one process's; the negative control
    (``control``: no spanning episode or no gathered negatives) does not."""
    _run(1, tmp_path / "one", method=method)
    _run(2, tmp_path / "two", method=method)
    one = torch.load(tmp_path / "one" / "rank0.pt")
    for r in (0, 1):
        two = torch.load(tmp_path / "two" / f"rank{r}.pt")
        torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=1e-6)
        for name, g in one["grads"].items():
            torch.testing.assert_close(two["grads"][name], g, rtol=1e-4, atol=5e-5, msg=name)
    _run(2, tmp_path / "local", method=method, **control)
    local = torch.load(tmp_path / "local" / "rank0.pt")
    assert abs(local["loss"].item() - one["loss"].item()) > min_gap


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["protonet", "ridge", "svm"])
def test_episodes_span_ranks_for_every_solver(tmp_path, method):
    # negative control: tasks confined to each rank solve smaller problems
    _matches_one_process(tmp_path, method, 1e-3, span=False)


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["triplet", "npair"])
def test_classic_losses_take_negatives_from_every_rank(tmp_path, method):
    _matches_one_process(tmp_path, method, 1e-4, gather=False)


def test_global_batchnorm_without_a_group_is_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.weight.data.uniform_()
    converted = convert_sync_batchnorm(nn.Sequential(bn), "cpu")
    assert isinstance(converted[0], GlobalBatchNorm)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(converted(x), bn(x))
    torch.testing.assert_close(converted[0].running_mean, bn.running_mean)


def test_converting_a_frozen_batchnorm_keeps_it_frozen():
    """An EMA teacher's BatchNorm must not become trainable: DDP would wait for gradients
    that never come (BYOL and MoCo under torchrun failed that way)."""
    frozen = nn.BatchNorm2d(3).requires_grad_(False)
    converted = convert_sync_batchnorm(nn.Sequential(frozen, nn.BatchNorm2d(3)), "cpu")
    assert not converted[0].weight.requires_grad and not converted[0].bias.requires_grad
    assert converted[1].weight.requires_grad and converted[1].bias.requires_grad


@pytest.mark.distributed
def test_torchrun_trains_two_steps_end_to_end(tmp_path):
    from .conftest import TINY

    run_dir = tmp_path / "run"
    # rank 0 alone logs: the MLflow store (where installed) gets one run, each step once
    tracker = importlib.util.find_spec("mlflow") is not None
    store = (tmp_path / "mlruns").as_uri()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "metacontrast.cli", "train", *TINY, "trainer.batch_size=8", "trainer.sync_batchnorm=true",
           f"trainer.run_dir={run_dir}", *(["logger=[jsonl,mlflow]"] if tracker else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": store,
                               "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    if tracker:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(store)
        (run,) = client.search_runs([client.get_experiment_by_name("metacontrast").experiment_id])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_batch"] == 16 and results["steps"] == 2
    payload = torch.load(sorted((run_dir / "checkpoints").iterdir())[-1], weights_only=True)
    assert len(payload["rng"]) == 2  # one augmentation stream per rank
    assert not torch.equal(payload["rng"][0]["generators"]["augment"], payload["rng"][1]["generators"]["augment"])


@pytest.mark.distributed
def test_shuffled_forward_mixes_ranks_and_returns_rows_in_place(tmp_path):
    worker = Path(__file__).with_name("shuffle_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout + done.stderr
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for p in parts:
        assert torch.equal(p["out"][:, 0], p["x"][:, 0])  # every row came back to its place
        executed_by = set(p["out"][:, 1].tolist())
        assert executed_by == {0.0, 1.0}  # both ranks computed some of this rank's rows
    # the batch statistic mixed both ranks' rows: recompute it from who executed what
    rows = torch.cat([p["out"] for p in parts])
    for r in (0, 1):
        mine = rows[rows[:, 1] == r]
        assert torch.allclose(mine[:, 2], mine[:, 0] - mine[:, 0].mean())


def test_shuffled_forward_without_a_group_is_the_function():
    from metacontrast.distributed import shuffled_forward

    x = torch.randn(5, 3)
    assert torch.equal(shuffled_forward(lambda t: t * 2, x), x * 2)


@pytest.mark.distributed
def test_torchrun_trains_clsa_with_shuffled_keys_and_a_shared_queue(tmp_path):
    """CLSA-single under 2 gloo processes (EMA key encoder with shuffling BN, GlobalBatchNorm
    elsewhere): it trains, and every step enqueues the keys of both ranks (16, not 8)."""
    from .conftest import TINY

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "metacontrast.cli", "train", *TINY, "method=clsa_single", "views=clsa_single_cifar",
           "encoder.pool=avg", "views.strong_sizes=[16]", "memory.size=40", "trainer.batch_size=8",
           "head.hidden_dim=32", "head.out_dim=16", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
           f"trainer.run_dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    checkpoints = sorted((run_dir / "checkpoints").iterdir())
    first, last = (torch.load(c, weights_only=True) for c in (checkpoints[0], checkpoints[-1]))
    # 2 steps x 2 ranks x 8 keys enqueued into 40 slots
    assert int(last["memory"]["pointer"]) == 32
    assert int(first["memory"]["pointer"]) == 16 and (first["memory"]["ids"][:16] >= 0).all()
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss/ddm"' in r]
    assert rows and all(np.isfinite(r["loss/ddm"]) and np.isfinite(r["loss/moco_infonce"]) for r in rows)


@pytest.mark.distributed
def test_sharded_periodic_evaluation_equals_rank_zero_alone(tmp_path):
    """Two ranks extracting halves of the features give rank 0's own numbers exactly."""
    from .conftest import TINY

    evals = {}
    for shard in ("true", "false"):
        run_dir = tmp_path / shard
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "metacontrast.cli", "train", *TINY, "trainer.batch_size=8", "trainer.max_steps=0",
               "data.train_subset=48", "trainer.eval_every_epochs=1", "evaluation.baselines=[]",
               "evaluation.train_subset=101", f"evaluation.sharded={shard}", f"trainer.run_dir={run_dir}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evals[shard] = [{k: v for k, v in r.items() if k.startswith("eval/")} for r in rows
                        if any(k.startswith("eval/") for k in r)]
    assert len(evals["true"]) == 1 and evals["true"][0]["eval/knn_top1"] > 0
    assert evals["true"] == evals["false"]
