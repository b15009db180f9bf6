"""The main job's train step beside other jobs: spinning processes, and other torch jobs.

Each cell runs the README's main job (``experiment=digits_simclr``: SimCLR, Conv-4, batch
128 of the embedded digits) in ``--rounds`` fresh processes beside ``n`` competitors and
takes the median of their median step times (a step timed as ``trainer.take_step`` takes
it, the thread policy consulted after every step as the training loop does, after
``--warmup`` seconds of steps; then ``--seconds`` of steps).

Competitors:
- ``spinner``: a Python loop (one core each); fair share = quiet step x (1 + n / cores).
- ``training``: a second metacontrast training (the main job, its own default policy).
- ``suite``: the test suite's trainer tests in a loop (pytest; torch with its thread count
  fixed, as the suite runs).
A torch competitor wants every core, as this job does: the fair share of ``n`` of them is
the quiet step x (1 + n).

Variants: how the measured process sets its threads. ``default``: what ``metacontrast
train`` does (threads from the cores it can get, OpenMP spinning 100,000 rounds, the count
following the load); ``fixed``: the same without following the load
(``METACONTRAST_THREAD_POLICY=fixed``); ``spin``: torch's own defaults; ``1 thread``:
``trainer.threads=1``.

    .venv/bin/python benchmarks/contention.py --write
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.stress.load import busy  # noqa: E402

VARIANTS = {
    "default": {"env": {"METACONTRAST_THREAD_POLICY": "on"}, "overrides": []},
    "fixed": {"env": {"METACONTRAST_THREAD_POLICY": "fixed"}, "overrides": []},
    "spin": {"env": {"METACONTRAST_THREAD_POLICY": "off"}, "overrides": []},
    "passive": {"env": {"METACONTRAST_THREAD_POLICY": "off", "OMP_WAIT_POLICY": "PASSIVE"}, "overrides": []},
    "1 thread": {"env": {}, "overrides": ["trainer.threads=1"]},
}
TORCH_START_S = 20.0  # a torch competitor imports torch and builds its run before it loads the cores


def _training(scratch: Path, i: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "metacontrast.cli", "train", "experiment=digits_simclr",
               "trainer.max_steps=1000000", "trainer.epochs=100000", "trainer.progress=false",
               "logger=[jsonl]", "trainer.checkpoint_every=0", "evaluation.baselines=[]",
               f"trainer.run_dir={scratch / f'competitor-{i}'}"]
    env = {k: v for k, v in os.environ.items() if k != "METACONTRAST_THREAD_POLICY"}
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _suite(scratch: Path, i: int) -> subprocess.Popen:
    loop = (f"while true; do {sys.executable} -m pytest -q -p no:cacheprovider tests/test_trainer.py "
            f"--basetemp={scratch / f'suite-{i}'} >/dev/null 2>&1; done")
    return subprocess.Popen(["bash", "-c", loop], cwd=REPO, start_new_session=True)


@contextlib.contextmanager
def competitors(kind: str, n: int) -> Iterator[None]:
    """``n`` competitors of ``kind`` running until the block ends."""
    if kind == "spinner" or n == 0:
        with busy(n):
            yield
        return
    import signal

    with tempfile.TemporaryDirectory() as scratch:
        start = _training if kind == "training" else _suite
        procs = [start(Path(scratch), i) for i in range(n)]
        try:
            time.sleep(TORCH_START_S)
            yield
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            for p in procs:
                p.wait()


def worker(args: argparse.Namespace) -> None:
    """In the measured process: build the main job and time its steps."""
    from metacontrast.threads import prepare_environment

    prepare_environment()  # as `metacontrast train` does, before torch is imported
    import torch

    from metacontrast import trainer
    from metacontrast.config import compose_config
    from metacontrast.records import Batch

    overrides = json.loads(args.overrides)
    cfg = compose_config(["experiment=digits_simclr", "trainer.progress=false", "logger=[jsonl]",
                          "trainer.device=cpu", *overrides])
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    b = int(cfg.trainer.batch_size)
    index = torch.arange(b)
    batch = Batch(images=run.data.train_images[index], index=index)
    step = 0

    def one_step() -> float:
        nonlocal step
        t0 = time.perf_counter()
        trainer.take_step(run, step_fn, batch)
        took = time.perf_counter() - t0
        step += 1
        if run.threads is not None:  # as the training loop does at each step boundary
            run.threads.at_step(step, took)
        return took

    warm = time.perf_counter()
    while step < 2 or time.perf_counter() - warm < args.warmup:
        one_step()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < args.steps or (time.perf_counter() - started < args.seconds and len(times) < 400):
        times.append(one_step())
        if len(times) >= 3 and time.perf_counter() - started > 4 * args.seconds:
            break
    print(json.dumps({"median": statistics.median(times), "steps": len(times),
                      "threads": torch.get_num_threads()}))


def measure(variant: str, kind: str, n: int, args: argparse.Namespace) -> dict:
    """The median of ``args.rounds`` fresh processes' median step times."""
    spec = VARIANTS[variant]
    env = {**os.environ, **spec["env"]}
    command = [sys.executable, __file__, "--worker", "--overrides", json.dumps(spec["overrides"]),
               "--steps", str(args.steps), "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    found = []
    for _ in range(args.rounds):
        with competitors(kind, n):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            sys.exit(f"{variant} with {n} {kind} competitors failed:\n{done.stderr[-3000:]}")
        found.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"median": statistics.median(f["median"] for f in found), "threads": found[0]["threads"],
            "steps": sum(f["steps"] for f in found)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    p.add_argument("--loads", default="spinner:1,spinner:2,training:1,training:2,suite:1",
                   help="competitor kind:count cells (kinds: spinner, training, suite)")
    p.add_argument("--variants", default="default,fixed,1 thread")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of steps before timing")
    p.add_argument("--rounds", type=int, default=1, help="fresh processes per cell; the median counts")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from _report import machine, markdown_table, record

    cores = len(os.sched_getaffinity(0))
    cells = [(kind, int(n)) for kind, n in (c.split(":") for c in args.loads.split(","))]
    variants = args.variants.split(",")
    quiet = {v: measure(v, "spinner", 0, args)["median"] for v in variants}
    rows = [["none", "0", v, "", f"{quiet[v] * 1000:.0f}", "1.0", f"{quiet[v] * 1000:.0f}", "1.00", ""]
            for v in variants]
    for r in rows:
        print(" | ".join(r), flush=True)
    for kind, n in cells:
        for v in variants:
            m = measure(v, kind, n, args)
            base = quiet[v]
            fair = base * (1 + n / cores) if kind == "spinner" else base * (1 + n)
            step = m["median"]
            rows.append([kind, str(n), v, str(m["threads"]), f"{step * 1000:.0f}", f"{step / base:.1f}",
                         f"{fair * 1000:.0f}", f"{step / fair:.2f}", str(m["steps"])])
            print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(["competitors", "n", "variant", "threads at the end", "step (ms, median)",
                            "vs its quiet step", "fair share (ms)", "step / fair share", "steps timed"], rows)
    body = (f"### The main job's step on a busy machine\n\n"
            f"Command: `.venv/bin/python benchmarks/contention.py --write`\n\nMachine: {machine()}. "
            f"The README's main job (`experiment=digits_simclr`, batch 128), {args.rounds} fresh process(es) "
            f"per cell, {args.warmup:.0f} s of steps before {args.seconds:.0f} s timed (median step). "
            f"Competitors: `spinner` (a Python loop; fair share = quiet x (1 + n / {cores})), `training` (a "
            f"second metacontrast training of the same job, default policy) and `suite` (pytest on "
            f"tests/test_trainer.py in a loop); a torch competitor wants every core, as this job does: "
            f"fair share = quiet x (1 + n). Variants: `default` (threads follow the load), `fixed` (the "
            f"previous default: threads from the cores, never changed), `1 thread` "
            f"(`trainer.threads=1`).\n\n{table}")
    print(body)
    if args.write:
        record("contention_cpu", body)


if __name__ == "__main__":
    main()
