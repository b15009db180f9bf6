"""Typed config schema and composition of the hydra ``configs/`` groups.

The fixed sections (``data``, ``optim``, ``trainer``, ``evaluation``, ``plugins``) are
typed dataclasses, so a misspelt key or a wrong type fails at composition, and their
values are checked there too (``metacontrast.schema_checks``). Component
sections (``views``, ``episode``, ``encoder``, ``head``, ``solver``, ``memory``, and the
name-keyed ``loss`` and ``eval`` maps) are checked against the chosen component's own
``Config`` when it is built (``metacontrast.builder``), again naming the full key.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from metacontrast.schema_checks import check_values

CONFIG_DIR_ENV = "METACONTRAST_CONFIG_DIR"


class ConfigError(ValueError):
    """The composed config is invalid; the message names the key at fault."""


@dataclass
class TableConfig:
    """A table (``data.name=tabular``, see ``metacontrast.data.tables``).

    ``source``: ``sklearn:<name>`` (breast_cancer | wine | iris | digits: bundled, no
    network), ``csv`` or ``parquet`` (the file ``data.root``), ``openml:<id>`` (fetched
    into ``data.root`` when online; read from there offline). ``label``: the label
    column (empty: ``target`` for the bundled tables; required otherwise).
    ``categorical``/``numerical``: force a column's type (text, boolean and category
    columns are categorical, numbers numerical otherwise); ``drop``: columns left out.
    ``test_fraction``: rows of each class held out as the test split, drawn with
    ``split_seed``; category codes and numerical statistics come from the train split
    alone."""

    source: str = "sklearn:breast_cancer"
    label: str = ""
    categorical: list[str] = field(default_factory=list)
    numerical: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    test_fraction: float = 0.3
    split_seed: int = 0


@dataclass
class ShardsConfig:
    """Tar shards in the webdataset layout (``data.name=webdataset``, see
    ``metacontrast.data.shards``). ``train``/``test``: shard paths or brace patterns
    (``train-{000000..000099}.tar``; several joined by ``;``), relative to ``data.root``
    unless absolute. ``image``: the image extensions, in order of preference
    (``jpg;jpeg;png;webp``); ``label``: the extension of the integer label (``cls``)."""

    train: str = "train-{000000..000000}.tar"
    test: str = "test-{000000..000000}.tar"
    image: str = "jpg;jpeg;png;webp"
    label: str = "cls"


@dataclass
class HFConfig:
    """A Hugging Face dataset (``data.name=hf``, see ``metacontrast.data.hf``): the
    ``train``/``test`` split names, the ``image``/``label`` columns, and the hub cache
    directory to read a named dataset from (empty: the default cache)."""

    train: str = "train"
    test: str = "test"
    image: str = "image"
    label: str = "label"
    cache_dir: str = ""


@dataclass
class DataConfig:
    """Which images to train and evaluate on.

    ``name``: digits | cifar10 | cifar100 | stl10 | mnist | fashionmnist | imagefolder |
    webdataset (tar shards, ``shards``) | hf (a Hugging Face dataset, ``hf``) | npz |
    tabular (rows of a table, described by ``table``). ``root``: directory (or
    ``.npz`` file) to read. ``download``: let torchvision
    fetch missing files (never needed offline). ``image_size``: resize to this side
    (0 = keep). ``train_subset``/``test_subset``: cap the number of images (0 = all).
    ``mean``/``std``: per-channel statistics in [0, 1] (empty = measured on the data).
    ``workers``: loader processes that decode image files (imagefolder, webdataset, hf;
    -1 = one per CPU core this process may use). ``stream``:
    decode training batches while training instead of holding the train set in memory
    (imagefolder, webdataset, hf; needs ``evaluation.train_subset`` > 0). ``bad_files``: strict | skip,
    what an unreadable image does (skip: warned once, left out or replaced within its
    batch, counted); ``max_bad_fraction``: fail when more than this fraction is bad.
    ``decode``: where streamed training batches are decoded: ``workers`` (PIL, in the
    loader processes) or ``device`` (the workers read the bytes; TorchCodec decodes on
    the training device: nvJPEG on a GPU).
    """

    name: str = "digits"
    root: Optional[str] = None  # noqa: UP045 (OmegaConf needs typing.Optional)
    download: bool = False
    image_size: int = 0
    train_subset: int = 0
    test_subset: int = 0
    seed: int = 0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    workers: int = 0
    stream: bool = False
    bad_files: str = "strict"
    max_bad_fraction: float = 0.01
    decode: str = "workers"
    table: TableConfig = field(default_factory=TableConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    hf: HFConfig = field(default_factory=HFConfig)


@dataclass
class OptimConfig:
    """``name``: lars | sgd | adam | adamw. ``lr``: learning rate, multiplied by
    ``global_batch / 256`` when ``scale_lr_by_batch``. ``eta``: LARS trust coefficient.
    ``exclude_bias_and_norm``: no weight decay (and no LARS adaptation) for biases and
    normalisation parameters. ``warmup_epochs``: linear warm-up, then ``schedule``
    (cosine | constant) down to ``min_lr``."""

    name: str = "lars"
    lr: float = 0.3
    scale_lr_by_batch: bool = True
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eta: float = 0.001
    exclude_bias_and_norm: bool = True
    warmup_epochs: float = 10.0
    schedule: str = "cosine"
    min_lr: float = 0.0


@dataclass
class TrainerConfig:
    """How to train. ``batch_size`` is per process; ``accumulate`` micro-batches per
    optimizer step. ``precision``: auto | bf16 | fp16 | fp32 (auto: bf16 where the device
    supports it). ``device``: auto | cpu | cuda. ``max_steps`` > 0 stops early.
    ``checkpoint_every``: steps between checkpoints (0 = at each epoch end).
    ``resume``: auto (newest checkpoint in ``run_dir``) | never | a checkpoint path.
    ``tune_host_malloc``: keep freed host memory for reuse (glibc), see ``metacontrast.host``.
    ``grad_clip_norm``/``grad_clip_value``: clip gradients to this global L2 norm / each
    element to this magnitude (0 = off). ``nonfinite``: halt | skip, what to do when a
    loss term or gradient is NaN or infinite (skip: no update on any rank, counted; halt
    after ``max_consecutive_skips`` skips in a row). ``deterministic``: only deterministic
    kernels (an error names an operation that has none), no cuDNN autotuning.
    ``time_limit_s``: end the training loop at the first step boundary after this many
    seconds of it (added up over resumes; 0 = no limit), then evaluate and write
    ``results.json`` as usual, which states that the schedule did not complete.
    ``compile``: off | encoder | step, what ``torch.compile`` compiles (see
    ``metacontrast.compiling``), with ``compile_backend``. ``cuda_graphs``: capture the
    whole step as CUDA graphs after ``cuda_graph_warmup`` eager steps (see
    ``metacontrast.graphs``)."""

    epochs: int = 100
    max_steps: int = 0
    time_limit_s: float = 0.0
    batch_size: int = 256
    accumulate: int = 1
    precision: str = "auto"
    channels_last: bool = True
    compile: str = "off"
    compile_backend: str = "inductor"
    cuda_graphs: bool = False
    cuda_graph_warmup: int = 3
    device: str = "auto"
    seed: int = 0
    sync_batchnorm: bool = True
    forward_chunks: int = 1
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    eval_every_epochs: int = 0
    run_dir: Optional[str] = None  # noqa: UP045
    resume: str = "auto"
    progress: bool = True
    tensorboard: Optional[bool] = None  # noqa: UP045  (deprecated: logger=[...] chooses; see DEPRECATED_KEYS)
    threads: int = 0  # 0: the cores the process can use (metacontrast.threads)
    tune_host_malloc: bool = True
    grad_clip_norm: float = 0.0
    grad_clip_value: float = 0.0
    nonfinite: str = "halt"
    max_consecutive_skips: int = 10
    deterministic: bool = False


@dataclass
class EvaluationConfig:
    """``baselines``: also evaluate ``random_init`` (the same encoder before training)
    and ``raw_pixels``. ``train_subset``: cap the labelled train images used as kNN bank
    and probe training set (0 = all). ``batch_size``: feature extraction batch.
    ``periodic``: the evaluators run every ``trainer.eval_every_epochs`` during
    pre-training (null: the cheap ones, kNN, linear probe on cached features, few-shot);
    their best value and its epoch are reported next to the last. ``projection_points``:
    test rows in the 2-D projection saved for ``metacontrast report`` (0: none), made by
    ``projection``: ``tsne`` (neighbourhoods kept, scikit-learn's t-SNE) or ``pca``.
    ``sharded``: under DDP, every rank extracts its share of the periodic evaluation's
    frozen features (rank 0 alone otherwise); the evaluators run on rank 0.
    ``target_metric``/``target_value``: a periodic metric and the value whose first
    reaching (epoch, step, wall-clock of the training loop) ``results.json`` records as
    ``time_to_target``; ``stop_at_target``: end pre-training there."""

    baselines: list[str] = field(default_factory=lambda: ["random_init", "raw_pixels"])
    train_subset: int = 0
    batch_size: int = 512
    periodic: Optional[list[str]] = None  # noqa: UP045
    projection_points: int = 2000
    projection: str = "tsne"
    sharded: bool = True
    target_metric: str = ""
    target_value: float = 0.0
    stop_at_target: bool = False


@dataclass
class PluginsConfig:
    """``autoload``: load the ``metacontrast`` entry points. ``block``: plugin entry-point
    or distribution names never loaded."""

    autoload: bool = True
    block: list[str] = field(default_factory=list)


@dataclass
class TeacherConfig:
    """An EMA copy of encoder and head (BYOL's target network, MoCo's key encoder), updated
    after every optimizer step: ``teacher = m * teacher + (1 - m) * online``. ``momentum``:
    m at the first step; ``schedule``: cosine (m rises to ``final_momentum`` along a half
    cosine over training, as in BYOL) | constant. ``views``: the views the teacher embeds
    (null: all). ``shuffle_bn``: MoCo's shuffling BN under DDP (see
    ``metacontrast.distributed.shuffled_forward``). ``exclusive``: the online network
    skips the teacher's views (MoCo's key view); every loss must then read single views."""

    momentum: float = 0.996
    final_momentum: float = 1.0
    schedule: str = "cosine"
    views: Optional[list[int]] = None  # noqa: UP045
    shuffle_bn: bool = False
    exclusive: bool = False


@dataclass
class Config:
    """The whole composed config (see ``configs/config.yaml``)."""

    method_name: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    views: Any = field(default_factory=dict)
    episode: Any = field(default_factory=dict)
    encoder: Any = field(default_factory=dict)
    head: Any = field(default_factory=dict)
    solver: Any = None
    view_transforms: Any = None
    teacher: Optional[TeacherConfig] = None  # noqa: UP045
    loss: Any = field(default_factory=dict)
    memory: Any = None
    eval: Any = field(default_factory=dict)
    logger: Any = field(default_factory=dict)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)


def _register_schema() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


def config_dir() -> Path:
    """The ``configs/`` directory: ``$METACONTRAST_CONFIG_DIR``, else the one shipped in
    the package, else the source checkout's."""
    env = os.environ.get(CONFIG_DIR_ENV)
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here / "configs", here.parent.parent / "configs"]
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c
    raise ConfigError(f"no configs/config.yaml found (looked in {', '.join(map(str, candidates))}); "
                      f"set {CONFIG_DIR_ENV}")


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config",
                   searchpath: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with command-line style ``overrides``;
    ``searchpath``: extra config directories (``pkg://`` or ``file://``) from plugins.

    Errors (unknown group option, misspelt key, wrong type) become one-line
    ``ConfigError``s naming the key."""
    from metacontrast.config_options import (
        refused_hydra_override,
        unknown_option_message,
        unreadable_override,
    )

    _register_schema()
    overrides = list(overrides)
    for override in overrides:
        refusal = refused_hydra_override(override) or unreadable_override(override)
        if refusal:
            raise ConfigError(refusal)
    if searchpath:
        given = [o for o in overrides if o.startswith("hydra.searchpath=")]
        extra = [o.split("=", 1)[1].strip("[]") for o in given]
        overrides = [o for o in overrides if o not in given]
        entries = [*searchpath, *(e for x in extra for e in x.split(",") if e)]
        overrides.append(f"hydra.searchpath=[{','.join(entries)}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    except Exception as err:  # hydra raises several types; all are config errors here
        message = _one_line(err)
        raise ConfigError(unknown_option_message(message, searchpath) or message) from None
    finally:
        GlobalHydra.instance().clear()
    _select_listed(cfg, overrides, "eval", searchpath)
    _select_listed(cfg, overrides, "logger", searchpath)
    apply_deprecated_keys(cfg)
    check_values(cfg)
    return cfg


def apply_deprecated_keys(cfg: DictConfig) -> None:
    """Keys that still work for one release, with a message naming what replaces them:
    ``trainer.tensorboard=true|false`` adds or removes the ``tensorboard`` logger."""
    old = OmegaConf.select(cfg, "trainer.tensorboard")
    if old is None:
        return
    loggers = [str(k) for k in (OmegaConf.select(cfg, "logger") or {})]
    chosen = [n for n in loggers if n != "tensorboard"] + (["tensorboard"] if old else [])
    print(f"trainer.tensorboard is deprecated and goes in the next release: loggers are chosen with "
          f"logger=[{','.join(chosen)}] (applied for now)", file=sys.stderr)
    with open_dict(cfg):
        if old and "tensorboard" not in loggers:
            cfg.logger.tensorboard = {}
        elif not old and "tensorboard" in loggers:
            del cfg.logger["tensorboard"]
        cfg.trainer.tensorboard = None


def _option_keys(group: str, option: str, searchpath: list[str] | tuple[str, ...]) -> set[str]:
    """The entries option ``option`` of list group ``group`` defines (``eval=[knn_small]``
    defines ``knn``), or the option's own name where its file cannot be read."""
    from metacontrast.config_options import config_directories

    for directory in config_directories(searchpath):
        path = directory / group / f"{option}.yaml"
        if path.is_file():
            try:
                node = OmegaConf.load(path)
            except Exception:
                break
            keys = {str(k) for k in node if k != "defaults"} if isinstance(node, DictConfig) else set()
            return keys or {option}
    return {option}


def _select_listed(cfg: DictConfig, overrides: list[str], group: str,
                   searchpath: list[str] | tuple[str, ...] = ()) -> None:
    """``group=[a,b]`` on the command line selects exactly what options ``a`` and ``b``
    define: entries an experiment or method set (``eval.knn.k: 20``) for an evaluator that
    was not selected are dropped, unless the command line itself sets them
    (``eval.<name>.<key>=...``)."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == group and "=" in o]
    if not chosen or OmegaConf.select(cfg, group) is None:
        return
    selected = {key for name in chosen[-1].strip("[]").split(",") if name.strip()
                for key in _option_keys(group, name.strip(), searchpath)}
    named = {o.lstrip("+~").split("=", 1)[0].split(".")[1] for o in overrides
             if o.lstrip("+~").startswith(f"{group}.") and "." in o.split("=", 1)[0]}
    node = cfg[group]
    with open_dict(cfg):
        for key in [k for k in node if k not in selected and k not in named]:
            del node[key]


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text = f"{text}: {str(cause).strip()}"
    noise = ("reference_type", "object_type", "Config search path", "provider=")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(noise)]
    lines = [ln.split(": ", 1)[1] if ln.startswith("To append to your config") else ln for ln in lines]
    return " | ".join(lines) if lines else type(err).__name__


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml(text: str) -> DictConfig:
    """A config stored as YAML (in a run directory or checkpoint), re-typed by the
    schema so that it is checked exactly like a freshly composed one."""
    _register_schema()
    loaded = OmegaConf.create(text)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), loaded)
    except Exception as err:
        raise ConfigError(f"stored config: {_one_line(err)}") from None
    check_values(cfg, where="the stored config")
    return cfg
