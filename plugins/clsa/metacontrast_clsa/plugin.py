"""Registers CLSA's DDM loss (``ddm``). ``method=clsa_single|clsa_multi`` compose it with
MoCo v2's parts (``moco_infonce``, the EMA key encoder, the key queue) and the weak and
strong views of metacontrast-kornia."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_clsa.ddm import DDMLoss


@hookimpl
def metacontrast_register_losses() -> list[type]:
    return [DDMLoss]
