"""The MLflow logger: one MLflow run per metacontrast run, continued when the run resumes.

The MLflow run id and the tracking URI are kept in ``<run_dir>/<key>_run.json``
(``mlflow_run.json``) when the run first starts; every later process of the run
continues that MLflow run. Nothing here chooses where data goes: with ``tracking_uri:
null`` MLflow's own settings decide (``MLFLOW_TRACKING_URI``, else its default store).

Metric names use ``.`` where metacontrast's rows use ``/`` (``loss.nt_xent``,
``eval.knn_top1``): MLflow's file store keeps each metric in a file named after it, where
``loss`` and ``loss/nt_xent`` cannot both exist.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import attrs

from metacontrast.interfaces import Logger, RunStart

ROWS = ("checkpointed", "live")
STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
PARAM_BATCH = 100  # MLflow takes at most 100 params in one log_batch
PARAM_VALUE_LIMIT = 6000


@attrs.define
class MlflowConfig:
    """``tracking_uri``: the tracking server or store (null: MLflow's own settings).
    ``experiment``: its name (made when missing). ``run_name``: default the run
    directory's name. ``tags``: more tags on the run. ``rows``: ``checkpointed`` (a row
    reaches MLflow once a checkpoint holds its step: each step exactly once across a kill
    and resume) or ``live`` (as logged)."""

    tracking_uri: str | None = None
    experiment: str = "metacontrast"
    run_name: str | None = None
    tags: dict[str, str] = attrs.field(factory=dict)
    rows: str = "checkpointed"

    def __attrs_post_init__(self) -> None:
        if self.rows not in ROWS:
            raise ValueError(f"rows: {self.rows!r}; choose checkpointed or live")


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"trainer": {"lr": 0.1}}`` -> ``{"trainer.lr": "0.1"}`` (values cut to MLflow's limit)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
            out[name] = out[name][:PARAM_VALUE_LIMIT]
    return out


def metric_name(key: str) -> str:
    return key.replace("/", ".")


class MlflowLogger(Logger):
    """Rows as MLflow metrics at their step, the flattened config as params, the report's
    figures and ``results.json`` as artifacts, the final metrics as ``final.<encoder>.
    <metric>``; the run ends ``FINISHED``, ``KILLED`` (stopped by a signal, to be resumed)
    or ``FAILED``."""

    NAME = "mlflow"
    Config = MlflowConfig
    WANTS_FIGURES = True

    def __init__(self, config: MlflowConfig, context: Any) -> None:
        super().__init__(config, context)
        self.live = config.rows == "live"
        self._client: Any = None
        self._run_id = ""
        self._run_dir = Path(".")
        self._step = 0

    @property
    def run_file(self) -> str:
        return f"{self.key}_run.json"

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            return "it needs the mlflow package: pip install mlflow-skinny (or mlflow)"
        return None

    def start(self, start: RunStart) -> None:
        from mlflow.tracking import MlflowClient

        self._run_dir, self._step = Path(start.run_dir), start.step
        try:
            self._client = MlflowClient(tracking_uri=self.config.tracking_uri)
            uri = self._client.tracking_uri
            stored = self.recall(self._run_dir, self.run_file)
            if stored is not None:
                self._resume(stored, uri, start)
            else:
                self._create(uri, start)
        except Exception as err:
            first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
            raise RuntimeError(f"MLflow could not start ({first})") from None

    def _create(self, uri: str, start: RunStart) -> None:
        client = self._client
        experiment = client.get_experiment_by_name(self.config.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(self.config.experiment))
        tags = {"metacontrast.run_dir": str(start.run_dir), "metacontrast.method": start.method,
                "metacontrast.dataset": start.dataset, **self.config.tags}
        run = client.create_run(experiment_id, run_name=self.config.run_name or self._run_dir.name, tags=tags)
        self._run_id = run.info.run_id
        self.remember(self._run_dir, self.run_file, {"run_id": self._run_id, "experiment_id": experiment_id,
                                                "tracking_uri": uri})
        self._log_params(flat_params(start.config))

    def _resume(self, stored: dict[str, Any], uri: str, start: RunStart) -> None:
        if stored.get("tracking_uri") != uri:
            raise ValueError(f"{self.run_file} says this run logs to {stored.get('tracking_uri')}, the "
                             f"tracking URI is now {uri}; set logger.mlflow.tracking_uri to the first")
        self._run_id = str(stored["run_id"])
        run = self._client.get_run(self._run_id)
        self._client.update_run(self._run_id, status="RUNNING")
        # params cannot change in MLflow: new keys become params, changed ones tags
        params = flat_params(start.config)
        known = run.data.params
        self._log_params({k: v for k, v in params.items() if k not in known})
        for key, value in params.items():
            if key in known and known[key] != value[: len(known[key])]:
                self._client.set_tag(self._run_id, f"changed_at_step_{start.step}.{key}", value[:5000])

    def recorded_steps(self) -> set[int] | None:
        """The steps the MLflow run holds (every row carries ``wall_clock_s``)."""
        return {int(m.step) for m in self._client.get_metric_history(self._run_id, "wall_clock_s")}

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAM_BATCH):
            self._client.log_batch(self._run_id, params=items[i:i + PARAM_BATCH])

    def _log(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        self._step, stamp = int(row["step"]), int(time.time() * 1000)
        metrics = [Metric(metric_name(k), float(v), stamp, self._step) for k, v in row.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)]
        self._client.log_batch(self._run_id, metrics=metrics)

    def log_metrics(self, row: dict[str, Any]) -> None:
        self._log(row)

    def log_evaluation(self, row: dict[str, Any], protocols: dict[str, dict[str, Any]]) -> None:
        self._log(row)

    def log_figures(self, figures: dict[str, Path]) -> None:
        for path in figures.values():
            self._client.log_artifact(self._run_id, str(path), artifact_path="report")

    def log_summary(self, results: dict[str, Any]) -> None:
        measured = results.get("metrics") or {}
        final = {f"final/{encoder}/{metric}": value for encoder, metrics in measured.items()
                 for metric, value in metrics.items()}
        if final:
            self._log({"step": self._step, **final})
        path = self._run_dir / "results.json"
        if path.is_file():
            self._client.log_artifact(self._run_id, str(path))

    def close(self, status: str) -> None:
        if self._client is not None and self._run_id:
            self._client.set_terminated(self._run_id, status=STATUS.get(status, "FAILED"))
        self._client = None
