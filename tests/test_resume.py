"""Checkpoints: atomic writes, safe loading, exact resume after an interruption."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from metacontrast import hookimpl, resume, trainer
from metacontrast.checkpoint import CheckpointError, list_checkpoints, load_safe, save_atomic
from metacontrast.config import ConfigError, compose_config
from metacontrast.plugins import PluginManager, as_module

from .conftest import TINY, Interrupted, interrupt_at

STEPS = 6


def _cfg(run_dir: Path, *extra: str):
    return compose_config([*TINY, f"trainer.run_dir={run_dir}", f"trainer.max_steps={STEPS}",
                           "trainer.epochs=2", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
                           "trainer.resume=auto", "evaluation.baselines=[]", *extra])


def _final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_safe(list_checkpoints(run_dir / "checkpoints")[-1])["model"]


def _interrupted_then_resumed(run_dir: Path, stop: int, extra: list[str] = ()) -> dict[str, torch.Tensor]:
    with pytest.raises(Interrupted):
        trainer.fit(_cfg(run_dir, *extra), PluginManager(extra=[interrupt_at(stop)]))
    assert int(list_checkpoints(run_dir / "checkpoints")[-1].stem.split("-")[1]) == stop - 1
    results = trainer.fit(_cfg(run_dir, *extra))
    assert results["steps"] == STEPS
    return _final_model(run_dir)


TABLE = ["data=tabular/wine", "method=r2d2", "trainer=debug", "trainer.device=cpu", "trainer.batch_size=16",
         "eval=[knn]", "eval.knn.k=5", "evaluation.baselines=[]"]


def test_a_table_resumes_to_the_uninterrupted_parameters(tmp_path):
    def cfg(run_dir: Path):
        return compose_config([*TABLE, f"trainer.run_dir={run_dir}", f"trainer.max_steps={STEPS}",
                               "trainer.epochs=2", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
                               "trainer.resume=auto"])

    trainer.fit(cfg(tmp_path / "straight"))
    with pytest.raises(Interrupted):
        trainer.fit(cfg(tmp_path / "resumed"), PluginManager(extra=[interrupt_at(4)]))
    assert trainer.fit(cfg(tmp_path / "resumed"))["steps"] == STEPS
    straight, resumed = _final_model(tmp_path / "straight"), _final_model(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and any(".embed." in k for k in straight)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


BYOL_WITH_EVERYTHING = ["method=byol", "head.hidden_dim=32", "head.out_dim=16", "loss.byol.predictor_hidden=16",
                        "+task_aug=rotation", "+aux=rotation_loss", "+mix=unmix"]


MOCO_QUEUE = ["method=moco_v2", "head.hidden_dim=32", "head.out_dim=16", "memory.size=40"]  # 40: wraps


@pytest.mark.parametrize("method", [[], BYOL_WITH_EVERYTHING, MOCO_QUEUE],
                         ids=["simclr", "byol_teacher_ta_llr_mix", "moco_v2_queue"])
def test_resume_reaches_the_uninterrupted_parameters(tmp_path, method):
    trainer.fit(_cfg(tmp_path / "straight", *method))
    straight = _final_model(tmp_path / "straight")
    resumed = _interrupted_then_resumed(tmp_path / "resumed", stop=4, extra=method)
    assert straight.keys() == resumed.keys()
    assert any(k.startswith("teacher.") for k in straight) == bool(method)  # the EMA teacher is saved
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    if method is MOCO_QUEUE:  # the real queue, enqueued by the default step, resumes exactly
        memories = [load_safe(list_checkpoints(tmp_path / r / "checkpoints")[-1])["memory"]
                    for r in ("straight", "resumed")]
        assert int(memories[0]["pointer"]) == (STEPS * 16) % 40
        for name in ("keys", "ids", "pointer"):
            assert torch.equal(memories[0][name], memories[1][name]), name


def test_metaug_resumes_exactly_with_its_meta_step_and_memory_bank_draws(tmp_path):
    """The bi-level step, the MAGs, the memory bank and its per-read negative samples."""
    import numpy as np

    g = np.random.default_rng(0)
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    np.savez(tmp_path / "data" / "cifar10" / "cifar10.npz", x_train=g.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8),
             y_train=g.integers(0, 10, 48), x_test=g.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
             y_test=g.integers(0, 10, 16))
    extra = ["method=metaug", "encoder=split_alexnet", "views=cmc", "data=cifar10", f"data.root={tmp_path / 'data'}",
             "encoder.width=0.125", "memory.read_size=16", "trainer.batch_size=8", "head.out_dim=16"]
    trainer.fit(_cfg(tmp_path / "straight", *extra))
    straight = _final_model(tmp_path / "straight")
    resumed = _interrupted_then_resumed(tmp_path / "resumed", stop=4, extra=extra)
    assert any(".mags." in k for k in straight)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    memories = [load_safe(list_checkpoints(tmp_path / r / "checkpoints")[-1])["memory"] for r in ("straight", "resumed")]
    assert int(memories[0]["reads"]) == STEPS
    for name in ("bank", "reads"):
        assert torch.equal(memories[0][name], memories[1][name]), name


def test_negative_control_without_restored_augmentation_rng(tmp_path, monkeypatch):
    trainer.fit(_cfg(tmp_path / "straight"))
    straight = _final_model(tmp_path / "straight")
    monkeypatch.setattr(resume, "restore_rng_state", lambda state, generators: None)
    resumed = _interrupted_then_resumed(tmp_path / "resumed", stop=4)
    assert any(not torch.equal(resumed[n], v) for n, v in straight.items())


def test_resume_with_another_config_is_refused(tmp_path):
    trainer.fit(_cfg(tmp_path / "run"))
    checkpoint = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    with pytest.raises(ConfigError, match=r"encoder: checkpoint .* was made with encoder="):
        trainer.fit(_cfg(tmp_path / "other", "encoder.hidden=32", f"trainer.resume={checkpoint}"))
    assert not (tmp_path / "other").exists()


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


# -- exact resume in a new process, streamed data decoded by 2 loader workers ----------

def _stream_overrides(root: Path, run_dir: Path) -> list[str]:
    """16 steps (2 epochs of 8 batches of 8 images), shuffled, random on-device views."""
    return [*TINY, "data=imagefolder", f"data.root={root}", "data.image_size=16", "data.stream=true",
            "data.workers=2", "encoder.hidden=8", "trainer.batch_size=8", "trainer.max_steps=16",
            "trainer.epochs=2", "trainer.checkpoint_every=4", "trainer.keep_checkpoints=0",
            "trainer.resume=auto", "evaluation.train_subset=16", "evaluation.baselines=[]",
            f"trainer.run_dir={run_dir}"]


def _records(directory: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (directory / "rank0.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    from .conftest import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("images"), classes=4, train_per_class=16)


@pytest.fixture(scope="module")
def straight_stream(image_folder, tmp_path_factory) -> Path:
    from .launch import launch_cli, output

    run_dir = tmp_path_factory.mktemp("straight")
    done = launch_cli(_stream_overrides(image_folder, run_dir), record=str(run_dir / "records"))
    assert done.returncode == 0, output(done)
    return run_dir


def _stop_at_7_then_resume(root: Path, run_dir: Path, **faults: str) -> None:
    from .launch import launch_cli, output

    first = launch_cli(_stream_overrides(root, run_dir), signal="0:7", record=str(run_dir / "records"), **faults)
    assert first.returncode == 143, output(first)
    assert "stopped by SIGTERM at step 7" in first.stderr
    assert list_checkpoints(run_dir / "checkpoints")[-1].name == "step-000000007.pt"
    second = launch_cli(_stream_overrides(root, run_dir), record=str(run_dir / "records"), **faults)
    assert second.returncode == 0, output(second)
    assert "resuming from" in second.stderr and "at step 7" in second.stderr


def test_exact_resume_mid_epoch_in_a_new_process_with_two_loader_workers(image_folder, straight_stream,
                                                                          tmp_path):
    run_dir = tmp_path / "resumed"
    _stop_at_7_then_resume(image_folder, run_dir)
    a, b = load_safe(list_checkpoints(straight_stream / "checkpoints")[-1]), _final_payload(run_dir)
    assert a["position"] == b["position"] and b["position"]["step"] == 16
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0, msg=name)
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(b["optimizer"]["state"][pid][key], value, rtol=0, atol=0, msg=key)
    assert a["scheduler"] == b["scheduler"]
    # the same samples in the same order, and the same augmentation draws, step by step
    assert _records(run_dir / "records") == _records(straight_stream / "records")
    assert len(_records(run_dir / "records")) == 16


@pytest.mark.parametrize("piece", ["rng", "optimizer"])
def test_negative_controls_resume_without_one_restored_piece_diverges(image_folder, straight_stream,
                                                                      tmp_path, piece):
    run_dir = tmp_path / f"without-{piece}"
    _stop_at_7_then_resume(image_folder, run_dir, no_restore=piece)
    a, b = load_safe(list_checkpoints(straight_stream / "checkpoints")[-1]), _final_payload(run_dir)
    assert any(not torch.equal(b["model"][n], v) for n, v in a["model"].items())


def _final_payload(run_dir: Path) -> dict:
    return load_safe(list_checkpoints(run_dir / "checkpoints")[-1])


def test_external_sigterm_checkpoints_at_the_step_boundary_and_exits_143(tmp_path):
    import re
    import signal
    import subprocess
    import time

    from .launch import HANG_GUARD_S, cli_command, fault_env

    run_dir = tmp_path / "run"
    overrides = [*TINY, f"trainer.run_dir={run_dir}", "trainer.max_steps=100000", "trainer.epochs=1000",
                 "trainer.log_every=1", "evaluation.baselines=[]"]
    proc = subprocess.Popen(cli_command(overrides), env=fault_env(), stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + HANG_GUARD_S
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 143, err
    step = int(re.search(r"stopped by SIGTERM at step (\d+); checkpoint (\S+);", err).group(1))
    assert list_checkpoints(run_dir / "checkpoints")[-1].name == f"step-{step:09d}.pt"
    assert load_safe(list_checkpoints(run_dir / "checkpoints")[-1])["position"]["step"] == step
    assert "saved" not in err.lower()


# -- a memory (queue + pointer) is checkpointed and restored ------------------------------

def _queue_plugin():
    """A FIFO memory of batch colour statistics, filled by a train step that wraps the default,
    and read by a loss (a memory nothing reads is refused)."""
    from torch import nn

    from metacontrast.interfaces import Loss, Memory
    from metacontrast.step import DefaultTrainStep

    class ReadsTheQueue(Loss):
        """The queue's mean times nothing: it reads the memory, and changes no gradient."""

        NAME = "reads_the_queue"
        READS = frozenset({"memory"})
        NEEDS = frozenset({"memory"})

        def __init__(self, config, context) -> None:
            super().__init__()

        def forward(self, inputs):
            return inputs.memory.float().mean() * inputs.embeddings.z.float().mean() * 0.0

    class ToyQueue(Memory):
        NAME = "toy_queue"

        def __init__(self, config, context) -> None:
            nn.Module.__init__(self)
            self.register_buffer("keys", torch.zeros(64, 1))
            self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

        def read(self):
            return self.keys

        def update(self, keys, ids) -> None:
            n = keys.shape[0]
            slots = (self.pointer + torch.arange(n)) % self.keys.shape[0]
            self.keys[slots] = keys
            self.pointer.copy_((self.pointer + n) % self.keys.shape[0])

    class FillingStep(DefaultTrainStep):
        def __init__(self, components) -> None:  # the losses read the queue; this step writes it
            super().__init__(components.view_generator, components.episode_builder, memory=components.memory)
            self.toy_memory = components.memory

        def keep_keys(self, step, embeddings, views) -> None:
            pass  # written in __call__ below, not with the default's keys

        def __call__(self, batch, ctx):
            terms = super().__call__(batch, ctx)
            self.toy_memory.update(batch.images.float().mean(dim=(1, 2, 3))[:, None] + ctx.step, batch.index)
            return terms

    @hookimpl
    def metacontrast_register_memories():
        return [ToyQueue]

    @hookimpl
    def metacontrast_register_losses():
        return [ReadsTheQueue]

    @hookimpl
    def metacontrast_make_train_step(config, components):
        return FillingStep(components) if components.memory is not None else None

    return as_module("toy_queue_plugin", metacontrast_register_memories=metacontrast_register_memories,
                     metacontrast_register_losses=metacontrast_register_losses,
                     metacontrast_make_train_step=metacontrast_make_train_step)


