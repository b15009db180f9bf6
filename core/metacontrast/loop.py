"""The training loop: optimizer steps from the run's position to its end.

One step: ``forward_backward`` (the train step's loss terms and their backward, per
micro-batch), then ``update_after_backward`` (the one read of the device, the
``trainer.nonfinite`` policy, the optimizer and the step's ``after_optimizer_step``), then
the boundary work (``on_step_end`` hooks, metrics, checkpoints, stop signals); under
``trainer.cuda_graphs`` the same step captured and replayed (``metacontrast.graphs``).
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from metacontrast import distributed
from metacontrast.checkpoint import checkpoint_path
from metacontrast.data.files import loader_workers, stream_batches
from metacontrast.graphs import GraphedStep
from metacontrast.guards import StepHealth, clip_gradients
from metacontrast.metrics import RunLog
from metacontrast.records import Batch, LossTerms, StepInputs, StepState
from metacontrast.resume import save_checkpoint
from metacontrast.run_evaluation import periodic_evaluation
from metacontrast.run_setup import Run, TrainingError, end_early, tick
from metacontrast.signals import StopRequested, StopSignals


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


def optimizer_step(run: Run, *, release_grads: bool = True, schedule: bool = True) -> None:
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


def _end_epoch(run: Run, logger: RunLog, terms: LossTerms | None) -> None:
    pos, t = run.position, run.cfg.trainer
    pos.epoch += 1
    pos.batch = 0
    if int(t.checkpoint_every) == 0:
        save_checkpoint(run)
    every = int(t.eval_every_epochs)
    if every > 0 and pos.epoch % every == 0:
        periodic_evaluation(run, logger)
        ev = run.cfg.evaluation
        if ev.stop_at_target and distributed.max_over_ranks(int(run.target_reached is not None)):
            end_early(run, "target")
    distributed.barrier()


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


def _end_if_out_of_time(run: Run, time_limit: float) -> None:
    """``trainer.time_limit_s`` (0: none): end the loop here once any rank's training loop
    has run that long (a host-side collective, only when a limit is set)."""
    if time_limit and distributed.any_rank(run.elapsed_s >= time_limit):
        end_early(run, "time_limit")


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
            optimizer_step(run)
        with phase("after"):  # the teacher, then the memory write
            step_fn.after_optimizer_step(run.position.step, run.schedule_steps)

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


def train_steps(run: Run, logger: RunLog, stop: StopSignals | None = None) -> None:
    """Optimizer steps from ``run.position`` to ``run.total_steps``. Each step takes
    ``trainer.accumulate`` micro-batches (DDP synchronises gradients on the last only).
    ``stop``: signal flags looked at after every step (see ``metacontrast.signals``)."""
    t = run.cfg.trainer
    step_fn = run.plugins.make_train_step(run.cfg, run.components)
    accumulate, log_every, checkpoint_every = int(t.accumulate), int(t.log_every), int(t.checkpoint_every)
    time_limit = float(t.time_limit_s)
    no_sync = getattr(run.wrapped, "no_sync", None)
    run.model.train()
    last_log, images_since_log = time.perf_counter(), 0
    pos = run.position
    batches_per_epoch = (run.sampler.steps_per_epoch // accumulate) * accumulate
    health = StepHealth()
    graphed = GraphedStep(run, step_fn) if t.cuda_graphs else None
    run.clock = (time.perf_counter(), run.elapsed_s)
    _end_if_out_of_time(run, time_limit)  # resumed after its time ran out: no further step
    step_started = time.perf_counter()
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
            tick(run)
            _end_if_out_of_time(run, time_limit)  # then this step is the last: logged, checkpointed
            if run.threads is not None:  # a step boundary: the thread count may follow the load
                now = time.perf_counter()
                run.threads.at_step(pos.step, now - step_started)
                step_started = now
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
