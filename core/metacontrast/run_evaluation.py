"""Evaluating an encoder: the run's labelled data, the baselines, the periodic
evaluations during pre-training and ``metacontrast eval`` of a checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from metacontrast import distributed
from metacontrast.checkpoint import save_atomic
from metacontrast.config import ConfigError
from metacontrast.evaluation import (
    extract_features,
    project_2d,
    protocol_settings,
    run_evaluators,
    select_periodic,
    update_best,
)
from metacontrast.metrics import RunLog
from metacontrast.phases import SILENT
from metacontrast.records import EvalInputs
from metacontrast.run_setup import Run, eval_train_subset, tick


def eval_train_index(run: Run) -> torch.Tensor:
    """The fixed train subset used as kNN bank and probe training set (a streamed
    dataset holds exactly that subset in memory)."""
    return eval_train_subset(run.data, run.cfg)


def sharded(features: Callable[[torch.Tensor], torch.Tensor], world: distributed.WorldInfo
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``features`` computed by every rank on its contiguous share of the images and
    gathered in rank order: the same rows as one process computes, in 1/world the time.
    Every rank must call it with the same images."""
    def gathered(images: torch.Tensor) -> torch.Tensor:
        per = -(-images.shape[0] // world.world_size)
        share = images[world.rank * per:(world.rank + 1) * per]
        local = features(share).cpu() if share.shape[0] else None
        parts = [p for p in distributed.all_gather_object(local) if p is not None]
        return torch.cat(parts).to(images.device)  # type: ignore[arg-type]
    return gathered


def eval_inputs(run: Run, encoder: torch.nn.Module | None, *, shard: bool = False) -> EvalInputs:
    """What evaluators read about ``encoder`` (``None``: raw pixels). ``shard``: frozen
    features are extracted by all ranks together (every rank must then call
    ``inputs.frozen()``)."""
    ev, t = run.cfg.evaluation, run.cfg.trainer
    if encoder is None:
        features = run.data.raw_features
    else:
        features = lambda x: extract_features(  # noqa: E731
            encoder, x, mean=run.data.mean, std=run.data.std, batch_size=int(ev.batch_size),
            autocast=run.autocast, channels_last=bool(t.channels_last))
        if shard:
            features = sharded(features, run.world)
    return EvalInputs(encoder=encoder, data=run.data, train_index=eval_train_index(run),
                      features=features, seed=int(t.seed), run_dir=run.run_dir,
                      autocast=run.autocast, channels_last=bool(t.channels_last),
                      batch_size=int(ev.batch_size))


def evaluate_encoder(run: Run, encoder: torch.nn.Module, evaluators: dict[str, Any] | None = None,
                     *, project: bool = False, label: str = "") -> dict[str, float]:
    """Metrics of ``evaluators`` (default: all configured) on ``encoder``; ``project``:
    also save the 2-D projection of its test features (``test_projection.pt``). ``label``:
    announce each evaluator as ``evaluating <label>: <name> (i/n)``."""
    inputs = eval_inputs(run, encoder)
    announce = run.announce if label else SILENT
    metrics = run_evaluators(run.components.evaluators if evaluators is None else evaluators, inputs,
                             announce=announce, label=f"evaluating {label}")
    run.eval_details.update(inputs.details)
    points = int(run.cfg.evaluation.projection_points)
    if project and points > 0 and run.world.is_main:
        _, test = inputs.frozen()
        method = str(run.cfg.evaluation.projection)
        with announce.phase(
                f"mapping {min(points, int(test.x.shape[0]))} test features to 2-D ({method})"):
            projection = project_2d(test.x, test.y, max_points=points, seed=int(run.cfg.trainer.seed),
                                    method=method)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        save_atomic(projection, run.run_dir / "test_projection.pt", what="projection")
    return metrics


def evaluate_baselines(run: Run) -> None:
    """Evaluate the untrained encoder (and raw pixels) before the first step."""
    if not run.components.evaluators:
        return
    baselines = list(run.cfg.evaluation.baselines)
    for b in baselines:
        if b not in ("random_init", "raw_pixels"):
            raise ConfigError(f"evaluation.baselines: unknown baseline {b!r}; available: "
                              f"random_init, raw_pixels")
    if "random_init" in baselines:
        run.baseline_metrics["random_init"] = evaluate_encoder(run, copy.deepcopy(run.model.encoder),
                                                               label="baseline random_init")
    if "raw_pixels" in baselines:
        run.baseline_metrics["raw_pixels"] = run_evaluators(run.components.evaluators,
                                                            eval_inputs(run, None), announce=run.announce,
                                                            label="evaluating baseline raw_pixels")


def periodic_evaluation(run: Run, logger: RunLog) -> None:
    """The periodic evaluators on rank 0; with ``evaluation.sharded`` under DDP every rank
    extracts its share of the frozen features first."""
    periodic = select_periodic(run.components.evaluators, periodic_names(run))
    if not periodic:
        return
    shard = bool(run.cfg.evaluation.sharded) and run.world.distributed
    if not (shard or run.world.is_main):
        return
    inputs = eval_inputs(run, run.model.encoder, shard=shard)
    if shard:
        inputs.frozen()  # a collective: every rank takes part
    if not run.world.is_main:
        return
    metrics = run_evaluators(periodic, inputs)
    run.eval_details.update(inputs.details)
    pos = run.position
    tick(run)
    update_best(run.best_metrics, metrics, epoch=pos.epoch, step=pos.step)
    check_target(run, metrics)
    protocols = {name: protocol_settings(ev) for name, ev in periodic.items()}
    logger.log_evaluation({"step": pos.step, "epoch": pos.epoch, "wall_clock_s": round(run.elapsed_s, 2),
                           **{f"eval/{k}": v for k, v in metrics.items()}}, protocols)


def check_target(run: Run, metrics: dict[str, float]) -> None:
    """Record the first periodic evaluation at or above ``evaluation.target_value``."""
    ev, pos = run.cfg.evaluation, run.position
    name = str(ev.target_metric)
    if not name or run.target_reached is not None:
        return
    if name not in metrics:
        raise ConfigError(f"evaluation.target_metric: {name!r} is not measured by the periodic evaluators; "
                          f"they give {', '.join(sorted(metrics))}")
    if metrics[name] >= float(ev.target_value):
        run.target_reached = {"metric": name, "target": float(ev.target_value), "value": metrics[name],
                              "epoch": pos.epoch, "step": pos.step, "wall_clock_s": round(run.elapsed_s, 2)}


def periodic_names(run: Run) -> list[str] | None:
    names = run.cfg.evaluation.periodic
    return None if names is None else [str(n) for n in names]
