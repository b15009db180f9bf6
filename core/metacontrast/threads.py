"""How many threads a run uses, and how long they spin: a fairer share on a busy machine.

torch parallelises each CPU operation over OpenMP threads, one per core by default, and
every operation ends at a barrier where all of them must have finished. On a machine
where other processes compete for the cores, one of those threads is often descheduled:
the others reach the barrier and, with GNU OpenMP's default, spin there for some 300,000
rounds before they sleep, burning the time slices the late thread needs. A step of
thousands of small operations pays that at every one of them: the README's main job ran
16 times slower with 4 competitors on 2 cores, where a fair share is 3 times
(docs/benchmarks.md, "the main job's step on a busy machine"). Two defaults:

- ``GOMP_SPINCOUNT=100000`` (set by ``prepare_environment`` before torch is imported,
  unless the environment sets ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``): a waiting
  thread gives its core away three times sooner. On a quiet machine this costs nothing
  measurable; sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) cost 20% there.
- threads from the cores the process can actually get (``cpu_budget``): its CPU affinity,
  capped by the cgroup's CPU quota (containers, CI runners and batch schedulers set one;
  ``os.cpu_count()`` sees the whole host), shared among the processes torchrun started.

- threads that follow the machine's load (``LoadFollower``): another torch job beside this
  one (a second training, a test suite, a notebook) brings its own thread pool, and two
  pools of two threads on two cores wait at each other's barriers: the main job ran 40
  times slower than quiet beside the test suite. At step boundaries, about once a second,
  the follower reads how much of this process's cores other processes used (``/proc/stat``
  less this process's own CPU time) and gives them that many cores: one thread fewer
  per core they keep busy (never below one), and back when they leave. It says once,
  naming the busiest other processes, when the machine is busy enough to slow the run.

Results depend on the thread count (a different count sums in a different order): a run
whose threads followed the load is not bit-identical to a quiet one. With
``trainer.threads=N`` the count is pinned: runs with the same seed and count are
bit-identical and resume exactly. The count in use is stored in each checkpoint (a
resumed run starts from it) and every change is listed in ``results.json`` (``threads``).

``METACONTRAST_THREAD_POLICY``: ``on`` (the default: all of the above), ``fixed`` (threads
from the cores, never changed with the load), ``off`` (torch's defaults for both).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

POLICY_ENV = "METACONTRAST_THREAD_POLICY"
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def policy() -> str:
    """``on``, ``fixed`` or ``off`` (``METACONTRAST_THREAD_POLICY``; unknown values: ``on``)."""
    value = os.environ.get(POLICY_ENV, "on").lower()
    if value in ("off", "0", "false"):
        return "off"
    return "fixed" if value == "fixed" else "on"


def policy_on() -> bool:
    return policy() != "off"


def cgroup_cpu_limit() -> float | None:
    """The cgroup's CPU quota in cores (``None``: no quota, or none readable)."""
    try:
        quota, period = CGROUP_V2.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = (int(p.read_text()) for p in CGROUP_V1)
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def cpu_budget() -> int:
    """The cores this process can use: its affinity, capped by the cgroup quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


SPIN_COUNT = "100000"


def prepare_environment() -> None:
    """Before torch is imported (OpenMP reads it once, when torch loads it): waiting
    threads spin ``SPIN_COUNT`` rounds before they sleep, unless the environment sets a
    spin count or a wait policy."""
    if policy_on() and "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def apply_threads(setting: int) -> int:
    """``trainer.threads``: that many threads when > 0. Otherwise, with the policy on and
    no ``OMP_NUM_THREADS`` in the environment, the process's ``cpu_budget`` shared among
    the processes torchrun started on this machine (``LOCAL_WORLD_SIZE``); else torch's
    default. Returns the count in use."""
    import torch

    if setting > 0:
        torch.set_num_threads(setting)
    elif policy() != "off" and "OMP_NUM_THREADS" not in os.environ:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, cpu_budget() // local_world))
    return torch.get_num_threads()


def automatic_threads(setting: int) -> bool:
    """Whether the thread count is metacontrast's to choose (and so to follow the load):
    no ``trainer.threads``, no ``OMP_NUM_THREADS``, the policy ``on``."""
    return setting <= 0 and policy() == "on" and "OMP_NUM_THREADS" not in os.environ


CPU_LINE_BUSY = (0, 1, 2, 5, 6)  # user, nice, system, irq, softirq (idle, iowait, steal are not)


def read_cpu_busy(cores: frozenset[int], stat: Path = Path("/proc/stat")) -> float | None:
    """Seconds the CPUs ``cores`` spent busy since boot (every process), or None where
    ``/proc/stat`` cannot be read."""
    try:
        text = stat.read_text()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    found = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        fields = rest.split()
        busy += sum(int(fields[i]) for i in CPU_LINE_BUSY if i < len(fields))
        found += 1
    return busy / tick if found else None


def busiest_processes(seconds: float = 0.3, limit: int = 3) -> list[tuple[str, float]]:
    """Other processes' names and the cores each used over ``seconds`` (most first)."""
    def snapshot() -> dict[int, tuple[str, float]]:
        tick = os.sysconf("SC_CLK_TCK")
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            name = text[text.find("(") + 1:text.rfind(")")]
            fields = text[text.rfind(")") + 2:].split()
            found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
        return found

    import time

    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    used = [(name, (cpu - before[pid][1]) / seconds) for pid, (name, cpu) in after.items() if pid in before]
    return sorted((u for u in used if u[1] > 0.05), key=lambda u: -u[1])[:limit]


