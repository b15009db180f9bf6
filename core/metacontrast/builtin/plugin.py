"""The built-in plugin: default components and the default train step.

Registered by the plugin manager through the same path as external plugins; it is
named ``builtin`` in ``metacontrast plugins``.
"""

from __future__ import annotations

from typing import Any

from metacontrast import hookimpl
from metacontrast.builtin.encoders import Conv4, ResNet18, ResNet50, TorchvisionBackbone
from metacontrast.builtin.episodes import NWayKShotEpisode, PairsEpisode
from metacontrast.builtin.evaluators import KNNEvaluator
from metacontrast.builtin.fewshot import FewShotEvaluator
from metacontrast.builtin.heads import IdentityHead, MLPHead
from metacontrast.builtin.linear_probe import LinearProbeEvaluator
from metacontrast.builtin.loggers import JsonlLogger, TensorBoardLogger
from metacontrast.builtin.semi_supervised import SemiSupervisedEvaluator
from metacontrast.builtin.transfer import TransferEvaluator
from metacontrast.builtin.views import IdentityViews
from metacontrast.step import DefaultTrainStep


@hookimpl
def metacontrast_register_view_generators() -> list[type]:
    return [IdentityViews]


@hookimpl
def metacontrast_register_encoders() -> list[type]:
    return [ResNet18, ResNet50, Conv4, TorchvisionBackbone]


@hookimpl
def metacontrast_register_heads() -> list[type]:
    return [MLPHead, IdentityHead]


@hookimpl
def metacontrast_register_episode_builders() -> list[type]:
    return [PairsEpisode, NWayKShotEpisode]


@hookimpl
def metacontrast_register_evaluators() -> list[type]:
    return [KNNEvaluator, LinearProbeEvaluator, FewShotEvaluator, SemiSupervisedEvaluator, TransferEvaluator]


@hookimpl
def metacontrast_register_loggers() -> list[type]:
    return [JsonlLogger, TensorBoardLogger]


@hookimpl(trylast=True)
def metacontrast_make_train_step(config: Any, components: Any) -> DefaultTrainStep:
    return DefaultTrainStep(components.view_generator, components.episode_builder, components.view_transforms,
                            memory=components.memory, model=components.model)
