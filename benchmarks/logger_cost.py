"""What each logger costs a run: the training loop's time with a row logged every step
(``trainer.log_every=1``) and a checkpoint every 20 steps, and the whole process's wall
time (start-up included), against ``logger=[jsonl]`` alone.

W&B runs offline and MLflow on a local file store (nothing leaves the machine), both with
their default ``rows: checkpointed``. Every variant is a fresh ``metacontrast train``
process; the variants run in turn for ``--rounds`` rounds and the best round counts.

    .venv/bin/python benchmarks/logger_cost.py [--steps 100] [--rounds 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine, markdown_table, record

VARIANTS = {
    "jsonl": ["logger=[jsonl]"],
    "jsonl, tensorboard (default)": ["logger=[jsonl,tensorboard]"],
    "jsonl, wandb (offline)": ["logger=[jsonl,wandb]", "logger.wandb.mode=offline"],
    "jsonl, mlflow (file store)": ["logger=[jsonl,mlflow]"],
    "jsonl, tensorboard, wandb, mlflow": ["logger=[jsonl,tensorboard,wandb,mlflow]",
                                          "logger.wandb.mode=offline"],
}


def run_once(overrides: list[str], steps: int, scratch: Path) -> tuple[float, float]:
    """``(training loop s, process wall s)`` of one run."""
    run_dir = Path(tempfile.mkdtemp(dir=scratch))
    wandb_dirs = {f"WANDB_{k}_DIR": str(scratch / "wb") for k in ("CONFIG", "CACHE", "DATA")}
    env = {**os.environ, **wandb_dirs, "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "MLFLOW_TRACKING_URI": (scratch / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}
    cmd = [sys.executable, "-m", "metacontrast.cli", "train", "experiment=digits_simclr",
           f"trainer.max_steps={steps}", "trainer.log_every=1", "trainer.checkpoint_every=20", "eval=[]",
           "evaluation.baselines=[]", "trainer.progress=false", "trainer.resume=never",
           f"trainer.run_dir={run_dir}", *overrides]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
    return json.loads((run_dir / "results.json").read_text())["train_loop_s"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args()
    loops: dict[str, list[float]] = {name: [] for name in VARIANTS}
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for name, overrides in VARIANTS.items():
                loop, wall = run_once(overrides, args.steps, Path(scratch))
                loops[name].append(loop)
                walls[name].append(wall)
    base_loop, base_wall = min(loops["jsonl"]), min(walls["jsonl"])
    rows = []
    for name in VARIANTS:
        loop, wall = min(loops[name]), min(walls[name])
        per_step = 1000 * (loop - base_loop) / args.steps
        rows.append([name, f"{loop:.2f}", f"{max(loops[name]) / loop:.2f}", f"{loop / base_loop:.2f}",
                     f"{per_step:+.1f}", f"{wall:.1f}", f"{wall - base_wall:+.1f}"])
    header = ["loggers", "training loop s (best)", "slowest / best round", "vs jsonl", "ms per step vs jsonl",
              "process wall s", "process s vs jsonl"]
    table = markdown_table(header, rows)
    command = (f".venv/bin/python benchmarks/logger_cost.py --steps {args.steps} --rounds {args.rounds} "
               f"--write")
    body = (f"### Loggers: what each costs a run\n\n{table}\n\n{args.steps} steps of "
            f"`experiment=digits_simclr` (Conv-4, batch 128), a row every step, a checkpoint every 20 steps; "
            f"best of {args.rounds} rounds, each variant a fresh process. W&B offline, MLflow on a local "
            f"file store, both `rows: checkpointed`. Machine: {machine()}. Command: `{command}`.")
    print(body)
    if args.write:
        record("logger_cost", body)


if __name__ == "__main__":
    main()
