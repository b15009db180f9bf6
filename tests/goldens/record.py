"""Goldens of every method's first two train steps and of the main job's results.

A refactor that should behave exactly as before is checked against values recorded before
it (``tests/test_goldens.py``): each case's loss terms after its two steps and a digest of
its state (model parameters and buffers, the teacher, the memory), on the CPU in float32
from a fixed seed, and the main job's evaluated metrics.

    .venv/bin/python -m tests.goldens.record            # rewrite goldens.json (after a change meant to alter them)
    .venv/bin/python -m tests.goldens.record --check    # compare, exactly, and name what differs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

GOLDENS = Path(__file__).with_name("goldens.json")
STRONG = ["encoder.pool=avg", "views.strong_sizes=[16]"]
ALEXNET = ["encoder.width=0.125", "memory.read_size=64"]
# every method config, on small colour images with its CIFAR recipe's views, and the options
# that change the episode or the losses (task rotation, rotation loss, mixing, a table)
CASES: dict[str, list[str]] = {
    "simclr": ["views=simclr_cifar"],
    "protonet": ["method=protonet", "views=simclr_cifar"],
    "r2d2": ["method=r2d2", "views=simclr_cifar"],
    "svm": ["method=svm", "views=simclr_cifar"],
    "triplet": ["method=triplet", "views=simclr_cifar"],
    "npair": ["method=npair", "views=simclr_cifar"],
    "byol": ["method=byol", "views=simclr_cifar"],
    "moco_v2": ["method=moco_v2", "views=moco_v2_cifar"],
    "moco_v2_strong_query": ["method=moco_v2_strong_query", "views=clsa_single_cifar", *STRONG],
    "moco_v2_strong_query_key": ["method=moco_v2_strong_query_key", "views=clsa_single_cifar", *STRONG,
                                 "views.strong_sizes=[16,16]"],
    "clsa_single": ["method=clsa_single", "views=clsa_single_cifar", *STRONG],
    "clsa_single_contrastive": ["method=clsa_single_contrastive", "views=clsa_single_cifar", *STRONG],
    "clsa_multi": ["method=clsa_multi", "views=clsa_multi_cifar", *STRONG, "views.strong_sizes=[24,16]"],
    "metaug": ["experiment=metaug_cifar10/metaug", *ALEXNET],
    "metaug_only_oucl": ["experiment=metaug_cifar10/metaug_only_oucl", *ALEXNET],
    "protonet_task_rotation": ["method=protonet", "views=simclr_cifar", "+task_aug=rotation"],
    "simclr_rotation_loss": ["views=simclr_cifar", "+aux=rotation_loss"],
    "byol_mix": ["experiment=table6/byol_mix"],
    "all_pairs_unmix": ["views=simclr_cifar", "+mix=unmix", "solver=all_pairs", "loss=[query_ce]"],
}
TABLE_CASES: dict[str, list[str]] = {
    "tabular_simclr": [],
    "tabular_protonet": ["method=protonet"],
}
STEP_BASE = ["experiment=digits_simclr", "trainer=debug", "trainer.resume=never", "trainer.batch_size=16",
             "trainer.max_steps=2", "trainer.epochs=1", "trainer.device=cpu", "trainer.precision=fp32",
             "trainer.compile=off", "trainer.seed=0"]
TABLE_BASE = ["data=tabular/wine", "trainer=debug", "trainer.resume=never", "trainer.batch_size=16",
              "trainer.max_steps=2", "trainer.epochs=1", "trainer.device=cpu", "trainer.precision=fp32",
              "trainer.compile=off", "trainer.seed=0"]
# the main job (`make train`), shortened: 30 steps, then its evaluators
MAIN_JOB = ["experiment=digits_simclr", "trainer.max_steps=30", "trainer.device=cpu", "trainer.precision=fp32",
            "trainer.resume=never", "trainer.progress=false", "logger=[jsonl]"]


def colour_npz(folder: Path) -> Path:
    """96 training and 16 test random colour images, 32 x 32, 4 classes (seed 0)."""
    g = np.random.default_rng(0)
    path = folder / "colour.npz"
    np.savez(path, x_train=g.integers(0, 256, (96, 32, 32, 3), dtype=np.uint8), y_train=g.integers(0, 4, 96),
             x_test=g.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), y_test=g.integers(0, 4, 16))
    return path


def digest(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Three numbers of a state: the sum, the sum of squares, and a sum weighted by a fixed
    pseudo-random sequence (which a permutation of the values changes), in float64."""
    total, squares, weighted = 0.0, 0.0, 0.0
    for name in sorted(tensors):
        t = tensors[name].detach().double().reshape(-1)
        if t.numel() == 0:
            continue
        w = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.618 + len(name))
        total += float(t.sum())
        squares += float((t * t).sum())
        weighted += float((t * w).sum())
    return {"sum": total, "squares": squares, "weighted": weighted}


