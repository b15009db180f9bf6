"""Setting a run up: device, precision, seeds, data, components, optimizer, resume.

``setup(cfg)`` returns the ``Run`` the loop, the evaluation and the results read: the
world, the data, the built components wrapped for DDP, the optimizer and schedule, the
position to start from (restored from the newest checkpoint when resuming).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from omegaconf import DictConfig

from metacontrast import distributed
from metacontrast.builder import Components, build_components, check_component_configs
from metacontrast.compiling import CompileWatch, compile_mode, compile_parts
from metacontrast.config import ConfigError
from metacontrast.data import EpochBatchSampler, ImageData, TabularData, load_dataset, subset_indices
from metacontrast.evaluation import select_periodic
from metacontrast.graphs import check_capturable
from metacontrast.host import tune_glibc_malloc
from metacontrast.interfaces import BuildContext
from metacontrast.optim import build_optimizer, build_scheduler
from metacontrast.phases import SILENT, Announcer, precision_name, precision_reason
from metacontrast.plugins import PluginManager
from metacontrast.run_dirs import (
    RunDirError,
    RunDirUnwritableError,
    claim,
    default_dir_stem,
)
from metacontrast.targets import check_targets
from metacontrast.threads import LoadFollower, apply_threads, load_follower


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
    # the steps the schedules (learning rate, the teacher's momentum) are sized for:
    # trainer.epochs of the data, or trainer.max_steps where that is fewer
    schedule_steps: int
    # where the training loop ends: schedule_steps, or earlier (ended_by says why)
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
    # why the training loop ended before schedule_steps (ENDINGS), None while it has not
    ended_by: str | None = None
    # seconds spent in the training loop (steps, periodic evaluations, checkpoints), added up
    # over every process that resumed the run; clock: (perf_counter, elapsed_s) at this loop's start
    elapsed_s: float = 0.0
    clock: tuple[float, float] = (0.0, 0.0)
    announce: Announcer = SILENT
    # the CPU thread count following the machine's load (None: pinned, fixed, or a GPU run)
    threads: LoadFollower | None = None

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
    check_evaluators_fit(components.evaluators, eval_bank_size(data, cfg))
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
               schedule_steps=total, total_steps=total,
               compile_watch=None if mode == "off" else CompileWatch(mode, str(t.compile_backend),
                                                                     eager_parts),
               announce=announce, threads=load_follower(int(t.threads), device.type))


def threads_state(run: Run) -> dict[str, Any]:
    """How the run's CPU threads were chosen, for checkpoints and ``results.json``."""
    if run.threads is not None:
        return run.threads.state()
    how = "pinned" if int(run.cfg.trainer.threads) > 0 else "fixed"
    return {"policy": how, "threads": torch.get_num_threads(), "changes": []}


def eval_train_subset(data: Any, cfg: DictConfig) -> torch.Tensor:
    """The fixed train subset used as kNN bank and probe training set: rows of
    ``data.train_x`` (a streamed dataset holds exactly that subset in memory)."""
    n = int(data.train_x.shape[0])
    if getattr(data, "train_files", None) is not None:
        return torch.arange(n)
    return subset_indices(n, int(cfg.evaluation.train_subset), int(cfg.trainer.seed))


def eval_bank_size(data: Any, cfg: DictConfig) -> int:
    """How many labelled train images the evaluators read (the kNN bank, the probe's
    training set)."""
    return int(eval_train_subset(data, cfg).numel())


def check_evaluators_fit(evaluators: dict[str, Any], bank_size: int) -> None:
    """Refuse, before any training, an evaluator setting the labelled data cannot satisfy
    (``eval.knn.k`` above the bank's size), naming its key."""
    for key, evaluator in evaluators.items():
        problem = evaluator.bank_problem(bank_size)
        if problem:
            raise ConfigError(f"eval.{key}.{problem}")


# why a training loop ends before its schedule: the periodic evaluation reached
# evaluation.target_value (evaluation.stop_at_target), or trainer.time_limit_s ran out
ENDINGS = ("target", "time_limit")


def end_early(run: Run, why: str) -> None:
    """End the training loop at the current step, before its schedule (``why``: one of
    ``ENDINGS``); the schedules keep the length they were sized for."""
    assert why in ENDINGS, why
    run.total_steps = run.position.step
    run.ended_by = why


def tick(run: Run) -> None:
    """Bring ``run.elapsed_s`` up to now."""
    started, base = run.clock
    run.elapsed_s = base + time.perf_counter() - started


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
