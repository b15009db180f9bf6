"""The training loop: one code path for one process and for DDP under ``torchrun``.

Reads top to bottom like a recipe: world -> data -> components -> optimizer ->
resume -> steps (boundary hooks, metrics, checkpoints) -> evaluation -> results.json.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from metacontrast import distributed
from metacontrast.builder import Components, build_components, check_component_configs
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
from metacontrast.compiling import CompileWatch, compile_mode, compile_parts
from metacontrast.config import ConfigError, from_yaml, to_yaml
from metacontrast.data import EpochBatchSampler, ImageData, TabularData, load_dataset, subset_indices
from metacontrast.data.files import loader_workers, stream_batches
from metacontrast.evaluation import (
    extract_features,
    project_2d,
    run_evaluators,
    select_periodic,
    update_best,
)
from metacontrast.graphs import GraphedStep, check_capturable
from metacontrast.guards import StepHealth, clip_gradients
from metacontrast.host import tune_glibc_malloc
from metacontrast.interfaces import BuildContext
from metacontrast.metrics import MetricsLogger
from metacontrast.optim import build_optimizer, build_scheduler
from metacontrast.phases import SILENT, Announcer, precision_name, precision_reason
from metacontrast.plugins import PluginManager
from metacontrast.records import Batch, EvalInputs, LossTerms, StepInputs, StepState
from metacontrast.run_dirs import (
    RunDirError,
    RunDirUnwritableError,
    SessionClock,
    claim,
    cut_metrics,
    default_dir_stem,
    write_text_atomic,
)
from metacontrast.schema_checks import check_values
from metacontrast.signals import StopRequested, StopSignals
from metacontrast.targets import check_targets
from metacontrast.threads import apply_threads

# Config sections a checkpoint must agree on to be resumed or evaluated.
STRUCTURAL_KEYS = ("encoder", "head", "solver", "loss", "memory", "episode", "views", "view_transforms",
                   "teacher",
                   "data.name", "data.image_size", "optim.name", "trainer.batch_size",
                   "trainer.accumulate")


class TrainingError(RuntimeError):
    """Training cannot go on; the message names the step and what went wrong."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device: {name!r} asked for but no CUDA device is available")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"trainer.device: unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """autocast dtype for ``trainer.precision`` (``None`` = fp32)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else None
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if name not in table:
        raise ConfigError(f"trainer.precision: unknown precision {name!r}; use auto, bf16, fp16, fp32")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision: fp16 needs a CUDA device; use bf16 on the CPU")
    return table[name]


def autocast_factory(device: torch.device, dtype: torch.dtype | None
                     ) -> Callable[[], contextlib.AbstractContextManager]:
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic_algorithms(on: bool) -> None:
    """``trainer.deterministic``: refuse kernels without a deterministic implementation
    (an error names the operation), no cuDNN autotuning, and the cuBLAS workspace setting
    deterministic GEMMs need. On the CPU, runs with the same seed and thread count are
    already bit-identical; the switch matters on GPUs."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on


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


@attrs.define
class Position:
    """Where training stands: optimizer ``step``, ``epoch``, next micro-batch ``batch`` of
    the epoch; ``skipped`` steps (non-finite, policy skip) and how many in a row."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    skipped: int = 0
    consecutive_skips: int = 0


@attrs.define
class Run:
    """Everything one training run holds."""

    cfg: DictConfig
    run_dir: Path
    world: distributed.WorldInfo
    device: torch.device
    data: ImageData | TabularData
    components: Components
    plugins: PluginManager
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    sampler: EpochBatchSampler
    generator: torch.Generator
    autocast: Callable[[], contextlib.AbstractContextManager]
    precision: str  # the autocast dtype chosen from trainer.precision: fp32 | bf16 | fp16
    total_steps: int
    position: Position = attrs.field(factory=Position)
    last_saved_step: int = -1
    shared_bad_files: dict[int, str] = attrs.field(factory=dict)
    baseline_metrics: dict[str, dict[str, float]] = attrs.field(factory=dict)
    # per metric of the periodic evaluations: {"value", "epoch", "step"} of the best one
    best_metrics: dict[str, dict[str, float]] = attrs.field(factory=dict)
    eval_details: dict[str, Any] = attrs.field(factory=dict)
    compile_watch: CompileWatch | None = None
    # evaluation.target_metric's first periodic value at or above target_value
    target_reached: dict[str, Any] | None = None
    # seconds spent in the training loop (steps, periodic evaluations, checkpoints), added up
    # over every process that resumed the run; clock: (perf_counter, elapsed_s) at this loop's start
    elapsed_s: float = 0.0
    clock: tuple[float, float] = (0.0, 0.0)
    announce: Announcer = SILENT

    @property
    def model(self) -> torch.nn.Module:
        return self.components.model