def _state(run: Any) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v for k, v in run.model.state_dict().items() if v.is_floating_point()}
    memory = run.components.memory
    if memory is not None:
        state.update({f"memory.{k}": v for k, v in memory.state_dict().items() if v.is_floating_point()})
    return state


def first_two_steps(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """Loss terms of steps 1 and 2 and the state's digest after them."""
    from metacontrast.config import compose_config
    from metacontrast.records import Batch
    from metacontrast.trainer import setup, take_step

    cfg = compose_config([*overrides, f"trainer.run_dir={run_dir}"])
    run = setup(cfg)
    step_fn = run.plugins.make_train_step(cfg, run.components)
    b = int(cfg.trainer.batch_size)
    terms = []
    for step in range(2):
        batch = Batch(images=run.data.train_x[step * b:(step + 1) * b], index=torch.arange(b) + step * b)
        step_terms, updated = take_step(run, step_fn, batch)
        assert updated, f"step {step} was skipped"
        terms.append({k: float(v.detach()) for k, v in sorted(step_terms.terms.items())})
        run.position.step += 1
    return {"terms": terms, "state": digest(_state(run))}


def main_job(run_dir: Path) -> dict[str, float]:
    """The main job's evaluated metrics (every evaluator, the baselines too)."""
    from metacontrast.config import compose_config
    from metacontrast.trainer import fit

    results = fit(compose_config([*MAIN_JOB, f"trainer.run_dir={run_dir}"]))
    return {f"{who}/{name}": float(value) for who, metrics in sorted(results["metrics"].items())
            for name, value in sorted(metrics.items())}


def case_overrides(name: str, data: Path) -> list[str]:
    if name in TABLE_CASES:
        return [*TABLE_BASE, *TABLE_CASES[name]]
    # no evaluator: the steps are what is recorded, and the methods' k = 200 would not fit
    # the synthetic bank (refused at setup)
    return [*STEP_BASE, "data=npz", f"data.root={data}", *CASES[name], "eval=[]"]


def measure(names: list[str] | None = None, with_main_job: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = colour_npz(folder)
        out: dict[str, Any] = {"steps": {}}
        for name in names or [*CASES, *TABLE_CASES]:
            out["steps"][name] = first_two_steps(case_overrides(name, data), folder / name)
        if with_main_job:
            out["main_job"] = main_job(folder / "main")
    return out


def machine() -> str:
    return f"{platform.processor() or platform.machine()} {_cpu_model()}, torch {torch.__version__}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def differences(recorded: Any, measured: Any, where: str = "", rel: float = 0.0) -> list[str]:
    """Where ``measured`` differs from ``recorded`` (beyond ``rel`` relative)."""
    if isinstance(recorded, dict):
        out = [f"{where}/{k}: missing" for k in recorded if k not in measured]
        out += [f"{where}/{k}: new" for k in measured if k not in recorded]
        for k in recorded:
            if k in measured:
                out += differences(recorded[k], measured[k], f"{where}/{k}", rel)
        return out
    if isinstance(recorded, list):
        if len(recorded) != len(measured):
            return [f"{where}: {len(measured)} entries, recorded {len(recorded)}"]
        return [d for i, (a, b) in enumerate(zip(recorded, measured, strict=True))
                for d in differences(a, b, f"{where}[{i}]", rel)]
    if recorded == measured or abs(measured - recorded) <= rel * max(abs(recorded), 1e-12):
        return []
    return [f"{where}: {measured!r}, recorded {recorded!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with goldens.json, exactly")
    parser.add_argument("--no-main-job", action="store_true")
    args = parser.parse_args()
    measured = measure(with_main_job=not args.no_main_job)
    if args.check:
        recorded = json.loads(GOLDENS.read_text())
        if args.no_main_job:
            recorded.pop("main_job", None)
        diff = differences({k: recorded[k] for k in ("steps", "main_job") if k in recorded}, measured)
        print("\n".join(diff) or "identical, bit for bit")
        sys.exit(1 if diff else 0)
    GOLDENS.write_text(json.dumps({"machine": machine(), **measured}, indent=1) + "\n")
    print(f"wrote {GOLDENS}")


if __name__ == "__main__":
    main()
