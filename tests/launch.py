"""Run the command line in subprocesses (plain, or under torchrun) with the fault plugin."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO

# a subprocess still running after this long has hung: the test fails. Generous on purpose:
# on a machine loaded with other work the same job can take many times its quiet time, and
# a guard must not turn slowness into a failure (every job here ends in seconds when quiet)
HANG_GUARD_S = 900


def cli_command(overrides: list[str], nproc: int = 0, restarts: int = 0) -> list[str]:
    """``nproc`` 0: one plain process; otherwise ``torchrun --nproc_per_node=nproc``."""
    if nproc == 0:
        return [sys.executable, "-m", "metacontrast.cli", "train", *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            f"--max-restarts={restarts}", "-m", "metacontrast.cli", "train", *overrides]


def fault_env(**faults: str) -> dict[str, str]:
    """The environment that loads ``tests/helpers/fault_plugin.py``; ``faults`` are its
    ``FAULT_*`` variables (``raise_`` -> ``FAULT_RAISE``)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests" / "helpers"),
            "METACONTRAST_PLUGINS": "fault_plugin",
            **{f"FAULT_{k.rstrip('_').upper()}": v for k, v in faults.items()}}


def launch_cli(overrides: list[str], *, nproc: int = 0, restarts: int = 0,
               **faults: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(overrides, nproc, restarts), capture_output=True, text=True,
                          env=fault_env(**faults), timeout=HANG_GUARD_S)


def output(done: subprocess.CompletedProcess) -> str:
    return done.stdout[-3000:] + done.stderr[-6000:]
