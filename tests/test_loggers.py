"""Loggers: the calls every logger receives, the built-in ``jsonl`` and ``tensorboard`` as
before, W&B (offline) and MLflow (a local file store) read back through their own APIs,
each logged step once across a kill and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from omegaconf import open_dict

from metacontrast import hookimpl
from metacontrast.cli import main
from metacontrast.config import compose_config
from metacontrast.interfaces import Logger, RunStart
from metacontrast.metrics import RunLog
from metacontrast.plugins import PluginManager, as_module
from metacontrast.trainer import fit

from .conftest import TINY
from .launch import HANG_GUARD_S, cli_command, fault_env

QUICK = [*TINY, "evaluation.baselines=[]"]
KNN_ONLY = [*(o for o in QUICK if not o.startswith("eval.linear")), "eval=[knn]"]


class Recorder(Logger):
    """Records every call it receives, in order."""

    NAME = "recorder"
    WANTS_FIGURES = True
    calls: ClassVar[list[tuple[str, Any]]] = []

    def start(self, start: RunStart) -> None:
        self.calls.append(("start", start))

    def log_metrics(self, row: dict[str, Any]) -> None:
        self.calls.append(("metrics", row["step"]))

    def log_evaluation(self, row: dict[str, Any], protocols: dict[str, dict[str, Any]]) -> None:
        self.calls.append(("evaluation", (row["step"], sorted(k for k in row if k.startswith("eval/")),
                                          sorted(protocols))))

    def log_figures(self, figures: dict[str, Path]) -> None:
        self.calls.append(("figures", sorted(figures)))

    def log_summary(self, results: dict[str, Any]) -> None:
        self.calls.append(("summary", sorted(results["metrics"]["pretrained"])))

    def close(self, status: str) -> None:
        self.calls.append(("close", status))


@hookimpl
def _register_recorder() -> list[type]:
    return [Recorder]


def _recording_manager() -> PluginManager:
    return PluginManager(extra=[as_module("recorder_plugin", metacontrast_register_loggers=_register_recorder)])


def test_a_logger_receives_start_rows_evaluations_figures_summary_and_close_in_order(tmp_path):
    Recorder.calls = []
    cfg = compose_config([*KNN_ONLY, "trainer.max_steps=4", "trainer.log_every=2", "trainer.eval_every_epochs=1",
                          "data.train_subset=64", f"trainer.run_dir={tmp_path / 'run'}"])
    with open_dict(cfg):
        cfg.logger.recorder = {}
    fit(cfg, plugins=_recording_manager())
    kinds = [kind for kind, _ in Recorder.calls]
    start = Recorder.calls[0][1]
    assert kinds[0] == "start" and start.step == 0 and not start.resumed and start.total_steps == 4
    assert start.config["trainer"]["max_steps"] == 4 and start.run_dir == tmp_path / "run"
    assert [v for k, v in Recorder.calls if k == "metrics"] == [2, 4]
    evaluations = [v for k, v in Recorder.calls if k == "evaluation"]
    assert evaluations == [(4, ["eval/knn_top1", "eval/knn_top5"], ["knn"])]  # 64 images: one epoch is 4 steps
    assert kinds[-3:] == ["figures", "summary", "close"]
    assert "training_curves" in Recorder.calls[-3][1] and "projection" in Recorder.calls[-3][1]
    assert Recorder.calls[-2][1] == ["knn_top1", "knn_top5"] and Recorder.calls[-1][1] == "finished"


class _Store(Logger):
    NAME = "store"

    def __init__(self, live: bool) -> None:
        super().__init__(None, None)
        self.live, self.rows = live, []

    def log_metrics(self, row: dict[str, Any]) -> None:
        self.rows.append(row["step"])


def test_a_logger_that_is_not_live_receives_only_rows_a_checkpoint_holds():
    """Reference: the steps up to each checkpoint, written out by hand."""
    durable = {"step": 0}
    live, held = _Store(live=True), _Store(live=False)
    log = RunLog({"live": live, "held": held}, total_steps=9, initial_step=0, progress=False,
                 durable_step=lambda: durable["step"])
    for step in range(1, 10):
        log.log({"step": step, "loss": 1.0})
        if step in (3, 6):
            durable["step"] = step  # a checkpoint at this step
        log.advance()
        if step == 4:
            assert held.rows == [1, 2, 3]
    log.close("failed")  # killed after step 9 with the last checkpoint at 6
    assert live.rows == list(range(1, 10)) and held.rows == [1, 2, 3, 4, 5, 6]


class _Broken(Logger):
    NAME = "broken"

    def log_metrics(self, row: dict[str, Any]) -> None:
        raise ConnectionError("server unreachable")


def test_a_logger_that_fails_mid_run_is_dropped_with_one_message_and_training_goes_on(capsys):
    kept = _Store(live=True)
    log = RunLog({"broken": _Broken(None, None), "kept": kept}, total_steps=3, initial_step=0, progress=False)
    for step in (1, 2, 3):
        log.log({"step": step})
    assert kept.rows == [1, 2, 3] and list(log.loggers) == ["kept"]
    err = capsys.readouterr().err
    assert err.count("logger.broken: ConnectionError: server unreachable; it receives nothing more") == 1


def test_the_default_loggers_write_metrics_jsonl_and_tensorboard_as_before(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    overrides = [o for o in QUICK if o != "logger=[jsonl]"]
    assert main(["train", *overrides, "trainer.max_steps=3", f"trainer.run_dir={run}"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in rows])
    assert sorted(events.Tags()["scalars"]) == sorted(k for k in rows[0] if k != "step")
    assert not (run / "report").exists()  # no logger wants the figures: none are drawn


def test_trainer_tensorboard_still_works_for_one_release_and_says_what_replaces_it(capsys):
    off = compose_config(["trainer.tensorboard=false"])
    said = capsys.readouterr().err
    assert "trainer.tensorboard is deprecated and goes in the next release" in said
    assert "logger=[jsonl]" in said and list(off.logger) == ["jsonl"] and off.trainer.tensorboard is None
    assert compose_config(["logger=[jsonl]"]) == off  # the advice gives the same config
    on = compose_config(["logger=[jsonl]", "trainer.tensorboard=true"])
    assert sorted(on.logger) == ["jsonl", "tensorboard"]
    assert compose_config(["logger=[jsonl,tensorboard]"]) == on
    capsys.readouterr()
    compose_config([])
    assert "deprecated" not in capsys.readouterr().err


def test_logger_mistakes_are_one_line_naming_the_key(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["train", *QUICK, "logger=[jsonl,wandb]", "logger.wandb.mode=onlin", f"trainer.run_dir={run}"]) == 2
    assert "logger.wandb: mode: 'onlin' is not a W&B mode; choose one of online, offline, disabled" in (
        capsys.readouterr().err)
    assert main(["train", *QUICK, "logger=[jsnl]", f"trainer.run_dir={run}"]) == 2
    assert "jsnl" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    assert main(["train", *QUICK, "logger=[jsonl,mlflow]", f"trainer.run_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "logger.mlflow: it needs the mlflow package: pip install mlflow-skinny (or mlflow); or leave it " \
           "out of logger=[...]" in err
    assert "Traceback" not in err and not (run / "metrics.jsonl").exists()


@pytest.fixture
def tracking_env(tmp_path, monkeypatch) -> dict[str, str]:
    """W&B offline and an MLflow file store, both under ``tmp_path``, as a user's own
    settings would choose them (nothing in the config)."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
           "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _mlflow_steps(uri: str, run_dir: Path, key: str, metric: str = "loss") -> list[int]:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / f"{key}_run.json").read_text())["run_id"]
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


