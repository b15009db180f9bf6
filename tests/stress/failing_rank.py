"""Stress check: a failing rank ends a torchrun job with its own traceback, on a loaded
machine, every time.

Runs the scenario of ``tests/test_faults.py::test_a_failing_rank_ends_the_job_with_its_traceback``
(2 ranks, rank 1 raises at step 2) ``--runs`` times while ``--load`` CPU-bound processes
compete for the cores, and counts the runs whose output carries the failing rank's
``RuntimeError`` and traceback, and those where torchrun could not read an error file
(``JSONDecodeError``).

    .venv/bin/python -m tests.stress.failing_rank --runs 20 --load 4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.stress.load import busy

REPO = Path(__file__).resolve().parents[2]
TINY = ["experiment=digits_simclr", "trainer=debug", "trainer.device=cpu", "trainer.resume=never",
        "eval.knn.k=5", "eval.linear.max_iter=5", "evaluation.train_subset=200", "data.test_subset=100",
        "trainer.batch_size=16", "trainer.epochs=1000", "trainer.max_steps=1000", "trainer.progress=false",
        "evaluation.baselines=[]"]
MESSAGE = "RuntimeError: injected failure on rank 1 at step 2"


def one_run(run_dir: Path, code: str = "", slow_report: float = 0.0) -> tuple[bool, bool, float]:
    """``code``: directories put before the installed packages (another checkout's
    ``core`` and plugins, to run the scenario on other code)."""
    path = os.pathsep.join([*filter(None, code.split(os.pathsep)), str(REPO / "tests" / "helpers")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path,
           "METACONTRAST_PLUGINS": "fault_plugin", "FAULT_RAISE": "1:2"}
    if slow_report:
        env["FAULT_SLOW_REPORT"] = str(slow_report)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "metacontrast.cli", "train", *TINY, f"trainer.run_dir={run_dir}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    log = done.stdout + done.stderr
    ok = done.returncode != 0 and MESSAGE in log and "Traceback" in log
    return ok, "JSONDecodeError" in log, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--load", type=int, default=4, help="CPU-bound competitors")
    parser.add_argument("--slow-report", type=float, default=0.0,
                        help="seconds added to formatting the failing rank's traceback")
    parser.add_argument("--code", default="", help="PYTHONPATH entries to run other code (os.pathsep-separated)")
    args = parser.parse_args()
    good = torn = 0
    with busy(args.load), tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            ok, json_error, seconds = one_run(Path(tmp) / f"run{i}", args.code, args.slow_report)
            good += ok
            torn += json_error
            print(f"run {i + 1}/{args.runs}: {'traceback reached the user' if ok else 'MISSING'}"
                  f"{', torchrun read a torn error file' if json_error else ''} ({seconds:.0f} s)", flush=True)
    print(f"{good}/{args.runs} runs ended with the failing rank's traceback; {torn} torn error files; "
          f"load: {args.load} CPU-bound processes on {os.cpu_count()} cores")
    sys.exit(0 if good == args.runs else 1)


if __name__ == "__main__":
    main()
