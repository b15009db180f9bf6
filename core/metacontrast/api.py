"""The Python API, for notebooks and scripts::

    import metacontrast

    cfg = metacontrast.compose(["method=protonet", "trainer.max_steps=20"])
    cfg.trainer.batch_size = 64          # a composed config is an ordinary OmegaConf object
    run_dir = metacontrast.train(cfg)    # the run directory, with results.json
    path = metacontrast.export_encoder(run_dir, "torchvision", "encoder.pt")
    encoder = metacontrast.load_encoder(path)   # a torchvision ResNet, in eval mode

The same composition, checks and training as ``metacontrast config`` / ``train`` /
``export``; errors are raised as exceptions (``ConfigError``, ``DatasetError``, ...)
rather than printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``metacontrast train <overrides>`` would run, checked (group options,
    keys, types, values and each component's own settings)."""
    from metacontrast.cli import compose_with_plugins

    cfg, _ = compose_with_plugins(list(overrides))
    return cfg


def train(cfg: DictConfig | Sequence[str] = ()) -> Path:
    """Train (then evaluate) ``cfg`` — a composed config, or overrides to compose — and
    return its run directory (``results.json``, ``checkpoints/``, ``metrics.jsonl``). Like
    the command, an unfinished run of the same config is resumed."""
    from metacontrast.builder import check_component_configs
    from metacontrast.plugins import PluginManager
    from metacontrast.schema_checks import check_values
    from metacontrast.targets import check_targets
    from metacontrast.trainer import fit

    if not isinstance(cfg, DictConfig):
        cfg = compose(cfg)
    check_values(cfg)  # the config may have been changed since it was composed
    plugins = PluginManager(autoload=bool(cfg.plugins.autoload), block=list(cfg.plugins.block))
    check_targets(cfg, plugins.allowed_targets(), source="the config")
    check_component_configs(cfg, plugins)
    results = fit(cfg, plugins)
    return Path(results["run_dir"])


def export_encoder(run_dir_or_checkpoint: str | Path, fmt: str, out: str | Path,
                   overwrite: bool = False) -> Path:
    """Export the encoder of a checkpoint (or of a run directory's last checkpoint) as
    ``fmt`` (``torchvision``, ``timm``, ``state_dict``) to ``out``; returns ``out``. An
    existing ``out`` is refused unless ``overwrite``."""
    from metacontrast.export import write_export

    return write_export(Path(run_dir_or_checkpoint), fmt, Path(out), overwrite=overwrite).weights
