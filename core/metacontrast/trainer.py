"""The two jobs of a run, and the names callers use.

``fit(cfg)``: set the run up (``run_setup``), evaluate the baselines or resume
(``resume``), take the optimizer steps (``loop``), evaluate the trained encoder
(``run_evaluation``) and write ``results.json`` (``results``), as one process or as
every rank under ``torchrun``. ``evaluate_checkpoint``: ``metacontrast eval`` of a
stored checkpoint. The other names below are re-exported from those modules for
callers (the CLI, the Python API, benchmarks, tests).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from metacontrast import distributed
from metacontrast.builder import build_loggers
from metacontrast.checkpoint import CheckpointError, latest_checkpoint, load_safe
from metacontrast.config import ConfigError, from_yaml, to_yaml
from metacontrast.evaluation import update_best
from metacontrast.interfaces import RunStart
from metacontrast.loop import forward_backward, settle_step, take_step, train_steps, update_after_backward
from metacontrast.metrics import RunLog
from metacontrast.plugins import PluginManager
from metacontrast.results import describe_run
from metacontrast.resume import (
    check_compatible,
    load_resume_checkpoint,
    plain_setting,
    restore,
    save_checkpoint,
)
from metacontrast.run_dirs import SessionClock, write_text_atomic
from metacontrast.run_evaluation import eval_inputs, evaluate_baselines, evaluate_encoder
from metacontrast.run_setup import (
    Position,
    Run,
    TrainingError,
    claimed_run_dir,
    resolve_device,
    resolve_precision,
    setup,
    use_deterministic_algorithms,
)
from metacontrast.schema_checks import check_values
from metacontrast.signals import StopRequested, StopSignals
from metacontrast.targets import check_targets


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
        write_text_atomic(run.run_dir / "config.yaml", to_yaml(cfg))
        if resume is not None:
            print(f"resuming from {resume[0]} at step {run.position.step}", file=sys.stderr)
    log = _run_log(run, session, resumed=resume is not None)
    distributed.barrier()
    status = "failed"
    try:
        try:
            with StopSignals() as stop:
                train_steps(run, log, stop)
                if run.last_saved_step != run.position.step:
                    save_checkpoint(run)
        except StopRequested:
            status = "stopped"
            raise
        log.end_progress()
        results = _finish(run, log, session, started) if run.world.is_main else {}
        status = "finished"
    finally:
        log.close(status)
    distributed.barrier()
    return results or {"run_dir": str(run.run_dir)}


def _run_log(run: Run, session: SessionClock | None, resumed: bool) -> RunLog:
    """The loggers (rank 0), told where the run starts; the progress bar."""
    cfg = run.cfg
    loggers = build_loggers(cfg, run.plugins, run.components.context) if run.world.is_main else {}
    log = RunLog(loggers, total_steps=run.total_steps, initial_step=run.position.step,
                 progress=bool(cfg.trainer.progress) and run.world.is_main,
                 heartbeat=None if session is None else session.touch,
                 durable_step=lambda: run.last_saved_step)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    log.start(RunStart(run_dir=run.run_dir, config=plain, step=run.position.step, total_steps=run.total_steps,
                       resumed=resumed, method=str(cfg.get("method_name", "")), dataset=str(cfg.data.name)))
    return log


def _finish(run: Run, log: RunLog, session: SessionClock | None, started: float) -> dict[str, Any]:
    """Rank 0 after training: every evaluator on the trained encoder, ``results.json``,
    the report's figures for the loggers that want them, the loggers' summary."""
    assert session is not None
    evaluated = time.perf_counter()
    pretrained = (evaluate_encoder(run, run.model.encoder, project=True, label="the trained encoder")
                  if run.components.evaluators else {})
    evaluated = time.perf_counter() - evaluated
    metrics = {"pretrained": pretrained}
    metrics.update(run.baseline_metrics)
    # the final evaluation competes with the periodic ones for "best"
    final = {k: v for k, v in pretrained.items() if k in run.best_metrics}
    update_best(run.best_metrics, final, epoch=run.position.epoch, step=run.position.step)
    results = describe_run(run, metrics, session.total_s())
    results["this_process_s"] = round(time.perf_counter() - started, 1)
    # every evaluator on the trained encoder (and its 2-D projection), after the loop
    results["final_evaluation_s"] = round(evaluated, 2)
    write_text_atomic(run.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if run.compile_watch is not None:
        report = run.compile_watch.report()
        if report.recompiles or report.graph_breaks or report.eager:
            print(report.summary(), file=sys.stderr)
    log.finish(results, report_figures(run.run_dir) if log.wants_figures() else {})
    return results


def report_figures(run_dir: Path) -> dict[str, Path]:
    """The report of this one run (``metacontrast report RUN_DIR``), written into
    ``<run_dir>/report``: its PNG figures by name."""
    from metacontrast.report import write_report

    out = write_report([run_dir]).parent
    # one run: its projection is "projection" (the report numbers and labels each run's)
    return {re.sub(r"^projection_00_.*", "projection", path.stem): path for path in sorted(out.glob("*.png"))}


# what the baselines' numbers depend on besides the (unchanged) encoder architecture
BASELINE_KEYS = ("eval", "evaluation", "data", "trainer.seed")


def evaluate_checkpoint(path: Path, overrides: list[str],
                        plugins: PluginManager | None = None) -> dict[str, Any]:
    """Evaluate the encoder stored in checkpoint ``path`` with its own config, changed by
    dotted ``overrides`` (e.g. ``data.root=...``, ``eval.knn.k=20``). Writes
    ``results.json`` into ``<run_dir>/eval/`` (or ``trainer.run_dir`` when overridden).
    The baselines stored with the checkpoint are reused only when the evaluation settings
    are the ones they were measured with; otherwise they are measured again, so every
    metric of ``results.json`` comes from the settings it states. ``path`` may be a run
    directory: its newest checkpoint."""
    path = latest_checkpoint(Path(path))
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
        run.ended_by = payload.get("ended_by")
        metrics = {"pretrained": evaluate_encoder(run, run.model.encoder, project=True,
                                                  label="the checkpoint's encoder")}
        metrics.update(run.baseline_metrics)
        results = describe_run(run, metrics, time.perf_counter() - started)
        results["checkpoint"] = str(path)
        results["baselines_from"] = "checkpoint" if reuse else "measured now"
        if run.world.is_main:
            write_text_atomic(run.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results


__all__ = ["BASELINE_KEYS", "Position", "Run", "TrainingError", "claimed_run_dir", "eval_inputs",
           "evaluate_baselines", "evaluate_checkpoint", "evaluate_encoder", "fit", "forward_backward",
           "load_resume_checkpoint", "resolve_device", "resolve_precision", "restore", "save_checkpoint",
           "settle_step", "setup", "take_step", "train_steps", "update_after_backward",
           "use_deterministic_algorithms"]
