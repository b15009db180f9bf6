"""Registers the MLflow logger (``logger=[..., mlflow]``) and ships its config option."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_mlflow.logger import MlflowLogger


@hookimpl
def metacontrast_register_loggers() -> list[type]:
    return [MlflowLogger]


@hookimpl
def metacontrast_config_searchpath() -> list[str]:
    return ["pkg://metacontrast_mlflow.configs"]
