"""Trainer behaviours: accumulation, evaluation during training, non-finite losses, devices."""

from __future__ import annotations

import json
import math

import pytest
import torch

from metacontrast import hookimpl
from metacontrast.config import ConfigError, compose_config
from metacontrast.interfaces import Loss
from metacontrast.plugins import PluginManager, as_module
from metacontrast.trainer import TrainingError, fit, resolve_device, resolve_precision, setup

from .conftest import TINY


def _rows(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    run_dir = tmp_path / "run"
    results = fit(compose_config([*TINY, "trainer.batch_size=8", "trainer.accumulate=2",
                                  f"trainer.run_dir={run_dir}"]))
    assert results["steps"] == 2 and results["global_batch"] == 16
    assert [r["step"] for r in _rows(run_dir)] == [1, 2]


def test_evaluation_every_epoch_is_logged(tmp_path):
    run_dir = tmp_path / "run"
    fit(compose_config([*TINY, "data.train_subset=32", "trainer.max_steps=0", "trainer.epochs=2",
                        "trainer.eval_every_epochs=1", f"trainer.run_dir={run_dir}"]))
    evals = [r for r in _rows(run_dir) if "eval/knn_top1" in r]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert all(0.0 <= r["eval/linear_top1"] <= 1.0 for r in evals)


class _NaNLoss(Loss):
    NAME = "nan_loss"

    def __init__(self, config, context):
        super().__init__()

    def forward(self, inputs):
        return inputs.embeddings.z.sum() * float("nan")


def test_non_finite_loss_stops_before_the_optimizer_step(tmp_path):
    plugin = as_module("nan_plugin", metacontrast_register_losses=hookimpl(lambda: [_NaNLoss]))
    cfg = compose_config([*TINY, "+loss.nan_loss.weight=1.0", f"trainer.run_dir={tmp_path / 'run'}"])
    with pytest.raises(TrainingError, match=r"step 0: loss term 'nan_loss' is nan"):
        fit(cfg, PluginManager(extra=[plugin]))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="trainer.device: 'cuda' asked for but no CUDA device"):
        resolve_device("cuda")


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)


class _NaNAtSteps(Loss):
    """NT-Xent-free loss that is NaN on the listed optimizer steps (counted by calls)."""

    NAME = "nan_at_steps"
    bad_calls: tuple[int, ...] = ()

    def __init__(self, config, context):
        super().__init__()
        self.calls = 0

    def forward(self, inputs):
        value = inputs.embeddings.z.pow(2).mean()
        bad = self.calls in self.bad_calls
        self.calls += 1
        return value * float("nan") if bad else value


def _nan_plugin(bad_calls):
    cls = type("NaNAt", (_NaNAtSteps,), {"bad_calls": tuple(bad_calls)})
    return as_module("nan_at_plugin", metacontrast_register_losses=hookimpl(lambda: [cls]))


def test_skip_policy_skips_counts_and_saves(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config([*TINY, "+loss.nan_at_steps.weight=1.0", "trainer.max_steps=4", "trainer.log_every=1",
                          "trainer.nonfinite=skip", f"trainer.run_dir={run_dir}"])
    results = fit(cfg, PluginManager(extra=[_nan_plugin([1])]))
    assert results["steps"] == 4
    rows = _rows(run_dir)
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 1]
    from metacontrast.checkpoint import list_checkpoints, load_safe

    payload = load_safe(list_checkpoints(run_dir / "checkpoints")[-1])
    assert payload["position"]["skipped"] == 1 and payload["position"]["consecutive_skips"] == 0


def test_skipped_step_leaves_the_weights_untouched(tmp_path):
    from metacontrast.metrics import RunLog
    from metacontrast.trainer import train_steps

    cfg = compose_config([*TINY, "+loss.nan_at_steps.weight=1.0", "trainer.max_steps=1",
                          "trainer.nonfinite=skip", f"trainer.run_dir={tmp_path / 'run'}"])
    run = setup(cfg, PluginManager(extra=[_nan_plugin([0])]))
    before = {k: v.clone() for k, v in run.model.state_dict().items() if v.dtype.is_floating_point}
    (tmp_path / "run").mkdir()
    train_steps(run, RunLog({}, total_steps=1, initial_step=0, progress=False))
    after = run.model.state_dict()
    for k, v in before.items():
        if "running" not in k:  # BN statistics move in the forward pass, as they should
            assert torch.equal(after[k], v), k
    assert run.position.skipped == 1


def test_too_many_consecutive_skips_halt(tmp_path):
    cfg = compose_config([*TINY, "+loss.nan_at_steps.weight=1.0", "trainer.max_steps=4",
                          "trainer.nonfinite=skip", "trainer.max_consecutive_skips=1",
                          f"trainer.run_dir={tmp_path / 'run'}"])
    with pytest.raises(TrainingError, match="2 consecutive steps with non-finite values"):
        fit(cfg, PluginManager(extra=[_nan_plugin([0, 1])]))