def test_memory_queue_and_pointer_survive_resume(tmp_path, monkeypatch):
    plugin = _queue_plugin()
    queue = ("+memory.name=toy_queue", "+loss.reads_the_queue.weight=1.0")
    trainer.fit(_cfg(tmp_path / "straight", *queue), PluginManager(extra=[plugin]))
    straight = load_safe(list_checkpoints(tmp_path / "straight" / "checkpoints")[-1])["memory"]
    assert int(straight["pointer"]) == (STEPS * 16) % 64

    def interrupted_then_resumed(run_dir: Path) -> dict:
        with pytest.raises(Interrupted):
            trainer.fit(_cfg(run_dir, *queue), PluginManager(extra=[plugin, interrupt_at(4)]))
        trainer.fit(_cfg(run_dir, *queue), PluginManager(extra=[plugin]))
        return load_safe(list_checkpoints(run_dir / "checkpoints")[-1])["memory"]

    resumed = interrupted_then_resumed(tmp_path / "resumed")
    assert torch.equal(resumed["keys"], straight["keys"]) and torch.equal(resumed["pointer"], straight["pointer"])
    # negative control: a resume that drops the memory's state ends elsewhere
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", _skip_for_memories(torch.nn.Module.load_state_dict))
    dropped = interrupted_then_resumed(tmp_path / "dropped")
    assert not torch.equal(dropped["keys"], straight["keys"])


