"""Value checks of the typed config sections, run when a config is composed or read back.

The schema (``metacontrast.config``) fixes each key's type; ``RULES`` fixes its values:
positive batch sizes and steps, finite non-negative learning rates, probabilities in
[0, 1], known precisions, policies and devices. ``check_values`` names the first key out
of range with the range allowed, as a ``ConfigError`` (exit status 2 from the command
line, no traceback), before any data is read or anything is built.

Keys with no rule are those whose every value of the right type is acceptable (booleans,
free names, paths) or that are checked against what is installed when the run is built
(``data.name``, ``trainer.compile_backend``, ``evaluation.periodic``): ``UNCHECKED``
lists them, and a test makes sure every key of the schema is in one of the two.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class Range:
    """A number between ``low`` and ``high`` (ends included unless ``*_open``), finite
    unless ``high`` is infinite; ``integer`` for whole numbers."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def allowed(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"

    def fits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
        if math.isinf(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


@dataclass(frozen=True)
class Choice:
    """One of ``options`` (compared as lower-case text)."""

    options: tuple[str, ...]

    def allowed(self) -> str:
        return f"one of {', '.join(self.options)}"

    def fits(self, value: Any) -> bool:
        return str(value).lower() in self.options


@dataclass(frozen=True)
class Pattern:
    """Text matching ``regex`` entirely; ``described`` says what that is."""

    regex: str
    described: str

    def allowed(self) -> str:
        return self.described

    def fits(self, value: Any) -> bool:
        return re.fullmatch(self.regex, str(value)) is not None


@dataclass(frozen=True)
class Each:
    """A list whose every element fits ``rule``, of length ``length`` when given."""

    rule: Range | Choice
    length: int | None = None

    def allowed(self) -> str:
        size = f"{self.length} " if self.length is not None else ""
        return f"a list of {size}values each {self.rule.allowed()}"

    def fits(self, value: Any) -> bool:
        if not isinstance(value, Sequence) or isinstance(value, str):
            return False
        if self.length is not None and len(value) != self.length:
            return False
        return all(self.rule.fits(v) for v in value)


Rule = Range | Choice | Pattern | Each

COUNT = Range(0)  # 0 = all / off / keep everything, as the schema says
POSITIVE = Range(1)
NON_NEGATIVE = Range(0.0)
PROBABILITY = Range(0.0, 1.0)
SEED = Range(0, 2**63 - 1)

RULES: dict[str, Rule] = {
    "data.image_size": COUNT,
    "data.train_subset": COUNT,
    "data.test_subset": COUNT,
    "data.seed": SEED,
    "data.mean": Each(PROBABILITY),
    "data.std": Each(Range(0.0, low_open=True)),
    "data.workers": Range(-1),
    "data.bad_files": Choice(("strict", "skip")),
    "data.decode": Choice(("workers", "device")),
    "data.max_bad_fraction": PROBABILITY,
    "data.table.test_fraction": Range(0.0, 1.0, low_open=True, high_open=True),
    "data.table.split_seed": SEED,
    "optim.name": Choice(("lars", "sgd", "adam", "adamw")),
    "optim.lr": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": Range(0.0, 1.0, high_open=True),
    "optim.betas": Each(Range(0.0, 1.0, high_open=True), length=2),
    "optim.eta": Range(0.0, low_open=True),
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.schedule": Choice(("cosine", "constant")),
    "optim.min_lr": NON_NEGATIVE,
    "trainer.epochs": POSITIVE,
    "trainer.max_steps": COUNT,
    "trainer.time_limit_s": NON_NEGATIVE,
    "trainer.batch_size": POSITIVE,
    "trainer.accumulate": POSITIVE,
    "trainer.precision": Choice(("auto", "bf16", "fp16", "fp32")),
    "trainer.compile": Choice(("off", "encoder", "step", "true", "false")),
    "trainer.cuda_graph_warmup": Range(2),  # the first makes the constants; the last is checked
    "trainer.device": Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"),
    "trainer.seed": SEED,
    "trainer.forward_chunks": POSITIVE,
    "trainer.log_every": POSITIVE,
    "trainer.checkpoint_every": COUNT,
    "trainer.keep_checkpoints": COUNT,
    "trainer.eval_every_epochs": COUNT,
    "trainer.threads": COUNT,
    "trainer.grad_clip_norm": NON_NEGATIVE,
    "trainer.grad_clip_value": NON_NEGATIVE,
    "trainer.nonfinite": Choice(("halt", "skip")),
    "trainer.max_consecutive_skips": COUNT,
    "evaluation.baselines": Each(Choice(("random_init", "raw_pixels"))),
    "evaluation.train_subset": COUNT,
    "evaluation.batch_size": POSITIVE,
    "evaluation.projection_points": COUNT,
    "evaluation.projection": Choice(("tsne", "pca")),
    "evaluation.target_value": Range(),
    "teacher.momentum": PROBABILITY,
    "teacher.final_momentum": PROBABILITY,
    "teacher.schedule": Choice(("cosine", "constant")),
}

# keys whose every value of the schema's type is accepted here (see the module docstring)
UNCHECKED = frozenset({
    "method_name", "data.name", "data.root", "data.download", "data.stream",
    "data.shards.train", "data.shards.test", "data.shards.image", "data.shards.label",
    "data.hf.train", "data.hf.test", "data.hf.image", "data.hf.label", "data.hf.cache_dir",
    "data.table.source", "data.table.label", "data.table.categorical", "data.table.numerical",
    "data.table.drop", "optim.scale_lr_by_batch", "optim.exclude_bias_and_norm",
    "trainer.channels_last", "trainer.compile_backend", "trainer.cuda_graphs",
    "trainer.sync_batchnorm", "trainer.run_dir", "trainer.resume", "trainer.progress",
    "trainer.tensorboard", "trainer.tune_host_malloc", "trainer.deterministic",
    "evaluation.periodic", "evaluation.sharded", "evaluation.target_metric",
    "evaluation.stop_at_target", "plugins.autoload", "plugins.block", "teacher.views",
    "teacher.shuffle_bn", "teacher.exclusive",
})


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else repr(x)


def _shown(value: Any) -> str:
    return repr(OmegaConf.to_container(value) if isinstance(value, DictConfig) else value)


def check_values(cfg: DictConfig, where: str = "") -> None:
    """Raise ``ConfigError`` for the first key of ``RULES`` whose value is out of range
    (keys absent from ``cfg``, or null, are skipped). ``where``: the file the config came
    from, named in the message."""
    from metacontrast.config import ConfigError

    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if not rule.fits(plain):
            source = f" (in {where})" if where else ""
            finite = "a finite number " if isinstance(plain, float) and not math.isfinite(plain) else ""
            raise ConfigError(f"{key}: must be {finite}{rule.allowed()}, got {_shown(value)}{source}")
    message = _together(cfg) or _not_finite(cfg)
    if message:
        raise ConfigError(message + (f" (in {where})" if where else ""))


def _leaves(node: Any, prefix: str = "") -> Any:
    """``(dotted key, value)`` of every leaf of a plain config (lists indexed)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, (dict, list)):
            yield from _leaves(v, key)
        else:
            yield key, v


def _not_finite(cfg: DictConfig) -> str | None:
    """A NaN anywhere (plugins' sections included: ``loss.nt_xent.weight=nan``), or an
    infinity where no rule of ``RULES`` allows one."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key, value in _leaves(plain):
        if isinstance(value, float) and not math.isfinite(value):
            if math.isinf(value) and key in RULES:
                continue  # its rule decided
            return f"{key}: must be a finite number, got {value}"
    return None


def _together(cfg: DictConfig) -> str | None:
    """The checks of values that only make sense together (no data or device needed)."""
    def get(key: str, default: Any = None) -> Any:
        return OmegaConf.select(cfg, key, default=default)

    if get("evaluation.stop_at_target", False) and not str(get("evaluation.target_metric", "") or ""):
        return ("evaluation.stop_at_target: needs evaluation.target_metric (e.g. knn_top1) and "
                "evaluation.target_value")
    if str(get("evaluation.target_metric", "") or "") and int(get("trainer.eval_every_epochs", 1)) <= 0:
        return (f"evaluation.target_metric: {get('evaluation.target_metric')} is watched in the periodic "
                f"evaluations; set trainer.eval_every_epochs > 0")
    if get("data.stream", False) and int(get("evaluation.train_subset", 1)) <= 0:
        return ("evaluation.train_subset: a streamed dataset (data.stream=true) needs a cap on the "
                "labelled train images held in memory for evaluation")
    return None