def default_run_dir(cfg: DictConfig) -> Path:
    """Where a run built without claiming a directory (``setup`` alone, as the benchmarks
    do) would write; ``fit`` claims one instead (``metacontrast.run_dirs``)."""
    return Path("runs") / default_dir_stem(cfg)


def setup(cfg: DictConfig, plugins: PluginManager | None = None, run_dir: Path | None = None) -> Run:
    """Build a run from a composed config. Nothing is written to disk here, so a config
    that fails to build leaves no trace. ``run_dir``: the directory ``fit`` claimed."""
    t = cfg.trainer
    apply_threads(int(t.threads))
    device = resolve_device(str(t.device))
    if t.tune_host_malloc:
        tune_glibc_malloc()
    world = distributed.init_from_env(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    dtype = resolve_precision(str(t.precision), device)
    announce = Announcer(bool(t.progress) and world.is_main)
    announce.say(f"device {device}, precision {precision_reason(str(t.precision), device, dtype)}")
    if t.cuda_graphs:
        check_capturable(device, world.world_size, int(t.accumulate), dtype)
    plugins = plugins or PluginManager(autoload=cfg.plugins.autoload, block=cfg.plugins.block)
    allowed_targets = plugins.allowed_targets()
    check_targets(cfg, allowed_targets, source="the config")  # before anything is built
    check_component_configs(cfg, plugins)  # before any data is read

    ev = cfg.evaluation
    if ev.stop_at_target and not str(ev.target_metric):
        raise ConfigError("evaluation.stop_at_target: needs evaluation.target_metric (e.g. knn_top1) and "
                          "evaluation.target_value")
    if str(ev.target_metric) and int(t.eval_every_epochs) <= 0:
        raise ConfigError(f"evaluation.target_metric: {ev.target_metric} is watched in the periodic "
                          f"evaluations; set trainer.eval_every_epochs > 0")
    if cfg.data.stream and int(cfg.evaluation.train_subset) <= 0:
        raise ConfigError("evaluation.train_subset: a streamed dataset (data.stream=true) needs a "
                          "cap on the labelled train images held in memory for evaluation")
    use_deterministic_algorithms(bool(t.deterministic))
    seed_everything(int(t.seed))  # every rank builds the same initial weights
    eval_index = lambda n: subset_indices(n, int(cfg.evaluation.train_subset), int(t.seed))  # noqa: E731
    with announce.phase(f"loading data={cfg.data.name}"):
        data = distributed.run_on_main_first(lambda: load_dataset(cfg.data, eval_index)).to(device)
    context = BuildContext(**data.context_facts(), device=device, num_classes=data.num_classes,
                           num_train=data.num_train,
                           rank=world.rank, world_size=world.world_size,
                           allowed_targets=allowed_targets)
    components = build_components(cfg, plugins, context)
    periodic = cfg.evaluation.periodic  # checked now, not at the first epoch's end
    select_periodic(components.evaluators, None if periodic is None else [str(n) for n in periodic])
    model = components.model.to(device)
    components.view_generator.to(device)
    if components.memory is not None:
        components.memory.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    if world.distributed and t.sync_batchnorm:
        components.model = model = distributed.convert_sync_batchnorm(model, device.type)
    mode = compile_mode(t.compile)
    eager_parts = compile_parts(mode, model, components.view_generator, list(components.view_transforms),
                                backend=str(t.compile_backend))
    wrapped = distributed.wrap_ddp(model, device)

    sampler = EpochBatchSampler(data.num_train, int(t.batch_size), seed=int(t.seed),
                                rank=world.rank, world_size=world.world_size)
    steps_per_epoch = sampler.steps_per_epoch // int(t.accumulate)
    if steps_per_epoch == 0:
        raise ConfigError(f"trainer.accumulate: {t.accumulate} micro-batches exceed the "
                          f"{sampler.steps_per_epoch} batches of an epoch")
    total = steps_per_epoch * int(t.epochs)
    if t.max_steps > 0:
        total = min(total, int(t.max_steps))
    global_batch = int(t.batch_size) * world.world_size * int(t.accumulate)
    optimizer = build_optimizer(cfg.optim, model, global_batch)
    scheduler = build_scheduler(cfg.optim, optimizer, total, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    generator = torch.Generator(device=device)
    generator.manual_seed(int(t.seed) * 7919 + 1 + world.rank)  # ranks draw different views

    if run_dir is None:
        run_dir = Path(str(t.run_dir)) if t.run_dir else default_run_dir(cfg)
        run_dir = Path(str(distributed.broadcast_object(str(run_dir))))
    return Run(cfg=cfg, run_dir=run_dir, world=world, device=device, data=data,
               components=components, plugins=plugins, wrapped=wrapped, optimizer=optimizer,
               scheduler=scheduler, scaler=scaler, sampler=sampler, generator=generator,
               autocast=autocast_factory(device, dtype), precision=precision_name(dtype),
               total_steps=total,
               compile_watch=None if mode == "off" else CompileWatch(mode, str(t.compile_backend),
                                                                     eager_parts),
               announce=announce)


# -- checkpoints ----------------------------------------------------------------------

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
        "elapsed_s": run.elapsed_s,
        "build_facts": build_facts(run.components.context),
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
        prune(run.run_dir / "checkpoints", int(run.cfg.trainer.keep_checkpoints))
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
    run.elapsed_s = float(payload.get("elapsed_s", 0.0))


# -- evaluation -----------------------------------------------------------------------

def _eval_train_index(run: Run) -> torch.Tensor:
    """The fixed train subset used as kNN bank and probe training set (a streamed
    dataset holds exactly that subset in memory)."""
    n = int(run.data.train_x.shape[0])
    if run.data.train_files is not None:
        return torch.arange(n)
    return subset_indices(n, int(run.cfg.evaluation.train_subset), int(run.cfg.trainer.seed))


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
    return EvalInputs(encoder=encoder, data=run.data, train_index=_eval_train_index(run),
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


# -- the loop -------------------------------------------------------------------------

def read_finite(run: Run, health: StepHealth, finite: torch.Tensor) -> tuple[bool, bool, list[bool]]:
    """``finite`` (``health.finite()``, agreed between ranks) read to the host once:
    ``(loss_bad, grad_bad, flags)``."""
    if run.world.distributed:
        finite = distributed.max_over_ranks_tensor((~finite).float()) == 0
    flags = finite.tolist()
    loss_bad, grad_bad = health.verdict(flags)
    return loss_bad, grad_bad, flags


def _step_is_healthy(run: Run, health: StepHealth, loss_bad: bool, grad_bad: bool,
                     flags: list[bool]) -> bool:
    """Policy ``halt`` raises (on every rank, naming the loss term or the parameter where it
    is known, loss first) before the optimizer touches the weights; ``skip`` returns
    ``False``. Gradients are averaged over ranks, so every rank agrees on them."""
    if not (loss_bad or grad_bad):
        return True
    if run.cfg.trainer.nonfinite != "halt":
        return False
    if loss_bad:
        what = health.describe_bad_term() or "a loss term is non-finite on another rank"
    else:
        param = health.bad_gradient(flags)
        what = f"the gradient of {param!r} is not finite" if param else "a gradient is not finite"
    raise TrainingError(f"step {run.position.step}: {what}; stopping before the optimizer "
                        f"touches the weights")


def _skip_step(run: Run, release_grads: bool = True) -> None:
    """Drop this step's gradients (a captured step overwrites its gradient buffers at the
    next replay instead), count the skip; the schedule still advances with the step count."""
    pos, limit = run.position, int(run.cfg.trainer.max_consecutive_skips)
    if release_grads:
        run.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # no optimizer step before this scheduler step, by design
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
        run.scheduler.step()
    pos.skipped += 1
    pos.consecutive_skips += 1
    if pos.consecutive_skips > limit:
        raise TrainingError(f"step {pos.step}: {pos.consecutive_skips} consecutive steps with non-finite "
                            f"values (trainer.max_consecutive_skips={limit}); stopping")


def _backward(run: Run, loss: torch.Tensor) -> None:
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
    else:
        loss.backward()


def _optimizer_step(run: Run, *, release_grads: bool = True, schedule: bool = True) -> None:
    """Clipping, the optimizer (through the scaler under fp16); then the gradients are
    released (``release_grads``) and the schedule advances (``schedule``). A captured
    step keeps its gradient buffers and advances the schedule outside the graph."""
    t = run.cfg.trainer
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    clip_gradients(run.model.parameters(), float(t.grad_clip_norm), float(t.grad_clip_value))
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    if release_grads:
        run.optimizer.zero_grad(set_to_none=True)
    if schedule:
        run.scheduler.step()


def _metrics_row(run: Run, terms: LossTerms, images: int, seconds: float) -> dict[str, Any]:
    """The logged row: loss terms averaged over ranks, lr, throughput, skipped steps."""
    pos = run.position
    names = ["loss", *(f"loss/{name}" for name in terms.terms)]
    values = torch.stack([terms.total.detach().float(), *(v.detach().float() for v in terms.terms.values())])
    row: dict[str, Any] = {
        "step": pos.step, "epoch": pos.epoch,
        **dict(zip(names, distributed.all_reduce_mean(values).tolist(), strict=True)),
        "lr": float(run.optimizer.param_groups[0]["lr"]),
        "images_per_s": images * run.world.world_size / max(seconds, 1e-9),
        "skipped_steps": pos.skipped,
        "wall_clock_s": round(run.elapsed_s, 2),
    }
    return row


def _end_epoch(run: Run, logger: MetricsLogger, terms: LossTerms | None) -> None:
    pos, t = run.position, run.cfg.trainer
    pos.epoch += 1
    pos.batch = 0
    if int(t.checkpoint_every) == 0:
        save_checkpoint(run)
    every = int(t.eval_every_epochs)
    if every > 0 and pos.epoch % every == 0:
        _periodic_evaluation(run, logger)
        ev = run.cfg.evaluation
        if ev.stop_at_target and distributed.max_over_ranks(int(run.target_reached is not None)):
            run.total_steps = pos.step  # the target is reached: the loop ends here
    distributed.barrier()


def _periodic_evaluation(run: Run, logger: MetricsLogger) -> None:
    """The periodic evaluators on rank 0; with ``evaluation.sharded`` under DDP every rank
    extracts its share of the frozen features first."""
    periodic = select_periodic(run.components.evaluators, _periodic_names(run))
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
    _tick(run)
    update_best(run.best_metrics, metrics, epoch=pos.epoch, step=pos.step)
    _check_target(run, metrics)
    logger.log({"step": pos.step, "epoch": pos.epoch, "wall_clock_s": round(run.elapsed_s, 2),
                **{f"eval/{k}": v for k, v in metrics.items()}})


def _tick(run: Run) -> None:
    """Bring ``run.elapsed_s`` up to now."""
    started, base = run.clock
    run.elapsed_s = base + time.perf_counter() - started


def _check_target(run: Run, metrics: dict[str, float]) -> None:
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


def _periodic_names(run: Run) -> list[str] | None:
    names = run.cfg.evaluation.periodic
    return None if names is None else [str(n) for n in names]


def _epoch_batches(run: Run, stop: int) -> Iterator[tuple[int, Batch]]:
    """The rest of the current epoch from ``run.position.batch``: ``(batch_index, Batch)``,
    indexed from memory or decoded by ``data.workers`` loader processes (streamed)."""
    plan = run.sampler.batches(run.position.epoch, run.position.batch, stop=stop)
    files = run.data.train_files
    if files is None:
        for batch_index, idx in plan:
            idx = idx.to(run.device)
            yield batch_index, Batch(images=run.data.train_x[idx], index=idx)
        return
    assert run.data.bad_files is not None
    cuda = run.device.type == "cuda"
    workers = loader_workers(int(run.cfg.data.workers))
    on_device = run.device if str(run.cfg.data.decode) == "device" else None
    for batch_index, images, idx in stream_batches(files, list(plan), run.data.bad_files, workers,
                                                   pin_memory=cuda and on_device is None,
                                                   decode_device=on_device):
        yield batch_index, Batch(images=images.to(run.device, non_blocking=cuda),
                                 index=idx.to(run.device))


def _agree_on_bad_files(run: Run) -> None:
    """Streamed data: share newly found unreadable files between ranks and apply
    ``data.max_bad_fraction`` to the union, so every rank fails at the same step."""
    bad = run.data.bad_files
    if run.data.train_files is None or bad is None:
        return
    shared = run.shared_bad_files
    new = {i: p for i, p in bad.found.items() if i not in shared}
    if distributed.any_rank(bool(new)):
        for found in distributed.all_gather_object(new):
            shared.update(found)  # type: ignore[arg-type]
        bad.merge(shared)


def _stop_if_requested(run: Run, stop: StopSignals) -> None:
    """At a step boundary: when any rank got a stop signal, every rank checkpoints here
    and raises ``StopRequested`` (the same step everywhere: the flag is agreed on through
    the host-side control group, without waiting for the device)."""
    signum = distributed.max_over_ranks(stop.requested or 0)
    if not signum:
        return
    if run.last_saved_step != run.position.step:
        save_checkpoint(run)
    raise StopRequested(signum, run.position.step,
                        checkpoint_path(run.run_dir / "checkpoints", run.position.step))


def no_phase(name: str) -> contextlib.AbstractContextManager:
    """The default ``phase`` of the step functions: no instrumentation."""
    return contextlib.nullcontext()


def forward_backward(run: Run, step_fn: Any, batch: Batch, health: StepHealth,
                     phase: Callable[[str], contextlib.AbstractContextManager] = no_phase) -> LossTerms:
    """One micro-batch: the step's loss terms (views, episode, model), their finiteness
    kept in ``health``, and the backward of their total (divided by
    ``trainer.accumulate``). ``phase(name)`` wraps each part (benchmarks count them)."""
    accumulate = int(run.cfg.trainer.accumulate)
    with phase("forward"):
        terms = step_fn(batch, StepInputs(generator=run.generator, step=run.position.step,
                                          model=run.wrapped, autocast=run.autocast))
    with phase("backward"):
        total = terms.total
    with phase("guards"):
        health.add_loss(terms, total)
    with phase("backward"):
        _backward(run, total if accumulate == 1 else total / accumulate)
    return terms


def update_after_backward(run: Run, step_fn: Any, health: StepHealth,
                          phase: Callable[[str], contextlib.AbstractContextManager] = no_phase) -> bool:
    """After the last micro-batch's backward: the step's one read of the device (loss and
    gradient finiteness), then the optimizer, scheduler, EMA teacher and memory write, or a
    skipped step. Returns whether the weights were updated."""
    with phase("guards"):
        if run.scaler is None:  # the scaler (fp16) skips steps with inf/NaN gradients itself
            health.add_gradients(run.model)
        finite = health.finite()

    def update() -> None:
        with phase("optimizer"):
            _optimizer_step(run)
        with phase("after"):  # the teacher, then the memory write
            step_fn.after_optimizer_step(run.position.step, run.total_steps)

    return settle_step(run, health, finite, update, phase=phase)


def settle_step(run: Run, health: StepHealth, finite: torch.Tensor, update: Callable[[], None], *,
                release_grads: bool = True,
                phase: Callable[[str], contextlib.AbstractContextManager] = no_phase) -> bool:
    """The step's one read of the device (``finite``, from ``health.finite()``), the
    ``trainer.nonfinite`` policy, then ``update()`` (the weights' update) or a skipped step
    (``release_grads``: drop the gradients). Returns whether the weights were updated."""
    with phase("guards"):
        loss_bad, grad_bad, flags = read_finite(run, health, finite)
        healthy = _step_is_healthy(run, health, loss_bad, grad_bad, flags)
    if not healthy:
        _skip_step(run, release_grads)
        return False
    update()
    run.position.consecutive_skips = 0
    return True


def take_step(run: Run, step_fn: Any, batch: Batch,
              phase: Callable[[str], contextlib.AbstractContextManager] = no_phase) -> tuple[LossTerms, bool]:
    """One optimizer step of one micro-batch, eagerly: ``(terms, whether the weights were
    updated)``."""
    health = StepHealth()
    terms = forward_backward(run, step_fn, batch, health, phase)
    return terms, update_after_backward(run, step_fn, health, phase)


def _graphed_step(run: Run, step_fn: Any, graphed: GraphedStep, batch: Batch) -> LossTerms:
    """One optimizer step under ``trainer.cuda_graphs``: eager while warming up (then
    captured), replayed after."""
    if graphed.ready:
        return graphed.step(batch)[0]
    with graphed.warming_up():
        terms, _ = take_step(run, step_fn, batch)
    graphed.eager_step_done(batch)
    return terms


def train_steps(run: Run, logger: MetricsLogger, stop: StopSignals | None = None) -> None:
    """Optimizer steps from ``run.position`` to ``run.total_steps``. Each step takes
    ``trainer.accumulate`` micro-batches (DDP synchronises gradients on the last only).
    ``stop``: signal flags looked at after every step (see ``metacontrast.signals``)."""
    t = run.cfg.trainer
    step_fn = run.plugins.make_train_step(run.cfg, run.components)
    accumulate, log_every, checkpoint_every = int(t.accumulate), int(t.log_every), int(t.checkpoint_every)
    no_sync = getattr(run.wrapped, "no_sync", None)
    run.model.train()
    last_log, images_since_log = time.perf_counter(), 0
    pos = run.position
    batches_per_epoch = (run.sampler.steps_per_epoch // accumulate) * accumulate
    health = StepHealth()
    graphed = GraphedStep(run, step_fn) if t.cuda_graphs else None
    run.clock = (time.perf_counter(), run.elapsed_s)
    while pos.step < run.total_steps:
        terms: LossTerms | None = None
        for batch_index, batch in _epoch_batches(run, batches_per_epoch):
            pos.batch = batch_index
            images_since_log += batch.size
            if graphed is not None:  # one batch a step (check_capturable)
                terms = _graphed_step(run, step_fn, graphed, batch)
            else:
                last_micro = (batch_index + 1) % accumulate == 0
                with contextlib.nullcontext() if last_micro or no_sync is None else no_sync():
                    terms = forward_backward(run, step_fn, batch, health)
                if not last_micro:
                    continue
                update_after_backward(run, step_fn, health)
                health = StepHealth()
            if run.compile_watch is not None:
                run.compile_watch.first_step_done()
            pos.step += 1
            pos.batch = batch_index + 1
            _tick(run)
            run.plugins.hooks.hook.metacontrast_on_step_end(
                state=StepState(step=pos.step, epoch=pos.epoch, terms=terms.detached(), model=run.model))
            logger.advance()
            if pos.step % log_every == 0 or pos.step == run.total_steps:
                now = time.perf_counter()
                logger.log(_metrics_row(run, terms, images_since_log, now - last_log))
                last_log, images_since_log = now, 0
            if checkpoint_every > 0 and pos.step % checkpoint_every == 0:
                save_checkpoint(run)
            _agree_on_bad_files(run)
            if stop is not None:
                _stop_if_requested(run, stop)
            if pos.step >= run.total_steps:
                break
        if pos.batch >= batches_per_epoch:  # the epoch ran to its end
            _end_epoch(run, logger, terms)


@contextlib.contextmanager
def claimed_run_dir(cfg: DictConfig, world: distributed.WorldInfo, *,
                    allow_finished: bool = False) -> Iterator[Path]:
    """The run directory rank 0 claims (``metacontrast.run_dirs.claim``), known to every
    rank; a refusal is raised on every rank."""
    with contextlib.ExitStack() as stack:
        refused, path = "", ""
        if world.is_main:
            try:
                path = str(stack.enter_context(claim(cfg, allow_finished=allow_finished)))
            except RunDirError as err:
                refused = (type(err).__name__, str(err))
        refused, path = distributed.broadcast_object((refused, path))  # type: ignore[misc]
        if refused:
            kind = RunDirUnwritableError if refused[0] == RunDirUnwritableError.__name__ else RunDirError
            raise kind(refused[1])
        yield Path(path)


def fit(cfg: DictConfig, plugins: PluginManager | None = None) -> dict[str, Any]:
    """Pre-train, then evaluate; returns the content written to ``results.json``. The run
    directory is claimed (locked, checked writable) before any work."""
    world = distributed.init_from_env(resolve_device(str(cfg.trainer.device)).type)
    with claimed_run_dir(cfg, world) as run_dir:
        return _fit_in(cfg, plugins, run_dir)


def _fit_in(cfg: DictConfig, plugins: PluginManager | None, run_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    session = SessionClock(run_dir) if distributed.current().is_main else None
    run = setup(cfg, plugins, run_dir=run_dir)
    resume = load_resume_checkpoint(run)
    if resume is not None:
        restore(run, *resume)
    elif run.world.is_main:
        evaluate_baselines(run)
    if run.world.is_main:
        dropped = cut_metrics(run.run_dir, run.position.step)
        write_text_atomic(run.run_dir / "config.yaml", to_yaml(cfg))
        if resume is not None:
            print(f"resuming from {resume[0]} at step {run.position.step}", file=sys.stderr)
        if dropped:
            print(f"metrics.jsonl: {dropped} rows logged after step {run.position.step} by an earlier "
                  f"process removed (those steps run again)", file=sys.stderr)
    distributed.barrier()
    logger = MetricsLogger(run.run_dir, enabled=run.world.is_main, total_steps=run.total_steps,
                           initial_step=run.position.step, progress=bool(cfg.trainer.progress),
                           tensorboard=bool(cfg.trainer.tensorboard),
                           heartbeat=None if session is None else session.touch)
    try:
        with StopSignals() as stop:
            train_steps(run, logger, stop)
            if run.last_saved_step != run.position.step:
                save_checkpoint(run)
    finally:
        logger.close()
    results: dict[str, Any] = {}
    if run.world.is_main:
        assert session is not None
        pretrained = (evaluate_encoder(run, run.model.encoder, project=True, label="the trained encoder")
                      if run.components.evaluators else {})
        metrics = {"pretrained": pretrained}
        metrics.update(run.baseline_metrics)
        # the final evaluation competes with the periodic ones for "best"
        final = {k: v for k, v in pretrained.items() if k in run.best_metrics}
        update_best(run.best_metrics, final, epoch=run.position.epoch, step=run.position.step)
        results = describe_run(run, metrics, session.total_s())
        results["this_process_s"] = round(time.perf_counter() - started, 1)
        write_text_atomic(run.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        if run.compile_watch is not None:
            report = run.compile_watch.report()
            if report.recompiles or report.graph_breaks or report.eager:
                print(report.summary(), file=sys.stderr)
    distributed.barrier()
    return results or {"run_dir": str(run.run_dir)}


def _time_to_target(run: Run) -> dict[str, Any] | None:
    """``evaluation.target_metric``'s first periodic value at or above the target, or
    ``reached: false``; ``None`` without a target."""
    ev = run.cfg.evaluation
    if not str(ev.target_metric):
        return None
    if run.target_reached is None:
        return {"metric": str(ev.target_metric), "target": float(ev.target_value), "reached": False}
    return {**run.target_reached, "reached": True}


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


def protocol_settings(evaluator: Any) -> dict[str, Any]:
    """An evaluator's effective settings (its config with every default filled in)."""
    config = evaluator.config
    settings = attrs.asdict(config) if attrs.has(type(config)) else {}
    return {"name": evaluator.NAME, **settings}


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
        "global_batch": int(cfg.trainer.batch_size) * run.world.world_size * int(cfg.trainer.accumulate),
        "seed": int(cfg.trainer.seed),
        "precision": run.precision,
        "device": str(run.device),
        "hardware": hardware_description(run.device),
        "world_size": run.world.world_size,
        "torch": torch.__version__,
        "metacontrast": __version__,
        # every process that worked on the run, each from its start to its last sign of life
        "wall_clock_s": round(seconds, 1),
        "train_images_for_eval": int(_eval_train_index(run).shape[0]),
        "unreadable_files": run.data.unreadable_files,
        "test_images": int(run.data.test_x.shape[0]),
        "protocols": {name: protocol_settings(ev) for name, ev in run.components.evaluators.items()},
        "metrics": metrics,
        # the best of the periodic evaluations (every trainer.eval_every_epochs) and the final one
        "best_metrics": run.best_metrics,
        "eval_every_epochs": int(cfg.trainer.eval_every_epochs),
        "train_loop_s": round(run.elapsed_s, 2),
        "time_to_target": _time_to_target(run),
        "evaluation_details": run.eval_details,
        "compile": None if run.compile_watch is None else run.compile_watch.report().as_dict(),
        "run_dir": str(run.run_dir),
    }


# what the baselines' numbers depend on besides the (unchanged) encoder architecture
BASELINE_KEYS = ("eval", "evaluation", "data", "trainer.seed")


def evaluate_checkpoint(path: Path, overrides: list[str],
                        plugins: PluginManager | None = None) -> dict[str, Any]:
    """Evaluate the encoder stored in checkpoint ``path`` with its own config, changed by
    dotted ``overrides`` (e.g. ``data.root=...``, ``eval.knn.k=20``). Writes
    ``results.json`` into ``<run_dir>/eval/`` (or ``trainer.run_dir`` when overridden).
    The baselines stored with the checkpoint are reused only when the evaluation settings
    are the ones they were measured with; otherwise they are measured again, so every
    metric of ``results.json`` comes from the settings it states."""
    path = Path(path)
    payload = load_safe(path)
    stored = from_yaml(payload["config"])
    plugins = plugins or PluginManager(autoload=stored.plugins.autoload, block=stored.plugins.block)
    check_targets(stored, plugins.allowed_targets(), source=f"checkpoint {path}")
    try:
        cfg = OmegaConf.merge(stored, OmegaConf.from_dotlist(overrides))
    except Exception as err:
        raise ConfigError(f"override: {str(err).splitlines()[0]}") from None
    check_values(cfg)
    check_compatible(stored, cfg, path)
    if not any(o.startswith("trainer.run_dir=") for o in overrides):
        cfg.trainer.run_dir = str(path.parent.parent / "eval")
    world = distributed.init_from_env(resolve_device(str(cfg.trainer.device)).type)
    with claimed_run_dir(cfg, world, allow_finished=True) as run_dir:
        started = time.perf_counter()
        run = setup(cfg, plugins, run_dir=run_dir)
        reuse = (all(plain_setting(stored, k) == plain_setting(cfg, k) for k in BASELINE_KEYS)
                 and "baseline_metrics" in payload)
        if reuse:
            run.baseline_metrics = dict(payload["baseline_metrics"])
        elif run.world.is_main:
            evaluate_baselines(run)  # on the encoder as setup built it: the same seed's initial weights
        try:
            run.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint {path} does not fit the configured model: "
                                  f"{str(err).splitlines()[0]}") from None
        run.position = Position(**payload["position"])
        metrics = {"pretrained": evaluate_encoder(run, run.model.encoder, project=True,
                                                  label="the checkpoint's encoder")}
        metrics.update(run.baseline_metrics)
        results = describe_run(run, metrics, time.perf_counter() - started)
        results["checkpoint"] = str(path)
        results["baselines_from"] = "checkpoint" if reuse else "measured now"
        if run.world.is_main:
            write_text_atomic(run.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results
