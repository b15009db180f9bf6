"""``results.json``: what a finished run reports (metrics, protocols, hardware, timing)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from metacontrast.evaluation import protocol_settings
from metacontrast.run_evaluation import eval_train_index
from metacontrast.run_setup import Run, threads_state


def time_to_target(run: Run) -> dict[str, Any] | None:
    """``evaluation.target_metric``'s first periodic value at or above the target, or
    ``reached: false``; ``None`` without a target."""
    ev = run.cfg.evaluation
    if not str(ev.target_metric):
        return None
    if run.target_reached is None:
        return {"metric": str(ev.target_metric), "target": float(ev.target_value), "reached": False}
    return {**run.target_reached, "reached": True}


def schedule_report(run: Run) -> dict[str, Any]:
    """Whether the run's schedules (learning rate, the teacher's momentum) ran to their end:
    the steps and epochs they were sized for, those taken, and what ended the loop
    (``schedule``; ``target``: ``evaluation.stop_at_target``; ``time_limit``:
    ``trainer.time_limit_s``)."""
    steps_per_epoch = run.sampler.steps_per_epoch // int(run.cfg.trainer.accumulate)
    done = run.position.step >= run.schedule_steps
    return {
        "completed": done,
        "ended_by": "schedule" if done else run.ended_by,  # None: a checkpoint taken mid-run
        "steps": run.position.step,
        "planned_steps": run.schedule_steps,
        "planned_epochs": round(run.schedule_steps / steps_per_epoch, 2),
        "fraction": round(run.position.step / max(1, run.schedule_steps), 4),
    }


def hardware_description(device: torch.device) -> str:
    """The accelerator's name, or the CPU model with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model or 'CPU'} ({torch.get_num_threads()} threads)"


def describe_run(run: Run, metrics: dict[str, dict[str, float]], seconds: float) -> dict[str, Any]:
    """The content of ``results.json``: what ran, where, how long, and every metric with
    the protocol (evaluator config) that produced it."""
    from metacontrast import __version__

    cfg = run.cfg
    return {
        "method": str(cfg.method_name),
        "dataset": str(run.data.name),
        "encoder": str(cfg.encoder.name),
        "steps": run.position.step,
        "epochs": run.position.epoch,
        "schedule": schedule_report(run),
        "global_batch": int(cfg.trainer.batch_size) * run.world.world_size * int(cfg.trainer.accumulate),
        "seed": int(cfg.trainer.seed),
        "precision": run.precision,
        "device": str(run.device),
        "hardware": hardware_description(run.device),
        "threads": threads_state(run),
        "world_size": run.world.world_size,
        "torch": torch.__version__,
        "metacontrast": __version__,
        # every process that worked on the run, each from its start to its last sign of life
        "wall_clock_s": round(seconds, 1),
        "train_images_for_eval": int(eval_train_index(run).shape[0]),
        "unreadable_files": run.data.unreadable_files,
        "test_images": int(run.data.test_x.shape[0]),
        "protocols": {name: protocol_settings(ev) for name, ev in run.components.evaluators.items()},
        "metrics": metrics,
        # the best of the periodic evaluations (every trainer.eval_every_epochs) and the final one
        "best_metrics": run.best_metrics,
        "eval_every_epochs": int(cfg.trainer.eval_every_epochs),
        "train_loop_s": round(run.elapsed_s, 2),
        "time_to_target": time_to_target(run),
        "evaluation_details": run.eval_details,
        "compile": None if run.compile_watch is None else run.compile_watch.report().as_dict(),
        "run_dir": str(run.run_dir),
    }
