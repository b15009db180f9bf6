"""The component kinds a plugin can register, and what the builder hands them.

Every component class has a unique ``NAME`` (how configs select it) and a ``Config``:
an attrs class of its parameters, with the paper's defaults. The builder validates the
config node against ``Config`` (unknown key or wrong type: an error with the key's full
path) and calls ``cls(config, context)``.
"""

from __future__ import annotations

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
}
"""Component kind -> the registration hook that returns classes of that kind."""
