"""``_target_`` values are code: check them against an allowlist before importing anything.

A config node ``{_target_: a.b.c, ...}`` asks hydra to import ``a.b`` and call ``c``. Configs
come from YAML files, command-line overrides and checkpoints someone else wrote, so a
``_target_`` of ``os.system`` or ``builtins.eval`` would run arbitrary code. Every config
is therefore walked before it is used (``check_targets``), and the only way to instantiate
a node is ``instantiate_checked``, which checks again. The allowlist is code: the names
below plus what installed plugins return from ``metacontrast_register_targets``. No config
key can add to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metacontrast.config import ConfigError

TARGET_KEY = "_target_"

# torch.nn building blocks a backbone may take as arguments (norm layers, activations)
_TORCH_NN = ("BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm", "InstanceNorm2d", "Identity",
             "ReLU", "GELU", "SiLU", "LeakyReLU", "Hardswish", "Tanh", "Sigmoid", "Dropout")


def _torchvision_builders() -> list[str]:
    """Every classification model builder of ``torchvision.models`` (resnet34, vit_b_16...)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [f"torchvision.models.{name}" for name in names]


def builtin_targets() -> frozenset[str]:
    return frozenset([*_torchvision_builders(), *(f"torch.nn.{n}" for n in _TORCH_NN)])


class UnsafeTargetError(ConfigError):
    """A ``_target_`` outside the allowlist; the message names the config key."""


def _walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """``(key path, _target_ value)`` for every ``_target_`` in ``node``, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == TARGET_KEY:
                yield where, value
            else:
                yield from _walk(value, where)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _plain(node: Any, source: str) -> Any:
    if isinstance(node, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{source}: cannot resolve the config: {str(err).splitlines()[0]}") from None
    return node


def check_targets(node: Any, allowed: Iterable[str], source: str = "config", prefix: str = "") -> None:
    """Raise ``UnsafeTargetError`` naming the key of the first ``_target_`` (anywhere in
    ``node``: a config, a dict, a list) that is not exactly one of ``allowed``.
    ``source`` says where the config came from (a file, a checkpoint)."""
    allowed = frozenset(allowed)
    for key, value in _walk(_plain(node, source), prefix):
        if not isinstance(value, str) or value not in allowed:
            raise UnsafeTargetError(f"{key}: _target_ {value!r} is not allowed (from {source}); "
                                    f"allowed targets are torchvision model builders, torch.nn "
                                    f"building blocks and those registered by installed plugins")


def instantiate_checked(node: Any, allowed: Iterable[str], key: str) -> Any:
    """hydra's ``instantiate`` of ``node`` after ``check_targets``; ``key`` is the config
    key of ``node``, named in errors."""
    from hydra.utils import instantiate

    check_targets(node, allowed, prefix=key)
    try:
        return instantiate(node)
    except Exception as err:
        raise ConfigError(f"{key}: could not instantiate {str(err).splitlines()[0]}") from None
