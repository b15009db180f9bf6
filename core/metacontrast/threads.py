"""How many threads a run uses, and how they wait: a fair share on a busy machine.

torch parallelises each CPU operation over OpenMP threads, one per core by default, and
every operation ends at a barrier where all of them must have finished. On a machine
where other processes compete for the cores, one of those threads is often descheduled:
the others reach the barrier and, with OpenMP's default active wait, spin there, burning
the very time slices the late thread needs. A step of thousands of small operations then
pays that at every one of them (docs/benchmarks.md, "the main job's step on a busy
machine", measures it). Two settings keep the step near its fair share:

- ``OMP_WAIT_POLICY=PASSIVE`` (set by ``prepare_environment`` before torch is imported,
  unless the environment already says otherwise): a thread that waits sleeps at once and
  gives its core away.
- threads from the cores the process can actually get (``cpu_budget``): its CPU affinity,
  capped by the cgroup's CPU quota (containers, CI runners and batch schedulers set one;
  ``os.cpu_count()`` sees the whole host).

``METACONTRAST_THREAD_POLICY=off`` leaves both to torch's defaults; ``trainer.threads``
still sets the thread count by hand.
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


def prepare_environment() -> None:
    """Before torch is imported (OpenMP reads it once, when torch loads it): waiting
    threads sleep instead of spinning, unless the environment sets a wait policy."""
    if policy_on():
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