def test_killed_and_resumed_runs_log_each_step_once_to_wandb_and_mlflow(tmp_path, tracking_env):
    """Killed (SIGKILL) at step 6, after the checkpoint at 4 and the row of step 5; the same
    command resumes from 4. Negative control: a second MLflow logger with ``rows: live``
    receives step 5 from both processes."""
    from metacontrast_wandb.offline import offline_history

    run_dir = tmp_path / "run"
    overrides = [*(o for o in QUICK if not o.startswith("eval.")), f"trainer.run_dir={run_dir}",
                 "trainer.resume=auto", "trainer.max_steps=8", "trainer.log_every=1", "trainer.checkpoint_every=4",
                 "eval=[]",
                 "logger=[jsonl,wandb,mlflow]", "+logger.mlflow_live={name:mlflow,rows:live,experiment:live}"]
    env = {**fault_env(kill="0:6"), **tracking_env}
    killed = subprocess.run(cli_command(overrides), env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    uri = tracking_env["MLFLOW_TRACKING_URI"]
    assert _mlflow_steps(uri, run_dir, "mlflow") == [1, 2, 3, 4]
    assert _mlflow_steps(uri, run_dir, "mlflow_live") == [1, 2, 3, 4, 5]
    again = subprocess.run(cli_command(overrides), env={**fault_env(), **tracking_env}, capture_output=True,
                           text=True, timeout=HANG_GUARD_S)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and "at step 4" in again.stderr
    steps = list(range(1, 9))
    assert _mlflow_steps(uri, run_dir, "mlflow") == steps
    assert _mlflow_steps(uri, run_dir, "mlflow_live") == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    history = offline_history(run_dir)
    assert sorted(int(r["_step"]) for r in history if "loss" in r) == steps
    rows = {json.loads(line)["step"]: json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    assert sorted(rows) == steps
    for row in history:  # the values W&B holds are the run's own
        if "loss" in row:
            assert row["loss"] == pytest.approx(rows[int(row["_step"])]["loss"])
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"


def test_wandb_and_mlflow_receive_the_config_summary_and_figures(tmp_path, tracking_env):
    from mlflow.tracking import MlflowClient

    from metacontrast_wandb.offline import offline_history, offline_summary

    run_dir = tmp_path / "run"
    assert main(["train", *KNN_ONLY, "trainer.max_steps=3", f"trainer.run_dir={run_dir}",
                 "logger=[jsonl,wandb,mlflow]"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    knn = results["metrics"]["pretrained"]["knn_top1"]
    summary = offline_summary(run_dir)
    assert summary["final/pretrained/knn_top1"] == pytest.approx(knn)
    images = {k.split("/")[1] for row in offline_history(run_dir) for k in row if k.startswith("report/")}
    assert {"training_curves", "projection"} <= images
    client = MlflowClient(tracking_env["MLFLOW_TRACKING_URI"])
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.max_steps"] == "3"
    assert run.data.metrics["final.pretrained.knn_top1"] == pytest.approx(knn)
    assert "loss.nt_xent" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "report")}
    assert "results.json" in artifacts and "report/training_curves.png" in artifacts


class _KeepingStore(_Store):
    """A store that cannot forget rows and says which steps it holds."""

    def __init__(self, holds: list[int]) -> None:
        super().__init__(live=False)
        self.rows = list(holds)

    def recorded_steps(self) -> set[int] | None:
        return set(self.rows)


def test_a_resumed_run_hands_over_the_checkpointed_rows_a_killed_process_never_delivered(tmp_path):
    """Process 1 is killed right after its checkpoint at step 4, before handing rows 3 and 4
    over; process 2 resumes from 4 and hands over exactly those, then its own."""
    first, durable = _KeepingStore([]), {"step": 0}
    log = RunLog({"store": first}, total_steps=8, initial_step=0, progress=False,
                 durable_step=lambda: durable["step"])
    log.start(RunStart(run_dir=tmp_path, config={}, step=0, total_steps=8, resumed=False))
    for step in (1, 2, 3, 4, 5):
        log.log({"step": step, "loss": float(step)})
        if step in (2, 4):
            durable["step"] = step
        if step < 4:
            log.advance()
    assert first.rows == [1, 2]  # killed here: 3 and 4 checkpointed but not delivered, 5 not checkpointed
    second = _KeepingStore(first.rows)
    log = RunLog({"store": second}, total_steps=8, initial_step=4, progress=False, durable_step=lambda: 4)
    log.start(RunStart(run_dir=tmp_path, config={}, step=4, total_steps=8, resumed=True))
    assert second.rows == [1, 2, 3, 4]
    lines = (tmp_path / "tracker_rows.jsonl").read_text().splitlines()
    assert [json.loads(line)["row"]["step"] for line in lines] == [1, 2, 3, 4]  # 5 cut: it runs again


def test_the_logger_of_writing_plugins_md_runs_as_printed_and_resumes_its_file(tmp_path):
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "writing_plugins.md").read_text()
    section = page[page.index("## A logger"):page.index("## Other kinds of component")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (yaml,) = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    namespace: dict = {"hookimpl": hookimpl}
    exec(compile(code, "writing_plugins.md: A logger", "exec"), namespace)
    (tmp_path / "configs" / "logger").mkdir(parents=True)
    (tmp_path / "configs" / "logger" / "loss_csv.yaml").write_text(yaml)
    manager = PluginManager(extra=[as_module("csv_plugin", metacontrast_register_loggers=
                                             namespace["metacontrast_register_loggers"])])
    run = tmp_path / "run"
    cfg = compose_config([*QUICK, "trainer.max_steps=3", "logger=[jsonl,loss_csv]", f"trainer.run_dir={run}"],
                         searchpath=[f"file://{tmp_path / 'configs'}"])
    fit(cfg, plugins=manager)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    written = [line.split(",") for line in (run / "loss.csv").read_text().splitlines()]
    assert [int(s) for s, _ in written] == [1, 2, 3]
    assert [float(v) for _, v in written] == pytest.approx([r["loss"] for r in rows])
