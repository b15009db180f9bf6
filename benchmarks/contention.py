"""The main job's train step on a busy machine: 0, 1, 2 and 4 CPU-bound competitors.

Each cell runs the README's main job (``experiment=digits_simclr``: SimCLR, Conv-4, batch
128 of the embedded digits) in ``--rounds`` fresh processes while ``n`` processes spin on
the CPU, and takes the median of their median step times (a step is timed as
``trainer.take_step`` takes it, after two warm-up steps; at least ``--steps`` steps or
``--seconds`` of stepping). The
fair-share expectation is the quiet step x (1 + competitors / cores): what the step would
take if the process got its share of the cores and lost nothing else.

Variants: how the process sets its threads. ``default``: what ``metacontrast train`` does
(``metacontrast.threads``: threads from the cores the process can get, OpenMP spinning
100,000 rounds at a barrier); ``spin``: torch's own defaults (one thread per core,
GNU OpenMP's 300,000 rounds); ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once);
``1 thread``: ``trainer.threads=1``.

    .venv/bin/python benchmarks/contention.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.stress.load import busy  # noqa: E402

VARIANTS = {
    "default": {"env": {}, "overrides": []},
    "spin": {"env": {"METACONTRAST_THREAD_POLICY": "off"}, "overrides": []},
    "passive": {"env": {"METACONTRAST_THREAD_POLICY": "off", "OMP_WAIT_POLICY": "PASSIVE"}, "overrides": []},
    "1 thread": {"env": {}, "overrides": ["trainer.threads=1"]},
}


def worker(args: argparse.Namespace) -> None:
    """In the measured process: build the main job and time its steps."""
    from metacontrast.threads import prepare_environment

    prepare_environment()  # as `metacontrast train` does, before torch is imported
    import torch

    from metacontrast import trainer
    from metacontrast.config import compose_config
    from metacontrast.records import Batch

    overrides = json.loads(args.overrides)
    cfg = compose_config(["experiment=digits_simclr", "trainer.progress=false", "trainer.tensorboard=false",
                          "trainer.device=cpu", *overrides])
    run = trainer.setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    b = int(cfg.trainer.batch_size)
    index = torch.arange(b)
    batch = Batch(images=run.data.train_images[index], index=index)
    for _ in range(2):
        trainer.take_step(run, step_fn, batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < args.steps or (time.perf_counter() - started < args.seconds and len(times) < 200):
        t0 = time.perf_counter()
        trainer.take_step(run, step_fn, batch)
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - started > 4 * args.seconds:
            break
    print(json.dumps({"median": statistics.median(times), "steps": len(times),
                      "threads": torch.get_num_threads()}))


def measure(variant: str, competitors: int, args: argparse.Namespace) -> dict:
    """The median of ``args.rounds`` fresh processes' median step times."""
    spec = VARIANTS[variant]
    env = {**os.environ, **spec["env"]}
    command = [sys.executable, __file__, "--worker", "--overrides", json.dumps(spec["overrides"]),
               "--steps", str(args.steps), "--seconds", str(args.seconds)]
    found = []
    for _ in range(args.rounds):
        with busy(competitors):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            sys.exit(f"{variant} with {competitors} competitors failed:\n{done.stderr[-3000:]}")
        found.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"median": statistics.median(f["median"] for f in found), "threads": found[0]["threads"],
            "steps": sum(f["steps"] for f in found)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    p.add_argument("--loads", default="0,1,2,4")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per cell; the median counts")
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from _report import machine, markdown_table, record

    cores = len(os.sched_getaffinity(0))
    loads = [int(x) for x in args.loads.split(",")]
    variants = args.variants.split(",")
    quiet: dict[str, float] = {}
    rows = []
    for n in loads:
        for v in variants:
            m = measure(v, n, args)
            if n == 0:
                quiet[v] = m["median"]
            base = quiet.get(v, m["median"])
            fair = base * (1 + n / cores)
            step = m["median"]
            rows.append([str(n), v, str(m["threads"]), f"{step * 1000:.0f}", f"{step / base:.1f}",
                         f"{fair * 1000:.0f}", f"{step / fair:.2f}", str(m["steps"])])
            print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(["competitors", "variant", "threads", "step (ms, median)", "vs its quiet step",
                            "fair share (ms)", "step / fair share", "steps timed"], rows)
    body = (f"### The main job's step on a busy machine\n\n"
            f"Command: `.venv/bin/python benchmarks/contention.py --write`\n\nMachine: {machine()}. "
            f"The README's main job (`experiment=digits_simclr`, batch 128), {args.rounds} fresh "
            f"processes per cell (the median of their median steps) "
            f"while `n` processes spin on the {cores} cores; fair share = the variant's quiet step x "
            f"(1 + n / {cores}).\n\n{table}")
    print(body)
    if args.write:
        record("contention_cpu", body)


if __name__ == "__main__":
    main()
