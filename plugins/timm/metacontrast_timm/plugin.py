"""Registers the timm encoder (``encoder=timm``) and ships its config option."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_timm.encoder import TimmEncoder


@hookimpl
def metacontrast_register_encoders() -> list[type]:
    return [TimmEncoder]


@hookimpl
def metacontrast_config_searchpath() -> list[str]:
    return ["pkg://metacontrast_timm.configs"]
