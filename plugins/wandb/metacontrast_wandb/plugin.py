"""Registers the W&B logger (``logger=[..., wandb]``) and ships its config option."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_wandb.logger import WandbLogger


@hookimpl
def metacontrast_register_loggers() -> list[type]:
    return [WandbLogger]


@hookimpl
def metacontrast_config_searchpath() -> list[str]:
    return ["pkg://metacontrast_wandb.configs"]
