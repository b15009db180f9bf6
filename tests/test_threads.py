"""Threads that follow the machine's load: the decisions of ``LoadFollower`` on a scripted
machine (its clock, /proc/stat and CPU time given by the test), the one message a busy
machine gets, and the count kept in checkpoints and results.json."""

from __future__ import annotations

import json

import pytest
import torch

from metacontrast import threads
from metacontrast.checkpoint import list_checkpoints, load_safe
from metacontrast.config import compose_config
from metacontrast.threads import LoadFollower, read_cpu_busy
from metacontrast.trainer import fit

from .conftest import TINY


class Machine:
    """A scripted machine: each second, other processes use ``others`` cores and this one
    ``own`` cores; ``busy`` adds both up as /proc/stat would."""

    def __init__(self) -> None:
        self.t, self.busy, self.own = 0.0, 0.0, 0.0
        self.set_to: list[int] = []

    def run(self, seconds: float, others: float, own: float = 1.0) -> None:
        self.t += seconds
        self.busy += (others + own) * seconds
        self.own += own * seconds

    def follower(self, budget: int = 2, siblings: int = 1) -> LoadFollower:
        return LoadFollower(budget, budget, frozenset({0, 1}), siblings=siblings, interval_s=1.0,
                            read_busy=lambda cores: self.busy, process_time=lambda: self.own,
                            clock=lambda: self.t, set_threads=self.set_to.append)


def _steps(machine: Machine, follower: LoadFollower, seconds: int, others: float, start: int,
           own: float = 1.0) -> list[int | None]:
    changes = []
    for i in range(seconds):
        machine.run(1.0, others, own)
        changes.append(follower.at_step(start + i, 0.1))
    return changes


def test_the_count_follows_other_processes_after_two_agreeing_measurements(monkeypatch):
    monkeypatch.setattr(threads, "busiest_processes", lambda: [("pytest", 1.0)])
    m = Machine()
    f = m.follower()
    assert _steps(m, f, 3, others=0.0, start=1) == [None, None, None]
    assert _steps(m, f, 1, others=1.0, start=4) == [None]  # one busy second: not yet
    assert _steps(m, f, 1, others=0.0, start=5) == [None]  # it passed
    assert _steps(m, f, 2, others=1.0, start=6) == [None, 1]  # two in a row: one thread
    assert m.set_to == [1] and f.changes == [(7, 1)]
    assert _steps(m, f, 2, others=1.4, start=8) == [None, None]  # never below one
    assert _steps(m, f, 2, others=0.1, start=10) == [None, 2]  # they left: both cores again
    assert m.set_to == [1, 2] and f.state() == {"policy": "follow_load", "budget": 2, "threads": 2,
                                                "changes": [[7, 1], [11, 2]]}


def test_sibling_ranks_are_not_counted_as_other_processes():
    m = Machine()
    f = m.follower(budget=2, siblings=2)
    # this rank uses 1 core, its sibling as much: the machine's 2 busy cores are theirs
    assert _steps(m, f, 4, others=1.0, own=1.0, start=1) == [None] * 4
    assert f.others == pytest.approx(0.0)


def test_a_busy_machine_is_said_once_with_the_busiest_processes(monkeypatch, capsys):
    monkeypatch.setattr(threads, "busiest_processes", lambda: [("pytest", 1.2), ("python", 0.5)])
    m = Machine()
    f = m.follower()
    for step in range(1, 4):  # quiet: steps of 0.1 s
        m.run(1.0, others=0.0)
        f.at_step(step, 0.1)
    for step in range(4, 9):  # busy and four times slower
        m.run(1.0, others=1.7)
        f.at_step(step, 0.4)
    err = capsys.readouterr().err
    assert err.count("metacontrast: the machine is busy") == 1
    assert "other processes keep 1.7 of this run's 2 cores busy (the busiest, cores: pytest 1.2, python 0.5)" in err
    assert "steps take 4.0x their quiet time" in err and "trainer.threads=1" in err


def test_a_busy_machine_that_does_not_slow_the_run_is_not_reported(monkeypatch, capsys):
    monkeypatch.setattr(threads, "busiest_processes", lambda: [])
    m = Machine()
    f = m.follower()
    for step in range(1, 4):
        m.run(1.0, others=0.0)
        f.at_step(step, 0.1)
    for step in range(4, 8):
        m.run(1.0, others=1.0)
        f.at_step(step, 0.11)
    assert "busy" not in capsys.readouterr().err


def test_proc_stat_busy_time_of_the_chosen_cores(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 4 5 6 7 8 0 0\n"
                    "cpu0 100 10 50 900 20 3 2 40 0 0\n"
                    "cpu1 200 0 100 800 10 5 5 60 0 0\n"
                    "intr 12345\n")
    tick = __import__("os").sysconf("SC_CLK_TCK")
    # user + nice + system + irq + softirq; idle, iowait and steal are not busy
    assert read_cpu_busy(frozenset({0}), stat) == pytest.approx((100 + 10 + 50 + 3 + 2) / tick)
    assert read_cpu_busy(frozenset({0, 1}), stat) == pytest.approx((165 + 310) / tick)
    assert read_cpu_busy(frozenset({5}), stat) is None
    assert read_cpu_busy(frozenset({0}), tmp_path / "missing") is None


def test_the_default_follows_the_load_and_a_pinned_count_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("METACONTRAST_THREAD_POLICY", "on")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        results = fit(compose_config([*TINY, f"trainer.run_dir={tmp_path / 'auto'}", "trainer.checkpoint_every=1"]))
        if threads.cpu_budget() >= 2:
            assert results["threads"]["policy"] == "follow_load"
            saved = load_safe(list_checkpoints(tmp_path / "auto" / "checkpoints")[-1])["threads"]
            assert saved["policy"] == "follow_load" and saved["threads"] >= 1
        pinned = fit(compose_config([*TINY, f"trainer.run_dir={tmp_path / 'pinned'}", "trainer.threads=1"]))
        assert pinned["threads"] == {"policy": "pinned", "threads": 1, "changes": []}
        stored = json.loads((tmp_path / "pinned" / "results.json").read_text())["threads"]
        assert stored["policy"] == "pinned"
    finally:
        torch.set_num_threads(before)


def test_a_resumed_run_starts_from_the_count_its_checkpoint_holds():
    m = Machine()
    f = m.follower()
    f.restore({"policy": "follow_load", "threads": 1, "changes": [[7, 1]]})
    assert f.threads == 1 and m.set_to == [1] and f.changes == [(7, 1)]
    f.restore({"policy": "pinned", "threads": 2})  # another policy's checkpoint: left as it is
    assert f.threads == 1
