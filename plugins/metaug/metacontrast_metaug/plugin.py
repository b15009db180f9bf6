"""Registers MetAug's parts: encoders ``split_alexnet`` and ``channel_split`` (colour
channel views, one network each), head ``split_projection``, losses ``oucl`` and
``metaug``, and the bi-level train step for configs that use ``metaug``."""

from __future__ import annotations

from typing import Any

from metacontrast import hookimpl
from metacontrast.step import DefaultTrainStep
from metacontrast_metaug.encoders import ChannelSplitEncoder, SplitAlexNet
from metacontrast_metaug.heads import SplitProjection
from metacontrast_metaug.losses import MetAugLoss, OUCLLoss
from metacontrast_metaug.step import MetAugObjective


@hookimpl
def metacontrast_register_encoders() -> list[type]:
    return [SplitAlexNet, ChannelSplitEncoder]


@hookimpl
def metacontrast_register_heads() -> list[type]:
    return [SplitProjection]


@hookimpl
def metacontrast_register_losses() -> list[type]:
    return [OUCLLoss, MetAugLoss]


@hookimpl
def metacontrast_make_train_step(config: Any, components: Any) -> DefaultTrainStep | None:
    """The bi-level step when a ``metaug`` loss is configured (one at most)."""
    names = [n for n, loss in components.model.losses.items() if isinstance(loss, MetAugLoss)]
    if not names:
        return None
    if len(names) > 1:
        raise ValueError(f"loss: one metaug loss per config, got {', '.join(names)}")
    return DefaultTrainStep(components.view_generator, components.episode_builder, components.view_transforms,
                            memory=components.memory, model=components.model,
                            objective=MetAugObjective(components.model, names[0]))
