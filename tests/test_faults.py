"""Faults under torchrun (2 gloo processes): stop signals, a failing rank, restarts, and
exact resume per rank. Faults are injected by ``tests/helpers/fault_plugin.py``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from metacontrast import trainer
from metacontrast.checkpoint import list_checkpoints, load_safe
from metacontrast.config import ConfigError, compose_config

from .conftest import TINY
from .launch import launch_cli, output


def _overrides(run_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"trainer.run_dir={run_dir}", f"trainer.max_steps={STEPS}", "trainer.epochs=2",
            "trainer.batch_size=8", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
            "trainer.resume=auto", "evaluation.baselines=[]", "trainer.progress=false", *extra]


def launch(run_dir: Path, *extra: str, nproc: int = 2, restarts: int = 0, **faults: str):
    return launch_cli(_overrides(run_dir, *extra), nproc=nproc, restarts=restarts, **faults)

pytestmark = pytest.mark.distributed

STEPS = 8


def _final(run_dir: Path) -> dict:
    return load_safe(list_checkpoints(run_dir / "checkpoints")[-1])


def _records(directory: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (directory / f"rank{rank}.jsonl").read_text().splitlines()]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["position"] == b["position"]
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0, msg=name)
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(b["optimizer"]["state"][pid][key], value, rtol=0, atol=0,
                                       msg=f"optimizer state {pid}.{key}")
    assert a["scheduler"] == b["scheduler"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run of STEPS steps, recording every micro-batch."""
    run_dir = tmp_path_factory.mktemp("straight")
    done = launch(run_dir, record=str(run_dir / "records"))
    assert done.returncode == 0, output(done)
    return run_dir


def _stopped_then_resumed(run_dir: Path, stop_step: int, **faults: str) -> None:
    first = launch(run_dir, signal=f"1:{stop_step}", record=str(run_dir / "records"), **faults)
    assert first.returncode != 0
    stops = re.findall(r"stopped by SIGTERM at step (\d+)", first.stderr)
    assert stops == [str(stop_step)] * 2, output(first)  # both ranks, the same step
    assert first.stderr.count("exitcode  : 143") == 2, output(first)  # each worker exits 143
    assert list_checkpoints(run_dir / "checkpoints")[-1].name == f"step-{stop_step:09d}.pt"
    second = launch(run_dir, record=str(run_dir / "records"), **faults)
    assert second.returncode == 0, output(second)
    assert f"resuming from {run_dir}/checkpoints/step-{stop_step:09d}.pt" in second.stderr


def test_sigterm_on_one_rank_stops_all_ranks_at_one_step_and_resume_is_exact(straight, tmp_path):
    run_dir = tmp_path / "resumed"
    _stopped_then_resumed(run_dir, stop_step=3)
    _assert_same_state(_final(straight), _final(run_dir))
    for rank in (0, 1):  # same samples and the same augmentation draws, step by step
        assert _records(run_dir / "records", rank) == _records(straight / "records", rank)
    a, b = _records(straight / "records", 0), _records(straight / "records", 1)
    assert a[0]["initial_weights"] == b[0]["initial_weights"]  # ranks share initial weights
    assert all(x["augment_state"] != y["augment_state"] for x, y in zip(a, b, strict=True))  # not views


def test_negative_control_resume_without_rng_streams_diverges(straight, tmp_path):
    run_dir = tmp_path / "no-rng"
    _stopped_then_resumed(run_dir, stop_step=3, no_restore="rng")
    resumed, reference = _final(run_dir)["model"], _final(straight)["model"]
    assert any(not torch.equal(resumed[n], v) for n, v in reference.items())
    assert _records(run_dir / "records", 0) != _records(straight / "records", 0)


def test_resume_on_another_world_size_is_refused(straight, tmp_path):
    cfg = compose_config(_overrides(tmp_path, f"trainer.resume={list_checkpoints(straight / 'checkpoints')[-1]}"))
    with pytest.raises(ConfigError, match="written by 2 processes, this run has 1"):
        trainer.fit(cfg)


def test_a_failing_rank_ends_the_job_with_its_traceback(tmp_path):
    done = launch(tmp_path / "run", "trainer.max_steps=1000", "trainer.epochs=1000", raise_="1:2")
    assert done.returncode != 0
    log = output(done)
    assert "RuntimeError: injected failure on rank 1 at step 2" in log
    assert "Traceback" in log


def test_a_failing_rank_slow_to_report_still_ends_the_job_with_its_traceback(tmp_path):
    # the report comes before the rank leaves the process group: its peers wait for it
    done = launch(tmp_path / "run", "trainer.max_steps=1000", "trainer.epochs=1000", raise_="1:2",
                  slow_report="4")
    assert done.returncode != 0
    log = output(done)
    assert "RuntimeError: injected failure on rank 1 at step 2" in log
    assert "JSONDecodeError" not in log


def test_torchrun_restart_resumes_and_finishes_like_an_uninterrupted_run(straight, tmp_path):
    run_dir = tmp_path / "restarted"
    done = launch(run_dir, restarts=1, kill="1:4")
    assert done.returncode == 0, output(done)
    assert re.search(r"resuming from .*step-000000003\.pt at step 3", done.stderr), output(done)
    _assert_same_state(_final(straight), _final(run_dir))
