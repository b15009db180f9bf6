"""Checkpoints of a run: what one holds, writing it, finding the one to resume, restoring it.

A checkpoint holds the config, the position, the model, optimizer, scheduler, scaler,
memory and every rank's RNG states, so a resumed run continues exactly; the config
sections in ``STRUCTURAL_KEYS`` must agree between the checkpoint and the run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import torch
from omegaconf import DictConfig, OmegaConf

from metacontrast import distributed
from metacontrast.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_safe,
    prune,
    restore_rng_state,
    rng_state,
    save_atomic,
)
from metacontrast.config import ConfigError, from_yaml, to_yaml
from metacontrast.interfaces import BuildContext
from metacontrast.run_setup import Position, Run, threads_state
from metacontrast.targets import check_targets

# Config sections a checkpoint must agree on to be resumed or evaluated.
STRUCTURAL_KEYS = ("encoder", "head", "solver", "loss", "memory", "episode", "views", "view_transforms",
                   "teacher",
                   "data.name", "data.image_size", "optim.name", "trainer.batch_size",
                   "trainer.accumulate")


def plain_setting(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` as plain Python (sections as dicts), for comparing configs."""
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def check_compatible(stored: DictConfig, current: DictConfig, source: Path) -> None:
    """Refuse a checkpoint whose structural config differs, naming the first key."""
    for key in STRUCTURAL_KEYS:
        a, b = plain_setting(stored, key), plain_setting(current, key)
        if a != b:
            raise ConfigError(f"{key}: checkpoint {source} was made with {key}={a!r}, the config "
                              f"says {b!r}; use a new trainer.run_dir or the matching config")


def state_payload(run: Run) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "config": to_yaml(run.cfg),
        "position": attrs.asdict(run.position),
        "world_size": run.world.world_size,
        "model": run.model.state_dict(),
        "optimizer": _portable_optimizer_state(run.optimizer),
        "scheduler": run.scheduler.state_dict(),
        "rng": distributed.all_gather_object(rng_state({"augment": run.generator})),
        "baseline_metrics": run.baseline_metrics,
        "best_metrics": run.best_metrics,
        "target_reached": run.target_reached,
        "ended_by": run.ended_by,
        "elapsed_s": run.elapsed_s,
        "build_facts": build_facts(run.components.context),
        "threads": threads_state(run),
    }
    if run.scaler is not None:
        payload["scaler"] = run.scaler.state_dict()
    if run.components.memory is not None:
        payload["memory"] = run.components.memory.state_dict()
    return payload


def build_facts(context: BuildContext) -> dict[str, Any] | None:
    """What the encoder was built with, stored so that it can be rebuilt without the data
    (``metacontrast export``); None for tables (their schema is not a plain value)."""
    if context.modality != "image":
        return None
    return {"in_channels": context.in_channels, "image_size": context.image_size,
            "mean": [float(m) for m in context.mean], "std": [float(s) for s in context.std],
            "modality": context.modality}


def _portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state with its learning rates as numbers: a captured step holds them
    in device tensors (``trainer.cuda_graphs``), which an eager resume need not accept."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
    return state


def save_checkpoint(run: Run) -> Path | None:
    """Every rank contributes its RNG streams; rank 0 writes the file."""
    payload = state_payload(run)
    path = checkpoint_path(run.run_dir / "checkpoints", run.position.step)
    if run.world.is_main:
        save_atomic(payload, path)
        prune(run.run_dir / "checkpoints", int(run.cfg.trainer.keep_checkpoints), written=path)
    run.last_saved_step = run.position.step
    distributed.barrier()
    return path if run.world.is_main else None


def load_resume_checkpoint(run: Run) -> tuple[Path, dict[str, Any]] | None:
    """``trainer.resume``: ``never``; a path (must load); ``auto``: the newest checkpoint of
    the run directory that loads, unreadable newer ones reported and skipped."""
    how = str(run.cfg.trainer.resume)
    if how == "never":
        return None
    if how != "auto":
        return Path(how), load_safe(Path(how), map_location=run.device)
    for path in reversed(list_checkpoints(run.run_dir / "checkpoints")):
        try:
            return path, load_safe(path, map_location=run.device)
        except CheckpointError as err:
            if run.world.is_main:
                print(f"skipping unreadable checkpoint: {err}", file=sys.stderr)
    return None


def restore(run: Run, path: Path, payload: dict[str, Any]) -> None:
    """Put the run back where checkpoint ``payload`` (read from ``path``) left it."""
    stored = from_yaml(payload["config"])
    check_targets(stored, run.plugins.allowed_targets(), source=f"checkpoint {path}")
    check_compatible(stored, run.cfg, path)
    if payload["world_size"] != run.world.world_size:
        raise ConfigError(f"checkpoint {path} was written by {payload['world_size']} processes, "
                          f"this run has {run.world.world_size}; exact resume needs the same number")
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    if run.scaler is not None and "scaler" in payload:
        run.scaler.load_state_dict(payload["scaler"])
    if run.components.memory is not None and "memory" in payload:
        run.components.memory.load_state_dict(payload["memory"])
    restore_rng_state(payload["rng"][run.world.rank], {"augment": run.generator})
    run.position = Position(**payload["position"])
    run.baseline_metrics = dict(payload.get("baseline_metrics", {}))
    run.best_metrics = dict(payload.get("best_metrics", {}))
    run.target_reached = payload.get("target_reached")
    run.ended_by = payload.get("ended_by")
    if run.ended_by is not None:  # the loop had ended early: resume after it, not into more steps
        run.total_steps = run.position.step
    run.elapsed_s = float(payload.get("elapsed_s", 0.0))
    if run.threads is not None:  # start from the count in use when the checkpoint was written
        run.threads.restore(payload.get("threads"))
