"""The MLflow logger: params from the config (against a literal reference), metric names,
a resume that changes a setting, and a tracking URI that changed."""

from __future__ import annotations

import pytest

from metacontrast.interfaces import RunStart
from metacontrast_mlflow.logger import MlflowConfig, MlflowLogger, flat_params, metric_name

mlflow = pytest.importorskip("mlflow")


def test_the_config_flattens_to_dotted_params():
    config = {"trainer": {"batch_size": 16, "run_dir": None, "precision": "auto"}, "loss": {"nt_xent": {}},
              "views": {"sizes": [32, 32]}}
    assert flat_params(config) == {"trainer.batch_size": "16", "trainer.run_dir": "null",
                                   "trainer.precision": "auto", "loss.nt_xent": "{}", "views.sizes": "[32, 32]"}
    assert metric_name("loss/nt_xent") == "loss.nt_xent" and metric_name("loss") == "loss"


def _start(run_dir, step: int, max_steps: int, resumed: bool) -> RunStart:
    return RunStart(run_dir=run_dir, config={"trainer": {"max_steps": max_steps}}, step=step,
                    total_steps=max_steps, resumed=resumed)


def test_a_resumed_run_continues_its_mlflow_run_and_records_a_changed_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    first = MlflowLogger(MlflowConfig(tracking_uri=uri), None)
    first.start(_start(tmp_path, 0, 4, resumed=False))
    first.log_metrics({"step": 2, "loss": 1.5, "wall_clock_s": 0.1})
    first.close("stopped")
    client = mlflow.tracking.MlflowClient(uri)
    run_id = first._run_id
    assert client.get_run(run_id).info.status == "KILLED"
    second = MlflowLogger(MlflowConfig(tracking_uri=uri), None)
    second.start(_start(tmp_path, 2, 8, resumed=True))
    assert second._run_id == run_id and second.recorded_steps() == {2}
    second.log_metrics({"step": 3, "loss": 1.0, "wall_clock_s": 0.2})
    second.close("finished")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["trainer.max_steps"] == "4"
    assert run.data.tags["changed_at_step_2.trainer.max_steps"] == "8"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(2, 1.5), (3, 1.0)]
    moved = MlflowLogger(MlflowConfig(tracking_uri=(tmp_path / "elsewhere").as_uri()), None)
    with pytest.raises(RuntimeError, match="mlflow_run.json says this run logs to .*mlruns, the tracking URI is now"):
        moved.start(_start(tmp_path, 3, 8, resumed=True))