def test_clip_gradients_matches_the_formula():
    from metacontrast.guards import clip_gradients

    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))]
    grads = [torch.randn(3, 4, generator=g) * 3, torch.randn(5, generator=g) * 3]
    for p, gr in zip(params, grads, strict=True):
        p.grad = gr.clone()
    clip_gradients(params, max_norm=1.5, max_value=2.0)
    clamped = [gr.clamp(-2.0, 2.0) for gr in grads]
    total = sum(float((c * c).sum()) for c in clamped) ** 0.5
    scale = min(1.0, 1.5 / (total + 1e-6))
    for p, c in zip(params, clamped, strict=True):
        torch.testing.assert_close(p.grad, c * scale)
    assert sum(float((p.grad * p.grad).sum()) for p in params) ** 0.5 == pytest.approx(1.5, rel=1e-5)


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.nonfinite=ignore", "trainer.nonfinite: must be one of halt, skip, got 'ignore'"),
    ("trainer.grad_clip_norm=-1", "trainer.grad_clip_norm: must be >= 0"),
])
def test_guard_settings_are_validated(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        compose_config([*TINY, override, f"trainer.run_dir={tmp_path}"])


class _NaNConstant(Loss):
    """A NaN term with no path to the weights: the gradients stay finite."""

    NAME = "nan_constant"

    def __init__(self, config, context):
        super().__init__()

    def forward(self, inputs):
        return torch.tensor(float("nan"), device=inputs.embeddings.z.device)


def test_a_non_finite_term_without_gradient_still_halts(tmp_path):
    plugin = as_module("nan_const_plugin", metacontrast_register_losses=hookimpl(lambda: [_NaNConstant]))
    cfg = compose_config([*TINY, "+loss.nan_constant.weight=1.0", f"trainer.run_dir={tmp_path / 'run'}"])
    with pytest.raises(TrainingError, match=r"step 0: loss term 'nan_constant' is nan"):
        fit(cfg, PluginManager(extra=[plugin]))


def test_a_non_finite_first_micro_batch_is_named_and_skips_the_step(tmp_path):
    from metacontrast.metrics import RunLog
    from metacontrast.trainer import train_steps

    base = [*TINY, "+loss.nan_at_steps.weight=1.0", "trainer.batch_size=8", "trainer.accumulate=2",
            "trainer.max_steps=1"]
    halt = compose_config([*base, f"trainer.run_dir={tmp_path / 'halt'}"])
    with pytest.raises(TrainingError, match=r"step 0: loss term 'nan_at_steps' is nan"):
        fit(halt, PluginManager(extra=[_nan_plugin([0])]))  # the second micro-batch is finite
    run = setup(compose_config([*base, "trainer.nonfinite=skip", f"trainer.run_dir={tmp_path / 'skip'}"]),
                PluginManager(extra=[_nan_plugin([0])]))
    before = {k: v.clone() for k, v in run.model.named_parameters()}
    (tmp_path / "skip").mkdir()
    train_steps(run, RunLog({}, total_steps=1, initial_step=0, progress=False))
    assert run.position.skipped == 1
    assert all(torch.equal(p, before[k]) for k, p in run.model.named_parameters())


HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def test_a_training_step_reads_the_device_once(tmp_path, monkeypatch):
    """Between logging steps the loop reads a tensor back to the host once per optimizer
    step (the finite-ness flags): no per-step ``.item()`` of losses or norms, so a GPU's
    queue is never drained more than once a step by the trainer."""
    from metacontrast.metrics import RunLog
    from metacontrast.trainer import train_steps

    steps = 5
    cfg = compose_config([*TINY, "views=identity", f"trainer.max_steps={steps}", "trainer.log_every=1000",
                          "optim=lars", f"trainer.run_dir={tmp_path / 'run'}"])
    run = setup(cfg)
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    (tmp_path / "run").mkdir()
    logger = RunLog({}, total_steps=steps, initial_step=0, progress=False)
    train_steps(run, logger)
    # one flags read per step, plus one read of the metrics row at the last step
    assert reads == ["tolist"] * (steps + 1), reads


def test_time_to_target_is_recorded_and_can_end_pre_training(tmp_path):
    """A periodic metric reaching ``evaluation.target_value`` is recorded with the epoch,
    step and the training loop's wall-clock; ``stop_at_target`` ends pre-training there.
    Every logged row carries the wall-clock, which only grows."""
    from metacontrast.report import write_report

    run_dir = tmp_path / "run"
    cfg = compose_config([*TINY, "trainer.max_steps=0", "trainer.epochs=5", "data.train_subset=64",
                          "trainer.eval_every_epochs=2", "evaluation.periodic=[knn]", "evaluation.baselines=[]",
                          "evaluation.target_metric=knn_top1", "evaluation.target_value=0.0",
                          "evaluation.stop_at_target=true", f"trainer.run_dir={run_dir}"])
    results = fit(cfg)
    target = results["time_to_target"]
    assert target["reached"] and target["metric"] == "knn_top1" and target["epoch"] == 2
    assert results["epochs"] == 2 and results["steps"] == target["step"] == 8  # stopped at the first evaluation
    rows = _rows(run_dir)
    clock = [r["wall_clock_s"] for r in rows]
    assert clock == sorted(clock) and 0 < target["wall_clock_s"] <= results["train_loop_s"]
    report = write_report([run_dir]).read_text()
    assert "time to target" in report and "knn_top1 >= 0.0" in report and "(epoch 2)" in report
    assert json.loads((run_dir / "results.json").read_text())["time_to_target"] == target
    # the schedule was sized for 5 epochs (20 steps) and is said not to have completed
    assert results["schedule"] == {"completed": False, "ended_by": "target", "steps": 8, "planned_steps": 20,
                                   "planned_epochs": 5.0, "fraction": 0.4}
    assert "2 of 5 epochs (40%), ended at the target" in report
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[-1] > 0.5 * lrs[0]  # still high: the cosine over 20 steps was cut at step 8


def test_a_run_s_schedule_is_sized_by_its_own_length(tmp_path):
    """``trainer.max_steps`` shortens the run and its schedules with it: the learning rate
    decays to its floor at the last step and results.json says the schedule completed."""
    run_dir = tmp_path / "run"
    cfg = compose_config([*TINY, "trainer.max_steps=6", "trainer.epochs=50", "data.train_subset=64",
                          "optim.warmup_epochs=0", "trainer.log_every=1", "evaluation.baselines=[]",
                          f"trainer.run_dir={run_dir}"])
    results = fit(cfg)
    assert results["schedule"] == {"completed": True, "ended_by": "schedule", "steps": 6, "planned_steps": 6,
                                   "planned_epochs": 1.5, "fraction": 1.0}
    lrs = [r["lr"] for r in _rows(run_dir) if "lr" in r]
    base = lrs[0] / (0.5 * (1 + math.cos(math.pi * 1 / 6)))  # the lr after the first step, undone
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9 * base)  # the cosine ends where the run ends


