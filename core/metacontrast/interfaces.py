"""The component kinds a plugin can register, and what the builder hands them.

Every component class has a unique ``NAME`` (how configs select it) and a ``Config``:
an attrs class of its parameters, with the paper's defaults. The builder validates the
config node against ``Config`` (unknown key or wrong type: an error with the key's full
path) and calls ``cls(config, context)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs
import torch
from torch import Tensor, nn

from metacontrast.records import (
    Batch,
    Embeddings,
    Episode,
    EvalInputs,
    Features,
    Logits,
    LossInputs,
    LossTerms,
    StepInputs,
    Views,
)


@attrs.define
class NoConfig:
    """Config of a component without parameters."""


@attrs.frozen
class BuildContext:
    """Facts a component may need at construction.

    ``in_channels``/``image_size``: the stored images' C and H (= W). ``num_train``: the
    number of training images (sizes a memory bank indexed by sample). ``mean``/``std``:
    per-channel statistics in [0, 1] units. ``encoder_dim``/``head_dim``: D of ``h`` and
    ``z`` once those are built. ``rank``/``world_size``: the process group position.
    ``allowed_targets``: the ``_target_`` allowlist, for components that instantiate a
    config node (through ``metacontrast.targets.instantiate_checked``). ``encoder_parts``/
    ``head_parts``: into how many equal-width parts ``h``/``z`` fall, one per channel view
    (an encoder or head with a ``parts`` attribute sets it; 1 otherwise). ``plugins``: the
    registry, for components that build registered components themselves
    (``metacontrast.builder.build_one``). ``modality``: what the samples are, ``image``
    or ``table``; ``table``: the ``TableSchema`` of a table's rows (None for images).
    """

    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    num_classes: int = 0
    num_train: int = 0
    encoder_dim: int = 0
    head_dim: int = 0
    rank: int = 0
    world_size: int = 1
    allowed_targets: frozenset[str] = frozenset()
    encoder_parts: int = 1
    head_parts: int = 1
    plugins: Any = attrs.field(default=None, repr=False)
    modality: str = "image"
    table: Any = None

    def evolve(self, **changes: Any) -> BuildContext:
        return attrs.evolve(self, **changes)


class ViewGenerator(nn.Module):
    """Batch (uint8 ``(B, C, H, W)``) -> Views (V float tensors ``(B, C, H', W')``).

    Subclasses implement ``forward(batch, generator)``; all randomness comes from
    ``generator`` (a ``torch.Generator`` on the batch's device).
    """

    NAME: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    MODALITIES: ClassVar[tuple[str, ...]] = ("image",)

    def forward(self, batch: Batch, generator: torch.Generator) -> Views:  # pragma: no cover
        raise NotImplementedError


@attrs.frozen
class ExportSpec:
    """How an encoder's weights load into another library's own model
    (``metacontrast export``, ``metacontrast.load_encoder``).

    ``library``: ``torchvision`` (``torchvision.models.<builder>(weights=None, **kwargs)``)
    or ``timm`` (``timm.create_model(<builder>, pretrained=False, num_classes=0,
    **kwargs)``). ``module``: the part of the encoder whose ``state_dict`` loads into that
    model with ``strict=True`` once the ``replace``ments are made: module path ->
    ``{"type": "Identity"}`` or ``{"type": "Conv2d", "args": [...], "kwargs": {...}}``
    (a CIFAR stem, a dropped classifier). ``kwargs`` must be JSON values. The encoder's
    ``forward`` must equal the library model's after a channel repeat of grey images at
    most (``repeat_grey``); the export checks it on random images."""

    library: str
    builder: str
    module: nn.Module
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    replace: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    repeat_grey: bool = False


class Encoder(nn.Module):
    """Float images ``(N, C, H, W)`` -> representations ``h (N, out_dim)``.

    ``MODALITIES``: the sample kinds it reads (``image``, ``table``; the builder refuses
    a component whose kinds miss the data's, naming the key). ``MIXES_EMBEDDINGS``: its
    ``forward(x, mix=(weight (N,), partner (N,)))`` mixes input embeddings (see ``Views``).
    ``export_spec(library)``: how its weights load into ``library``'s own model, or None
    when that library has no counterpart (``metacontrast export format=<library>``)."""

    NAME: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    MODALITIES: ClassVar[tuple[str, ...]] = ("image",)
    MIXES_EMBEDDINGS: ClassVar[bool] = False
    out_dim: int

    def export_spec(self, library: str) -> ExportSpec | None:
        return None


class Head(nn.Module):
    """Representations ``h (N, D_in)`` -> projections ``z (N, out_dim)``."""

    NAME: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    out_dim: int


class ViewTransform(ViewGenerator):
    """Views -> Views, applied after the view generator (task augmentation, mixing,
    auxiliary copies). Registered like view generators; configured in the name-keyed
    ``view_transforms`` map and applied in increasing ``ORDER``. All randomness comes from
    ``generator``. ``MIXES``: it mixes images (soft targets in ``Episode.mix_weight``), so
    a loss must read ``mixed`` (see ``Loss.READS``)."""

    ORDER: ClassVar[int] = 50
    MIXES: ClassVar[bool] = False

    def forward(self, views: Views, generator: torch.Generator) -> Views:  # type: ignore[override]
        raise NotImplementedError  # pragma: no cover


class EpisodeBuilder:
    """Views -> Episode (labels ``(V*B,)``, support ``(S,)``, query ``(Q,)``)."""

    NAME: ClassVar[str]
    Config: ClassVar[type] = NoConfig

    def __init__(self, config: Any, context: BuildContext) -> None:
        self.config = config

    def __call__(self, views: Views) -> Episode:  # pragma: no cover
        raise NotImplementedError


class Solver(nn.Module):
    """(Embeddings, Episode) -> Logits ``(Q, N)``: an inner loop fitted on the support."""

    NAME: ClassVar[str]
    Config: ClassVar[type] = NoConfig

    def forward(self, embeddings: Embeddings, episode: Episode) -> Logits:  # pragma: no cover
        raise NotImplementedError


class Loss(nn.Module):
    """LossInputs -> 0-dim loss. The configured ``weight`` is applied by the step.

    ``READS_ALL_VIEWS``: the loss reads ``Embeddings.h``/``z`` as every view's rows; a
    loss that only asks for single views (``Embeddings.view``) sets it ``False`` and may
    then run with ``teacher.exclusive`` (the online network skipping the key views).
    ``differentiates_twice``: its step takes a gradient of a gradient through the model
    (a second-order meta-update); ``trainer.compile=step`` then leaves the model eager,
    which ``torch.compile``'s autograd cannot differentiate twice.

    ``READS``: which of the optional inputs the loss may read (``"logits"`` from a solver,
    ``"memory"``, the ``"teacher"``'s projections, ``"mixed"`` views' soft targets);
    ``NEEDS``: those it cannot run without. With every selected loss declaring ``READS``,
    a solver, memory, teacher or mixing transform that no loss reads is refused when the
    config is checked, and so is a loss whose ``NEEDS`` are not selected. ``None``
    (undeclared, the default for outside plugins) reads anything and is never refused."""

    NAME: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    READS_ALL_VIEWS: ClassVar[bool] = True
    READS: ClassVar[frozenset[str] | None] = None
    NEEDS: ClassVar[frozenset[str]] = frozenset()
    differentiates_twice: bool = False

    def forward(self, inputs: LossInputs) -> Tensor:  # pragma: no cover
        raise NotImplementedError


MEMORY_SOURCES = ("teacher_z", "z", "h")


@attrs.define
class MemoryConfig:
    """What a memory is written with after each optimizer step: the rows of ``source``
    (``teacher_z``: the EMA teacher's projections, MoCo's keys; ``z``: the online
    projections; ``h``: representations) for the view indices ``views``, L2-normalised
    when ``normalize``. Memory configs extend this class."""

    source: str = "teacher_z"
    views: list[int] = attrs.field(factory=lambda: [1])
    normalize: bool = True

    def __attrs_post_init__(self) -> None:
        if self.source not in MEMORY_SOURCES:
            raise ValueError(f"source: unknown source {self.source!r}; available: "
                             f"{', '.join(MEMORY_SOURCES)}")
        if not self.views or min(self.views) < 0:
            raise ValueError(f"views: must list view indices >= 0, got {self.views}")

    def dim(self, context: BuildContext) -> int:
        """D of the keys: the head's output for projections, the encoder's for ``h``."""
        return context.encoder_dim if self.source == "h" else context.head_dim


class Memory(nn.Module):
    """Keys ``(M, D)`` held in buffers (part of every checkpoint).

    ``read() -> (M, D)``: what the losses see this step (``LossInputs.memory``).
    ``keys_of(embeddings, views) -> (keys (n, D), ids (n,))``: what this rank writes after
    the optimizer step (detached). ``update(keys, ids)``: the write itself, given the keys
    of all ranks in rank order (the step gathers them first, without gradient).
    """

    NAME: ClassVar[str]
    Config: ClassVar[type] = MemoryConfig

    def read(self) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    @property
    def normalized(self) -> bool:
        """Whether every row ``read()`` returns is a unit vector (started so and written
        with ``config.normalize``); losses then skip normalising the memory."""
        return isinstance(getattr(self, "config", None), MemoryConfig) and bool(self.config.normalize)

    def update(self, keys: Tensor, ids: Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def keys_of(self, embeddings: Embeddings, views: Views) -> tuple[Tensor, Tensor]:
        """Rows ``config.source`` of ``config.views`` -> ``(keys (len(views) * B, D), ids)``,
        ids being the dataset indices of the source images (repeated per view)."""
        config = self.config
        if not isinstance(config, MemoryConfig):
            raise TypeError(f"memory {self.NAME!r}: keys_of needs a MemoryConfig; override keys_of")
        n_views = views.n_views
        if max(config.views) >= n_views:
            raise ValueError(f"memory.views: {config.views} names a view the view generator does not "
                             f"make ({n_views} views)")
        parts = []
        for v in config.views:
            if config.source == "teacher_z":
                parts.append(embeddings.teacher_view(v))
            elif config.source == "z":
                parts.append(embeddings.view(v))
            else:
                parts.append(embeddings.h_view(v))
        keys = torch.cat(parts).detach().float()
        if config.normalize:
            keys = torch.nn.functional.normalize(keys, dim=1)
        return keys, views.index.repeat(len(config.views))


class Evaluator:
    """Labelled data -> named metrics (floats; accuracies in [0, 1], higher is better).

    A frozen-feature protocol (kNN, linear probe, few-shot) implements ``evaluate`` on the
    shared train/test ``Features``. A protocol that needs the encoder or the images
    themselves (fine-tuning, a probe on augmented images, transfer to another dataset)
    overrides ``run`` and sets ``NEEDS_ENCODER`` (it is then left out of the raw-pixel
    baseline). ``PERIODIC``: cheap enough to run every ``trainer.eval_every_epochs``
    during pre-training unless ``evaluation.periodic`` names the evaluators itself."""

    NAME: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    MODALITIES: ClassVar[tuple[str, ...]] = ("image", "table")
    NEEDS_ENCODER: ClassVar[bool] = False
    PERIODIC: ClassVar[bool] = True

    def __init__(self, config: Any, context: BuildContext | None) -> None:
        self.config = config
        # the config key it was built under (eval.<key>); names metrics where a protocol
        # can be configured twice (a second linear probe with another solver)
        self.key = self.NAME

    def evaluate(self, train: Features, test: Features) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def bank_problem(self, bank_size: int) -> str | None:
        """What in the settings cannot work with a labelled train set (the kNN bank, the
        probe's training set) of ``bank_size`` images, as ``"<setting>: why"``; checked when
        the run is set up, before any training. ``None``: nothing."""
        return None

    def run(self, inputs: EvalInputs) -> dict[str, float]:
        """Metrics of the encoder in ``inputs``; the default evaluates frozen features."""
        train, test = inputs.frozen()
        return self.evaluate(train, test)


@attrs.frozen
class RunStart:
    """What a logger is told once, before the first row.

    ``run_dir``: the run directory (a logger keeps its own files and ids there).
    ``config``: the composed config as plain Python (resolved). ``step``: the optimizer
    step training starts from (0 for a new run). ``resumed``: the run continues from a
    checkpoint; rows after ``step`` that an earlier process logged are to be forgotten
    where the store allows (they are logged again). ``total_steps``: where training ends.
    ``method``/``dataset``: for a run's name."""

    run_dir: Path
    config: dict[str, Any]
    step: int
    total_steps: int
    resumed: bool
    method: str = ""
    dataset: str = ""


class Logger:
    """Where a run's results go: built on rank 0 only, from the name-keyed ``logger`` config
    map (``logger=[jsonl, tensorboard]``), all of them receiving the same calls in this
    order: ``start`` once; ``log_metrics`` for each logging step's row and
    ``log_evaluation`` for each periodic evaluation's (both in step order, each step once);
    after training ``log_figures`` (only when ``WANTS_FIGURES``) and ``log_summary``; last
    ``close``, also after a failure.

    A row is a dict with ``step`` (int), ``epoch``, ``wall_clock_s`` and float metrics
    (``loss``, ``loss/<term>``, ``lr``, ``images_per_s``; evaluation rows ``eval/<metric>``).

    ``LIVE``: rows arrive as they are logged. A store that cannot forget rows (a tracking
    server) sets it ``False`` (or takes it from its config), and then receives a row only
    once a checkpoint holds its step, so that a process killed between checkpoints never
    leaves a step that the resumed run logs again: each step is logged exactly once.
    ``unavailable()``: what is missing to run it (a package), checked on every rank before
    any data is read."""

    NAME: ClassVar[str]
    Config: ClassVar[type] = NoConfig
    LIVE: ClassVar[bool] = True
    WANTS_FIGURES: ClassVar[bool] = False

    def __init__(self, config: Any, context: BuildContext | None) -> None:
        self.config = config
        self.key = self.NAME
        self.live = self.LIVE

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this logger cannot run here (``"pip install X"``), or ``None``."""
        return None

    def recorded_steps(self) -> set[int] | None:
        """For a logger that is not live, called after ``start`` when the run resumes: the
        steps whose rows its store already holds (``None``: it cannot tell). The rows up to
        the resumed step that it lacks (a killed process never handed them over, or the
        store lost them) are handed over again, in order, before training goes on."""
        return None

    @staticmethod
    def recall(run_dir: Path, name: str) -> dict[str, Any] | None:
        """What ``remember`` kept in ``<run_dir>/<name>`` (a tracking run's id), or ``None``."""
        import json

        path = Path(run_dir) / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    @staticmethod
    def remember(run_dir: Path, name: str, data: dict[str, Any]) -> None:
        """Keep ``data`` (JSON) in ``<run_dir>/<name>``, written whole or not at all, for every
        later process of the run (a resume continues the same tracking run)."""
        import json

        from metacontrast.run_dirs import write_text_atomic

        write_text_atomic(Path(run_dir) / name, json.dumps(data, indent=2) + "\n")

    def start(self, start: RunStart) -> None:
        """Called once, before any row."""

    def log_metrics(self, row: dict[str, Any]) -> None:
        """One logging step's row."""

    def log_evaluation(self, row: dict[str, Any], protocols: dict[str, dict[str, Any]]) -> None:
        """One periodic evaluation's row; ``protocols``: each evaluator's settings by name."""

    def log_figures(self, figures: dict[str, Path]) -> None:
        """The report's figures (PNG files under ``<run_dir>/report``), by name."""

    def log_summary(self, results: dict[str, Any]) -> None:
        """The content of ``results.json`` (final metrics, protocols, timing)."""

    def close(self, status: str) -> None:
        """The last call: ``status`` is ``finished``, ``stopped`` (a signal: the run resumes
        later) or ``failed``."""


class TrainStep(Protocol):
    """A method's step: ``step(batch, ctx) -> LossTerms`` (forward only; the trainer runs
    backward and the optimizer), and ``after_optimizer_step(step, total_steps)``, the one
    owner of what follows the optimizer (the EMA teacher, then the memory write)."""

    def __call__(self, batch: Batch, ctx: StepInputs) -> LossTerms: ...

    def after_optimizer_step(self, step: int, total_steps: int) -> None: ...


COMPONENT_KINDS: dict[str, type] = {  # kind -> base class
    "view_generator": ViewGenerator,
    "encoder": Encoder,
    "head": Head,
    "episode_builder": EpisodeBuilder,
    "solver": Solver,
    "loss": Loss,
    "memory": Memory,
    "evaluator": Evaluator,
    "logger": Logger,
}
"""Component kind -> base class."""

REGISTER_HOOKS: dict[str, str] = {
    "view_generator": "metacontrast_register_view_generators",
    "encoder": "metacontrast_register_encoders",
    "head": "metacontrast_register_heads",
    "episode_builder": "metacontrast_register_episode_builders",
    "solver": "metacontrast_register_solvers",
    "loss": "metacontrast_register_losses",
    "memory": "metacontrast_register_memories",
    "evaluator": "metacontrast_register_evaluators",
    "logger": "metacontrast_register_loggers",
}
"""Component kind -> the registration hook that returns classes of that kind."""
