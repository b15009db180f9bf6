"""Registers SimCLR's loss with metacontrast (``method=simclr`` composes it)."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_simclr.nt_xent import NTXentLoss


@hookimpl
def metacontrast_register_losses() -> list[type]:
    return [NTXentLoss]