class LoadFollower:
    """Threads that follow the machine's load, decided at step boundaries (``at_step``).

    Every ``interval_s`` it measures ``others``: the cores of this process's CPU set that
    other processes kept busy (their busy time less this process's CPU time, less as much
    again for each sibling rank torchrun started on the machine). The count it wants is
    ``budget - round(others)`` (at least 1); it changes the count when two measurements
    in a row want the same new count. ``read_busy``, ``process_time`` and ``clock`` are the
    machine's (tests give their own)."""

    def __init__(self, budget: int, threads: int, cores: frozenset[int], *, siblings: int = 1,
                 interval_s: float = 1.0, read_busy: Any = None, process_time: Any = None,
                 clock: Any = None, set_threads: Any = None) -> None:
        import time

        import torch

        self.budget, self.threads, self.cores = budget, threads, cores
        self.siblings = max(1, siblings)
        self.interval_s = interval_s
        self.read_busy = read_busy or read_cpu_busy
        self.process_time = process_time or time.process_time
        self.clock = clock or time.monotonic
        self.set_threads = set_threads or torch.set_num_threads
        self.changes: list[tuple[int, int]] = []  # (step, threads from then on)
        self.others = 0.0
        self.quiet_step_s: float | None = None
        self.window_steps: list[float] = []
        self.wanted: int | None = None
        self.warned = False
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float | None]:
        return self.clock(), self.process_time(), self.read_busy(self.cores)

    def at_step(self, step: int, step_s: float) -> int | None:
        """Called after optimizer step ``step`` (which took ``step_s``): the new thread count
        when it changes, else None."""
        self.window_steps.append(step_s)
        now = self.clock()
        if now - self._last[0] < self.interval_s:
            return None
        then, own_then, busy_then = self._last
        self._last = sample = (now, self.process_time(), self.read_busy(self.cores))
        if busy_then is None or sample[2] is None:
            return None
        wall = sample[0] - then
        own = (sample[1] - own_then) * self.siblings
        self.others = max(0.0, (sample[2] - busy_then - own) / wall)
        steps, self.window_steps = sorted(self.window_steps), []
        median = steps[len(steps) // 2]
        if self.others < 0.25 and self.threads == self.budget:
            self.quiet_step_s = median if self.quiet_step_s is None else min(self.quiet_step_s, median)
        if not self.warned and self.others >= 0.75:
            self._warn(median)
        want = max(1, min(self.budget, self.budget - int(self.others + 0.5)))
        if want == self.threads:
            self.wanted = None
            return None
        if self.wanted != want:
            self.wanted = want
            return None
        self.wanted = None
        self.threads = want
        self.set_threads(want)
        self.changes.append((step, want))
        return want

    def _warn(self, median_s: float) -> None:
        import sys

        slower = median_s / self.quiet_step_s if self.quiet_step_s else None
        if slower is not None and slower < 1.5:
            return
        self.warned = True
        busiest = busiest_processes()
        names = ", ".join(f"{name} {used:.1f}" for name, used in busiest) or "short-lived ones"
        speed = f"; steps take {slower:.1f}x their quiet time" if slower else ""
        print(f"metacontrast: the machine is busy: other processes keep {self.others:.1f} of this run's "
              f"{self.budget} cores busy (the busiest, cores: {names}){speed}. The run leaves them their "
              f"share (fewer threads while they run; results then differ from a quiet run's in the last "
              f"bits). trainer.threads=1 pins one thread for repeatable results; one heavy job at a time "
              f"is fastest.", file=sys.stderr, flush=True)

    def state(self) -> dict[str, Any]:
        return {"policy": "follow_load", "budget": self.budget, "threads": self.threads,
                "changes": [list(c) for c in self.changes]}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Resume with the count in use when the checkpoint was written."""
        if not state or state.get("policy") != "follow_load":
            return
        self.threads = max(1, min(self.budget, int(state.get("threads", self.threads))))
        self.set_threads(self.threads)
        self.changes = [(int(a), int(b)) for a, b in state.get("changes", [])]


def load_follower(setting: int, device_type: str) -> LoadFollower | None:
    """A ``LoadFollower`` where the thread count is automatic on the CPU and more than one
    thread is in use; None elsewhere (``trainer.threads`` pinned, a GPU run, one core)."""
    import torch

    if device_type != "cpu" or not automatic_threads(setting):
        return None
    threads = torch.get_num_threads()
    if threads < 2:
        return None
    try:
        cores = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    siblings = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if read_cpu_busy(cores) is None:
        return None
    return LoadFollower(threads, threads, cores, siblings=siblings)
