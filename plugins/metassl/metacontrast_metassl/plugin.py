"""Registers the meta-learning parts with metacontrast: solvers (protonet, ridge, svm,
all_pairs), losses (query_ce, byol, rotation) and view transforms (task_rotation,
naive_rotation, rotation_copies, unmix). ``method=protonet|r2d2|svm|byol`` compose them."""

from __future__ import annotations

from metacontrast import hookimpl
from metacontrast_metassl.losses import BYOLLoss, QueryCELoss, RotationLoss
from metacontrast_metassl.solvers import AllPairsSolver, ProtoNetSolver, RidgeSolver
from metacontrast_metassl.svm import SVMSolver
from metacontrast_metassl.transforms import NaiveRotation, RotationCopies, TaskRotation, UnMix


@hookimpl
def metacontrast_register_solvers() -> list[type]:
    return [ProtoNetSolver, RidgeSolver, SVMSolver, AllPairsSolver]


@hookimpl
def metacontrast_register_losses() -> list[type]:
    return [QueryCELoss, BYOLLoss, RotationLoss]


@hookimpl
def metacontrast_register_view_generators() -> list[type]:
    return [TaskRotation, NaiveRotation, RotationCopies, UnMix]