def _skip_for_memories(original):
    from metacontrast.interfaces import Memory

    def load_state_dict(self, state_dict, *args, **kwargs):
        if isinstance(self, Memory):
            return None
        return original(self, state_dict, *args, **kwargs)

    return load_state_dict


def test_rng_streams_and_scaler_round_trip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    from metacontrast.checkpoint import restore_rng_state, rng_state

    g = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_atomic({"format": 1, "rng": rng_state({"augment": g})}, tmp_path / "r.pt")
    expected = (random.random(), np.random.standard_normal(), torch.rand(2), torch.rand(2, generator=g))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), g.manual_seed(9)
    restore_rng_state(load_safe(tmp_path / "r.pt")["rng"], {"augment": g})
    got = (random.random(), np.random.standard_normal(), torch.rand(2), torch.rand(2, generator=g))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])

    run = trainer.setup(_cfg(tmp_path / "run"))
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    run.scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    run.scaler.update(new_scale=123.0)
    path = trainer.save_checkpoint(run)
    fresh = trainer.setup(_cfg(tmp_path / "run"))
    fresh.scaler = torch.amp.GradScaler("cpu")
    trainer.restore(fresh, path, load_safe(path))
    assert fresh.scaler.get_scale() == 123.0 and fresh.scaler.get_growth_interval() == 7
