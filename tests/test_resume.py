"""Checkpoints: atomic writes, safe loading, exact resume after an interruption."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from metacontrast import hookimpl, trainer
from metacontrast.checkpoint import CheckpointError, list_checkpoints, load_safe, save_atomic
from metacontrast.config import ConfigError, compose_config
from metacontrast.plugins import PluginManager, as_module

from .conftest import TINY

STEPS = 6


class Interrupted(Exception):
    pass


def _interrupt_at(step: int):
    @hookimpl
    def metacontrast_on_step_end(state):
        if state.step == step:
            raise Interrupted(f"stopped at step {step}")

    return as_module(f"interrupt_at_{step}", metacontrast_on_step_end=metacontrast_on_step_end)


def _cfg(run_dir: Path, *extra: str):
    return compose_config([*TINY, f"trainer.run_dir={run_dir}", f"trainer.max_steps={STEPS}",
                           "trainer.epochs=2", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
                           "trainer.resume=auto", "evaluation.baselines=[]", *extra])


def _final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_safe(list_checkpoints(run_dir / "checkpoints")[-1])["model"]


def _interrupted_then_resumed(run_dir: Path, stop: int) -> dict[str, torch.Tensor]:
    with pytest.raises(Interrupted):
        trainer.fit(_cfg(run_dir), PluginManager(extra=[_interrupt_at(stop)]))
    assert int(list_checkpoints(run_dir / "checkpoints")[-1].stem.split("-")[1]) == stop - 1
    results = trainer.fit(_cfg(run_dir))
    assert results["steps"] == STEPS
    return _final_model(run_dir)


def test_resume_reaches_the_uninterrupted_parameters(tmp_path):
    trainer.fit(_cfg(tmp_path / "straight"))
    straight = _final_model(tmp_path / "straight")
    resumed = _interrupted_then_resumed(tmp_path / "resumed", stop=4)
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_negative_control_without_restored_augmentation_rng(tmp_path, monkeypatch):
    trainer.fit(_cfg(tmp_path / "straight"))
    straight = _final_model(tmp_path / "straight")
    monkeypatch.setattr(trainer, "restore_rng_state", lambda state, generators: None)
    resumed = _interrupted_then_resumed(tmp_path / "resumed", stop=4)
    assert any(not torch.equal(resumed[n], v) for n, v in straight.items())


def test_resume_with_another_config_is_refused(tmp_path):
    trainer.fit(_cfg(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"encoder: checkpoint .* was made with encoder="):
        trainer.fit(_cfg(tmp_path / "run", "encoder.hidden=32"))


def test_failed_save_leaves_previous_checkpoint_and_no_temp_file(tmp_path):
    target = tmp_path / "step-000000001.pt"
    save_atomic({"format": 1, "x": torch.ones(3)}, target)
    before = target.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(CheckpointError, match=str(target)):
        save_atomic({"format": 1, "x": torch.zeros(3), "bad": Unpicklable()}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_read_only_directory_fails_naming_the_path(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits: make creating the file fail as it would
        import tempfile

        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied", str(ro))

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    try:
        with pytest.raises(CheckpointError, match=r"ro/step-000000001.pt.*Permission denied"):
            save_atomic({"format": 1}, ro / "step-000000001.pt")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_full_disk_during_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "step-000000001.pt"
    save_atomic({"format": 1, "x": torch.ones(3)}, target)
    before = target.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        save_atomic({"format": 1, "x": torch.zeros(3)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


class _Payload:
    ran = False

    def __reduce__(self):
        return (os.system, ("touch /tmp/metacontrast-pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_with_a_pickle_payload_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    marker = Path("/tmp/metacontrast-pwned")
    marker.unlink(missing_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"format": 1, "model": _Payload()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_safe(path)
    assert not marker.exists()


def test_auto_resume_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    trainer.fit(_cfg(run_dir, "trainer.max_steps=3"))
    newest = list_checkpoints(run_dir / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    run = trainer.setup(_cfg(run_dir, "trainer.max_steps=3"))
    path, payload = trainer.load_resume_checkpoint(run)
    assert path.name == "step-000000002.pt" and payload["position"]["step"] == 2
    assert f"skipping unreadable checkpoint: checkpoint {newest}" in capsys.readouterr().err
