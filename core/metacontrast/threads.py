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

The thread count is fixed for the run, never changed with the load: results depend on it
(a different count sums in a different order), and runs with the same seed and count are
bit-identical. On a machine that stays busy, ``trainer.threads=1`` avoids the barriers
altogether and was within the fair share at every load measured.

``METACONTRAST_THREAD_POLICY=off`` leaves both to torch's defaults; ``trainer.threads``
sets the thread count by hand.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

POLICY_ENV = "METACONTRAST_THREAD_POLICY"
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def policy_on() -> bool:
    return os.environ.get(POLICY_ENV, "on").lower() not in ("off", "0", "false")


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
    elif policy_on() and "OMP_NUM_THREADS" not in os.environ:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, cpu_budget() // local_world))
    return torch.get_num_threads()