def test_a_time_limit_ends_the_loop_and_results_say_the_schedule_did_not_complete(tmp_path):
    """``trainer.time_limit_s`` ends the loop at a step boundary; the run is evaluated and
    finished as usual, and results.json, the summary and the report say why it ended.
    The checkpoint remembers the early end, so resuming it takes no further step."""
    from metacontrast.metrics import RunLog
    from metacontrast.report import write_report
    from metacontrast.summary import summary_lines
    from metacontrast.trainer import load_resume_checkpoint, restore, train_steps

    run_dir = tmp_path / "run"
    overrides = [*TINY, "trainer.max_steps=0", "trainer.epochs=3", "data.train_subset=64",
                 "trainer.time_limit_s=1e-6", "evaluation.baselines=[]", f"trainer.run_dir={run_dir}"]
    results = fit(compose_config(overrides))
    assert results["steps"] == 1 and results["metrics"]["pretrained"]["knn_top1"] >= 0
    assert results["schedule"] == {"completed": False, "ended_by": "time_limit", "steps": 1, "planned_steps": 12,
                                   "planned_epochs": 3.0, "fraction": round(1 / 12, 4)}
    assert any("ended by trainer.time_limit_s" in line for line in summary_lines(results))
    assert "ended by trainer.time_limit_s" in write_report([run_dir]).read_text()
    run = setup(compose_config([*overrides, "trainer.resume=auto"]))
    restore(run, *load_resume_checkpoint(run))
    assert (run.ended_by, run.total_steps, run.schedule_steps) == ("time_limit", 1, 12)
    # a checkpoint from before the early end (a run stopped by a signal) whose time has run out
    run.ended_by, run.total_steps, run.position.step = None, 12, 0
    train_steps(run, RunLog({}, total_steps=12, initial_step=0, progress=False))
    assert (run.position.step, run.ended_by) == (0, "time_limit")


@pytest.mark.parametrize(("overrides", "message"), [
    (["evaluation.stop_at_target=true"], "evaluation.stop_at_target: needs evaluation.target_metric"),
    (["evaluation.target_metric=knn_top1"], "set trainer.eval_every_epochs > 0"),
    (["data.stream=true", "evaluation.train_subset=0"], "evaluation.train_subset: a streamed dataset"),
])
def test_values_that_go_together_are_checked_when_the_config_is_composed(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):  # before any run is set up
        compose_config([*TINY, *overrides, f"trainer.run_dir={tmp_path}"])


def test_a_target_no_evaluator_measures_is_named(tmp_path):
    cfg = compose_config([*TINY, "trainer.max_steps=0", "trainer.epochs=1", "data.train_subset=32",
                          "trainer.eval_every_epochs=1", "evaluation.periodic=[knn]", "evaluation.baselines=[]",
                          "evaluation.target_metric=linear_top1", f"trainer.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="evaluation.target_metric: 'linear_top1' is not measured by the periodic "
                                          "evaluators; they give knn_top1, knn_top5"):
        fit(cfg)
