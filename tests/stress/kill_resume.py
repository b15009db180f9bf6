"""Stress check: training killed with SIGKILL at random moments, saves included, and resumed
each time by the same command, ends with the parameters of an uninterrupted run.

A small SimCLR run (digits, Conv-4) checkpoints every ``--checkpoint-every`` steps. Each
attempt starts the same command, waits until the run makes progress, then kills it
after a random delay (so kills land in steps, in checkpoint writes, in metric writes).
After ``--kills`` kills the command runs to the end. The final checkpoint must equal,
tensor for tensor, that of one uninterrupted run; ``metrics.jsonl`` must hold each step
once, in order; no temporary file may be left.

    .venv/bin/python -m tests.stress.kill_resume --kills 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from metacontrast.checkpoint import list_checkpoints, load_safe

OVERRIDES = ["experiment=digits_simclr", "trainer.device=cpu", "trainer.batch_size=32", "trainer.epochs=1000",
             "trainer.log_every=1", "trainer.progress=false", "logger=[jsonl]",
             "evaluation.baselines=[]", "eval=[knn]", "eval.knn.k=5", "evaluation.train_subset=200",
             "data.test_subset=100"]


def command(run_dir: Path, steps: int, every: int) -> list[str]:
    # the thread count pinned: the default follows the machine's load, and a run whose count
    # changed is not bit-identical to the uninterrupted one this check compares with
    from metacontrast.threads import cpu_budget

    return [sys.executable, "-m", "metacontrast.cli", "train", *OVERRIDES, f"trainer.max_steps={steps}",
            f"trainer.checkpoint_every={every}", f"trainer.run_dir={run_dir}", f"trainer.threads={cpu_budget()}"]


def progress(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.is_file() else 0


def final_state(run_dir: Path) -> dict:
    return load_safe(list_checkpoints(run_dir / "checkpoints")[-1])


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--checkpoint-every", type=int, default=3)
    parser.add_argument("--max-delay", type=float, default=0.6, help="seconds after progress is seen")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        straight, killed = Path(tmp) / "straight", Path(tmp) / "killed"
        subprocess.run(command(straight, args.steps, args.checkpoint_every), env=env, check=True,
                       capture_output=True)
        kills = in_writes = 0
        while kills < args.kills:
            before = progress(killed)
            proc = subprocess.Popen(command(killed, args.steps, args.checkpoint_every), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            while progress(killed) <= before and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, args.max_delay))
            if proc.poll() is not None:
                err = proc.stderr.read()
                if proc.returncode != 0:
                    sys.exit(f"attempt {kills + 1} failed on its own ({proc.returncode}):\n{err[-3000:]}")
                print(f"the run finished after {kills} kills; raise --steps for more", flush=True)
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            newest = list_checkpoints(killed / "checkpoints")
            torn = [p.name for p in killed.rglob(".*.tmp")]  # writes the kill cut short
            in_writes += bool(torn)
            print(f"kill {kills}: at metrics row {progress(killed)}, newest checkpoint "
                  f"{newest[-1].name if newest else 'none'}{', inside a write: ' + ', '.join(torn) if torn else ''}",
                  flush=True)
        done = subprocess.run(command(killed, args.steps, args.checkpoint_every), env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the final resume failed:\n{done.stderr[-3000:]}")
        a, b = final_state(straight), final_state(killed)
        checks = {
            "parameters": same(a["model"], b["model"]),
            "optimizer state": same(a["optimizer"], b["optimizer"]),
            "position": a["position"] == b["position"],
        }
        rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows if "loss" in r]
        checks["metric rows once each, in order"] = steps == list(range(1, args.steps + 1))
        leftovers = [p.name for p in killed.rglob("*.tmp")]
        checks["no temporary files left"] = not leftovers
        for name, ok in checks.items():
            print(f"{name}: {'same' if ok else 'DIFFERENT'}")
        print(f"{kills} kills ({in_writes} inside a write); "
              f"{'all checks hold' if all(checks.values()) else 'FAILED'}")
        sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
