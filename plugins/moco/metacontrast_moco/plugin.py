"""Registers MoCo's queue InfoNCE loss (``moco_infonce``). ``method=moco_v2`` composes it
with the EMA key encoder (``teacher``) and the key queue of metacontrast-faiss."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_moco.infonce import QueueInfoNCELoss


@hookimpl
def metacontrast_register_losses() -> list[type]:
    return [QueueInfoNCELoss]
