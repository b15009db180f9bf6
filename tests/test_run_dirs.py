"""One run owns a directory; the same command resumes it; a finished run stays as it is;
operating-system errors and interruptions end in one line, not a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metacontrast import cli, trainer
from metacontrast.checkpoint import checkpoint_path, list_checkpoints, load_safe, prune
from metacontrast.config import compose_config
from metacontrast.plugins import PluginManager
from metacontrast.run_dirs import RunDirError, RunLock, config_digest, cut_metrics, unfinished_run

from .conftest import TINY, Interrupted, fail_with_enospc, interrupt_at
from .launch import HANG_GUARD_S, cli_command, fault_env

# TINY minus its resume=never: these runs resume as a user's would
RESUMING = [o for o in TINY if not o.startswith("trainer.resume=")] + ["trainer.progress=false"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _step_rows(run_dir: Path) -> list[int]:
    return [r["step"] for r in _rows(run_dir) if "loss" in r]


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert proc.poll() is None, f"{what}: the process ended first ({proc.returncode})"
        assert time.monotonic() < deadline, f"{what}: not within {HANG_GUARD_S} s"
        time.sleep(0.05)


# -- the pieces -----------------------------------------------------------------------------

def test_the_config_digest_names_what_is_trained_not_how_it_is_watched():
    base = compose_config(TINY)
    assert config_digest(base) == config_digest(compose_config([*TINY, "trainer.log_every=3",
                                                                "trainer.progress=false",
                                                                "trainer.run_dir=/elsewhere"]))
    assert config_digest(base) != config_digest(compose_config([*TINY, "trainer.seed=1"]))
    assert config_digest(base) != config_digest(compose_config([*TINY, "optim.lr=0.1"]))


def test_cut_metrics_keeps_the_rows_up_to_the_checkpoint_and_drops_a_torn_last_line(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 8)] + [{"step": 4, "knn_top1": 0.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert cut_metrics(tmp_path, 4) == 4  # steps 5, 6, 7 and the torn line
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [r for r in rows if r["step"] <= 4]
    assert cut_metrics(tmp_path, 4) == 0


def test_a_lock_held_by_another_process_refuses_with_its_pid_and_a_killed_holder_leaves_none(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from metacontrast.run_dirs import RunLock; "
         f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = compose_config([*RESUMING, f"trainer.run_dir={tmp_path}"])
        with pytest.raises(RunDirError, match=rf"{tmp_path} is in use by pid {holder.pid} on "):
            trainer.fit(cfg)
        assert RunLock.holder(tmp_path)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: no stale lock to clean up
    results = trainer.fit(compose_config([*RESUMING, f"trainer.run_dir={tmp_path}"]))
    assert results["steps"] == 2


def test_unfinished_runs_are_found_by_digest_and_finished_ones_are_not(tmp_path):
    for name, digest, finished in [("a", "d1", True), ("b", "d1", False), ("c", "d2", False)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"config_digest": digest, "created": name}))
        if finished:
            (tmp_path / name / "results.json").write_text("{}")
    assert unfinished_run(tmp_path, "d1") == tmp_path / "b"
    assert unfinished_run(tmp_path, "d2") == tmp_path / "c"
    assert unfinished_run(tmp_path, "d3") is None


# -- whole runs ---------------------------------------------------------------------------------

def test_the_same_command_after_sigterm_resumes_the_same_run_and_after_the_end_starts_a_new_one(tmp_path):
    overrides = [*RESUMING, "trainer.max_steps=6", "trainer.log_every=1"]
    stopped = subprocess.run(cli_command(overrides), cwd=tmp_path, env=fault_env(signal="0:3"),
                             capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert stopped.returncode == 143, stopped.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"run the same command again to resume in {Path('runs') / run_dir.name}" in stopped.stderr
    again = subprocess.run(cli_command(overrides), cwd=tmp_path, env=fault_env(),
                           capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert again.returncode == 0, again.stderr
    assert "at step 3" in again.stderr and [p.name for p in (tmp_path / "runs").iterdir()] == [run_dir.name]
    assert _step_rows(run_dir) == [1, 2, 3, 4, 5, 6]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 6
    # two processes worked on it: the wall-clock counts both
    assert len(list((run_dir / "sessions").glob("*.json"))) == 2
    assert results["wall_clock_s"] >= results["this_process_s"]
    # a finished run is left as it is; the same command now starts another
    finished = (run_dir / "results.json").read_bytes()
    third = subprocess.run(cli_command(overrides), cwd=tmp_path, env=fault_env(),
                           capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert third.returncode == 0, third.stderr
    assert len(list((tmp_path / "runs").iterdir())) == 2
    assert (run_dir / "results.json").read_bytes() == finished
    # ... an uninterrupted run, which the stopped and resumed one matches exactly
    (straight,) = set((tmp_path / "runs").iterdir()) - {run_dir}
    resumed, uninterrupted = (load_safe(list_checkpoints(d / "checkpoints")[-1]) for d in (run_dir, straight))
    assert resumed["model"].keys() == uninterrupted["model"].keys()
    assert all(torch.equal(resumed["model"][k], uninterrupted["model"][k]) for k in resumed["model"])
    assert resumed["position"] == uninterrupted["position"]


def test_after_kill_9_the_same_command_resumes_with_no_duplicated_metric_rows(tmp_path):
    overrides = [*RESUMING, "trainer.max_steps=7", "trainer.log_every=1", "trainer.checkpoint_every=3"]
    killed = subprocess.run(cli_command(overrides), cwd=tmp_path, env=fault_env(kill="0:5"),
                            capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert _step_rows(run_dir) == [1, 2, 3, 4]  # step 4 was logged after the checkpoint at 3
    again = subprocess.run(cli_command(overrides), cwd=tmp_path, env=fault_env(),
                           capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr and "at step 3" in again.stderr
    assert "1 rows logged after step 3" in again.stderr
    assert _step_rows(run_dir) == [1, 2, 3, 4, 5, 6, 7]


def test_a_second_process_on_a_running_directory_is_refused_and_another_directory_runs_beside_it(tmp_path,
                                                                                                  capsys):
    busy = tmp_path / "busy"
    first = subprocess.Popen(cli_command([*RESUMING, f"trainer.run_dir={busy}", "trainer.max_steps=100000",
                                          "trainer.epochs=1000", "evaluation.baselines=[]"]),
                             env=fault_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: RunLock.holder(busy).get("pid") == first.pid, first, "the first run takes its lock")
        assert cli.main(["train", *RESUMING, f"trainer.run_dir={busy}"]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf"metacontrast: error: trainer.run_dir: {busy} is in use by pid {first.pid} on "
                            rf"\S+, started \S+; wait for it to end, or start another run with a new "
                            rf"trainer.run_dir\n", err), err
        results = trainer.fit(compose_config([*RESUMING, f"trainer.run_dir={tmp_path / 'beside'}"]))
        assert results["steps"] == 2 and first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=HANG_GUARD_S)
    assert first.returncode == 143


def test_a_finished_run_directory_is_refused_with_advice_that_works(tmp_path, capsys):
    run_dir = tmp_path / "run"
    trainer.fit(compose_config([*RESUMING, f"trainer.run_dir={run_dir}"]))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert cli.main(["train", *RESUMING, f"trainer.run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    assert f"{run_dir} holds a finished run (results.json)" in err
    assert f"trainer.run_dir=NEW_DIR trainer.resume={checkpoint}" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"} == before
    further = trainer.fit(compose_config([*RESUMING, f"trainer.run_dir={tmp_path / 'further'}",
                                          f"trainer.resume={checkpoint}", "trainer.max_steps=4"]))
    assert further["steps"] == 4


def test_an_unwritable_run_directory_fails_at_once_in_one_line_with_exit_1(tmp_path, capsys, monkeypatch):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    baselines = []
    monkeypatch.setattr(trainer, "evaluate_baselines", lambda run: baselines.append(run))
    assert cli.main(["train", *RESUMING, f"trainer.run_dir={not_a_dir / 'run'}"]) == 1
    assert capsys.readouterr().err == (f"metacontrast: error: trainer.run_dir: cannot write {not_a_dir / 'run'}: "
                                       f"Not a directory; choose a writable trainer.run_dir\n")

    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    assert cli.main(["train", *RESUMING, f"trainer.run_dir={tmp_path / 'ro' / 'run'}"]) == 1
    assert capsys.readouterr().err == (f"metacontrast: error: trainer.run_dir: cannot write "
                                       f"{tmp_path / 'ro' / 'run'}: Permission denied; choose a writable "
                                       f"trainer.run_dir\n")
    assert baselines == []  # refused before any work


def test_ctrl_c_in_any_phase_exits_130_in_one_line_and_debug_shows_tracebacks(tmp_path, capsys, monkeypatch):
    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "evaluate_baselines", interrupted)
    assert cli.main(["train", *RESUMING, f"trainer.run_dir={tmp_path / 'run'}"]) == 130
    assert capsys.readouterr().err == ("metacontrast: interrupted (SIGINT); nothing half-written is left "
                                       "behind\n")
    assert not (tmp_path / "run" / "results.json").exists()
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", "train", *RESUMING, f"trainer.run_dir={tmp_path / 'run'}"])
    # SIGTERM outside training (a scheduler's stop during the baselines): 143, one line
    monkeypatch.setattr(trainer, "evaluate_baselines", lambda run: os.kill(os.getpid(), signal.SIGTERM))
    assert cli.main(["train", *RESUMING, f"trainer.run_dir={tmp_path / 'run'}"]) == 143
    assert capsys.readouterr().err == "metacontrast: stopped by SIGTERM; nothing half-written is left behind\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setenv("METACONTRAST_DEBUG", "1")
    with pytest.raises(ValueError, match="trainer.batch_size"):
        cli.main(["train", "trainer.batch_size=0"])


def test_eval_with_other_settings_measures_the_baselines_with_them(tmp_path):
    run_dir = tmp_path / "run"
    trained = trainer.fit(compose_config([*RESUMING, f"trainer.run_dir={run_dir}"]))
    checkpoint = list_checkpoints(run_dir / "checkpoints")[-1]
    same = trainer.evaluate_checkpoint(checkpoint, [])
    assert same["baselines_from"] == "checkpoint"
    # a run directory stands for its newest checkpoint, as for export
    assert cli.main(["eval", f"checkpoint={run_dir}"]) == 0
    by_dir = json.loads((run_dir / "eval" / "results.json").read_text())
    assert by_dir["metrics"] == same["metrics"] and by_dir["checkpoint"] == str(checkpoint)
    assert cli.main(["eval", f"checkpoint={tmp_path}"]) == 2
    assert same["metrics"]["random_init"] == trained["metrics"]["random_init"]
    changed = trainer.evaluate_checkpoint(checkpoint, ["eval.knn.k=1"])
    assert changed["baselines_from"] == "measured now" and changed["protocols"]["knn"]["k"] == 1
    # the baselines a fresh run with k=1 measures are the ones reported
    fresh = trainer.fit(compose_config([*RESUMING, "eval.knn.k=1", f"trainer.run_dir={tmp_path / 'k1'}"]))
    for baseline in ("random_init", "raw_pixels"):
        assert changed["metrics"][baseline] == fresh["metrics"][baseline]


def test_the_session_clock_adds_every_process(tmp_path):
    from metacontrast.run_dirs import SessionClock

    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "1-1.json").write_text(json.dumps({"started_at": 100.0, "last_seen_at": 130.0}))
    clock = SessionClock(tmp_path)
    total = clock.total_s()
    assert 30.0 <= total < 30.0 + (time.time() - clock.started) + 1.0
    assert os.path.exists(clock.path)


def test_the_lock_holder_removes_temporaries_a_killed_writer_left(tmp_path):
    from metacontrast.run_dirs import claim

    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / ".step-000000003.pt.k2j4.tmp", tmp_path / ".metrics.jsonl.x1.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    kept = tmp_path / "checkpoints" / "step-000000003.pt"
    kept.write_bytes(b"whole")
    with claim(compose_config([*RESUMING, f"trainer.run_dir={tmp_path}"])) as run_dir:
        assert run_dir == tmp_path
        assert not any(p.exists() for p in stale) and kept.read_bytes() == b"whole"



def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file() and p.name != ".lock"}


def test_resume_never_starts_a_new_directory_and_never_writes_into_an_existing_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    command = [*RESUMING, "trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.log_every=1",
               "evaluation.baselines=[]"]
    with pytest.raises(Interrupted):
        trainer.fit(compose_config(command), PluginManager(extra=[interrupt_at(3)]))
    (unfinished,) = (tmp_path / "runs").iterdir()
    before = _files(unfinished)
    fresh = trainer.fit(compose_config([*command, "trainer.resume=never"]))
    assert Path(fresh["run_dir"]).resolve() != unfinished.resolve() and fresh["steps"] == 6
    assert _step_rows(Path(fresh["run_dir"])) == [1, 2, 3, 4, 5, 6]
    assert _files(unfinished) == before  # not cut, not pruned, not resumed
    capsys.readouterr()
    # given the unfinished run's directory, a fresh start is refused, and the advice works
    for how in ("never", str(list_checkpoints(unfinished / "checkpoints")[-1])):
        assert cli.main(["train", *command, f"trainer.run_dir={unfinished}", f"trainer.resume={how}"]) == 2
        err = capsys.readouterr().err
        assert f"trainer.run_dir: {unfinished} holds a run already (its checkpoints reach step-000000002.pt)" in err
        assert "leave trainer.resume out to continue this run" in err
        assert _files(unfinished) == before
    assert cli.main(["train", *command, f"trainer.run_dir={unfinished}"]) == 0
    assert "at step 2" in capsys.readouterr().err and _step_rows(unfinished) == [1, 2, 3, 4, 5, 6]


def test_retention_never_deletes_the_checkpoint_just_written(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for step in (10, 20, 30):
        torch.save({"format": 1}, checkpoint_path(directory, step))
    written = checkpoint_path(directory, 4)
    torch.save({"format": 1}, written)
    prune(directory, keep=2, written=written)
    assert [p.name for p in list_checkpoints(directory)] == ["step-000000004.pt", "step-000000030.pt"]
    prune(directory, keep=1)
    assert [p.name for p in list_checkpoints(directory)] == ["step-000000030.pt"]


def _full_disk_run(run_dir: Path, capsys) -> str:
    overrides = [*RESUMING, f"trainer.run_dir={run_dir}", "trainer.checkpoint_every=1", "trainer.max_steps=3",
                 "logger=[jsonl]", "evaluation.baselines=[]"]
    assert cli.main(["train", *overrides]) == 1  # an operating-system error: exit 1, as the README says
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err and "enforce fail" not in err
    return err


def test_a_full_disk_during_a_checkpoint_is_the_os_error_with_exit_1(tmp_path, capsys, monkeypatch):
    """Simulated: the checkpoints' temporary files write to /dev/full (the kernel's ENOSPC)."""
    import metacontrast.checkpoint as checkpoint_module

    fail_with_enospc(monkeypatch, checkpoint_module)
    run_dir = tmp_path / "run"
    err = _full_disk_run(run_dir, capsys)
    assert f"could not write checkpoint {run_dir}/checkpoints/step-000000001.pt: No space left on device" in err
    assert list_checkpoints(run_dir / "checkpoints") == []
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_a_real_full_disk_says_so_and_the_same_command_resumes_once_there_is_space(small_tmpfs, capsys):
    import subprocess

    run_dir = small_tmpfs / "run"
    overrides = [*RESUMING, f"trainer.run_dir={run_dir}", "trainer.checkpoint_every=1", "trainer.max_steps=3",
                 "logger=[jsonl]", "evaluation.baselines=[]", "encoder.hidden=96"]
    assert cli.main(["train", *overrides]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(run_dir) in err and "enforce fail" not in err
    kept = list_checkpoints(run_dir / "checkpoints")
    for path in kept:
        load_safe(path)  # whatever is there is whole
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    assert cli.main(["train", *overrides]) == 0
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 3
