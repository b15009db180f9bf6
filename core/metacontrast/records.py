"""Frozen records for the data walking through one training step.

No bare dicts or tuples cross a stage boundary: each stage takes and returns one of
these. Validation checks shapes only (never values), so it costs no device sync.
Records are frozen dataclasses: ``torch.compile`` traces their construction inside a
compiled step (``trainer.compile=step``), which it cannot do for attrs' frozen classes.

Shape letters: B batch, V views, N way, S support, Q query, D dim, C channels, H, W.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from metacontrast import distributed
from metacontrast.layout import PairLayout, episode_indices, gather_rows, pair_layout


class ShapeError(ValueError):
    """A record was built from tensors of inconsistent shapes."""




def _check(condition: bool, record: str, message: str) -> None:
    if not condition:
        raise ShapeError(f"{record}: {message}")


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """A batch of samples as stored: uint8 ``images (B, C, H, W)``, or the float32 rows
    ``(B, F)`` of a table (``metacontrast.data.tables``; same field, so the step and the
    trainer have one path), dataset ``index (B,)`` and optional ``labels (B,)`` (never
    used for pre-training)."""

    images: Tensor
    index: Tensor
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        image = self.images.dim() == 4 and self.images.dtype == torch.uint8
        rows = self.images.dim() == 2 and self.images.dtype == torch.float32
        _check(image or rows, "Batch", f"images must be uint8 (B, C, H, W) or float32 table rows (B, F), "
                                      f"got {self.images.dtype} {tuple(self.images.shape)}")
        _check(self.index.shape == (self.images.shape[0],), "Batch",
               f"index must be (B,)=({self.images.shape[0]},), got {tuple(self.index.shape)}")
        if self.labels is not None:
            _check(self.labels.shape == self.index.shape, "Batch",
                   f"labels must be (B,), got {tuple(self.labels.shape)}")

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Mixing:
    """How view-samples were mixed: ``weight (V, B)``, the share of the sample itself (1:
    unmixed), and ``partner (V, B)``, the local index (within the same view) of the
    sample mixed in."""

    weight: Tensor
    partner: Tensor


@dataclasses.dataclass(frozen=True, eq=False)
class Views:
    """V augmented views of the same B images.

    ``images``: tuple of V float tensors ``(B, C, H_v, W_v)`` (sizes may differ per view,
    as in multi-crop), or ``(B, F)`` rows of a table. ``params``: the random parameters
    that made them, each tensor with leading dims ``(V, B)``. ``index``: dataset index
    ``(B,)`` of the source images.
    ``extra``: named auxiliary image batches ``(M, C, H, W)`` encoded alongside the views
    but not part of the episode (e.g. the rotated copies of a rotation-prediction loss);
    their embeddings appear in ``Embeddings.extras`` under the same name.

    ``mix``: images mixed with other images of the batch (Un-Mix, mixup, CutMix): the
    episode turns it into soft class targets (``Episode.mix_weight``/``mix_partner``).
    ``embedding_mix``: mixup in the encoder's input-embedding space (SAINT's tabular
    views): view-sample ``(v, b)`` is encoded from ``w * e(x_vb) + (1 - w) * e(x_vp)``;
    the class stays the sample's own, and the encoder must set ``MIXES_EMBEDDINGS``.
    """

    images: tuple[Tensor, ...]
    index: Tensor
    params: Mapping[str, Tensor] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, Tensor] = dataclasses.field(default_factory=dict)
    mix: Mixing | None = None
    embedding_mix: Mixing | None = None

    def __post_init__(self) -> None:
        _check(len(self.images) >= 1, "Views", "needs at least one view")
        b = self.index.shape[0]
        dims = self.images[0].dim()
        for v, img in enumerate(self.images):
            _check(img.dim() == dims and dims in (2, 4) and img.shape[0] == b, "Views",
                   f"view {v} must be (B={b}, C, H, W) images or (B={b}, F) rows like view 0, got "
                   f"{tuple(img.shape)}")
        for name, p in self.params.items():
            _check(p.dim() >= 2 and tuple(p.shape[:2]) == (len(self.images), b), "Views",
                   f"param {name!r} must start with (V={len(self.images)}, B={b}), "
                   f"got {tuple(p.shape)}")
        for name, mixing in (("mix", self.mix), ("embedding_mix", self.embedding_mix)):
            for part in () if mixing is None else (mixing.weight, mixing.partner):
                _check(tuple(part.shape) == (len(self.images), b), "Views",
                       f"{name} weight and partner must be (V={len(self.images)}, B={b}), got "
                       f"{tuple(part.shape)}")
        for name, x in self.extra.items():
            _check(x.dim() == dims, "Views", f"extra {name!r} must be (M, C, H, W) images or (M, F) rows "
                                             f"like the views, got {tuple(x.shape)}")

    def evolve(self, **changes: Any) -> Views:
        return dataclasses.replace(self, **changes)

    @property
    def n_views(self) -> int:
        return len(self.images)

    @property
    def batch_size(self) -> int:
        return int(self.index.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Episode:
    """A classification task built from V views of B images on each of W ranks.

    Classes are images: the class of view-sample ``v * B + b`` on rank ``r`` is the global
    image index ``r * B + b``. ``labels (V*B,)`` hold these global class ids, in view-major
    order. ``support (S,)``, ``query (Q,)``: local indices into the V*B view-samples.
    ``n_way``: classes of the whole episode (``W * B``), split into ``tasks`` tasks of
    ``n_way / tasks`` consecutive classes each. ``n_support_views``: m1, views per image
    in the support (0 for the all-pairs episode, where every view-sample is support and
    query and ``exclude_self`` holds). ``mix_weight``, ``mix_partner (V*B,)``: the share
    of a view-sample's own class and the global class mixed into it (``None``: unmixed).
    ``pair_layout``: for the all-pairs episode, each row's own column and positive among
    the view-samples of all ranks (``metacontrast.layout.PairLayout``), made once per
    shape outside any compiled region.
    """

    labels: Tensor
    support: Tensor
    query: Tensor
    n_way: int
    n_views: int
    batch_size: int
    exclude_self: bool = False
    n_support_views: int = 0
    tasks: int = 1
    rank: int = 0
    world_size: int = 1
    mix_weight: Tensor | None = None
    mix_partner: Tensor | None = None
    pair_layout: PairLayout | None = None

    def __post_init__(self) -> None:
        n = self.n_views * self.batch_size
        _check(self.labels.shape == (n,), "Episode",
               f"labels must be (V*B,)=({n},), got {tuple(self.labels.shape)}")
        _check(self.support.dim() == 1 and self.query.dim() == 1, "Episode",
               "support and query must be 1-D index tensors")
        _check(self.tasks >= 1 and self.n_way % self.tasks == 0, "Episode",
               f"{self.n_way} classes cannot be split into {self.tasks} equal tasks (episode.tasks)")
        for name in ("mix_weight", "mix_partner"):
            t = getattr(self, name)
            _check(t is None or t.shape == (n,), "Episode", f"{name} must be (V*B,)=({n},)")

    @property
    def ways_per_task(self) -> int:
        return self.n_way // self.tasks

    @classmethod
    def from_views(cls, views: Views, n_support_views: int = 0, tasks: int = 1, rank: int = 0,
                   world_size: int = 1) -> Episode:
        """The episode of ``views``: ``n_support_views`` = 0 gives the all-pairs episode,
        otherwise the first m1 views of each image are its support and the rest its
        queries. Mixing recorded in ``views.params`` becomes ``mix_weight``/``mix_partner``."""
        b, v = views.batch_size, views.n_views
        device = views.index.device
        if n_support_views and not 0 < n_support_views < v:
            raise ShapeError(f"Episode: support_views must be in [1, {v - 1}] for {v} views, "
                             f"got {n_support_views}")
        offset = rank * b
        indices = episode_indices(b, v, rank, device)
        labels, every = indices.labels, indices.rows
        if n_support_views:
            support, query = every[:n_support_views * b], every[n_support_views * b:]
        else:
            support = query = every
        weight = partner = None
        if views.mix is not None:
            weight = views.mix.weight.reshape(v * b).float()
            partner = views.mix.partner.reshape(v * b).long() + offset
            if tasks > 1:
                raise ShapeError("Episode: mixing pairs images across the whole batch; it needs "
                                 "episode.tasks=1")
            # a mixed support view would blur its class's prototype: refuse (one host sync,
            # only for support/query episodes)
            support_mixed = n_support_views and bool((views.mix.weight[:n_support_views] < 1).any())
            if support_mixed:
                mixed_views = (views.mix.weight < 1).any(dim=1).nonzero().flatten().tolist()
                raise ShapeError(f"Episode: mixed view(s) {mixed_views} fall in the support (the first "
                                 f"{n_support_views} views); mix a query view")
        pairs = None if n_support_views else pair_layout(b, v, rank, world_size, device)
        return cls(labels=labels, support=support, query=query, n_way=b * world_size, n_views=v,
                   batch_size=b, exclude_self=not n_support_views, n_support_views=n_support_views,
                   tasks=tasks, rank=rank, world_size=world_size, mix_weight=weight,
                   mix_partner=partner, pair_layout=pairs)

    def all_pairs(self, gather: bool = True) -> PairLayout:
        """Where each row's own column, positive and negatives are when every view-sample
        is scored against the view-samples of all ranks (``gather``) or of this rank only
        (``PairLayout``). It depends only on the views, images and ranks, so a support/query
        episode has one too (a loss scoring all pairs ignores the split)."""
        if gather and self.pair_layout is not None:
            return self.pair_layout
        world, rank = (self.world_size, self.rank) if gather else (1, 0)
        return pair_layout(self.batch_size, self.n_views, rank, world, self.labels.device)

    def support_of_all_ranks(self, z: Tensor) -> Tensor:
        """The support rows of every rank: local view-major ``z (V*B, D)`` ->
        ``(m1, G, D)``, the first ``n_support_views`` views of all ``G = W * B`` images
        (gathered with gradient)."""
        if self.n_support_views < 1:
            raise ShapeError("this solver needs support and query views: use episode=n_way_k_shot with "
                             "support_views >= 1 (the all-pairs episode has no separate query)")
        return gather_rows(z, self.n_views, self.world_size)[:self.n_support_views]

    def mix_of_all_ranks(self) -> tuple[Tensor, Tensor] | None:
        """``(mix_weight, mix_partner)`` of every rank's view-samples in the all-pairs
        candidates' order (``(V*G,)`` each, view-major, rank-major within a view);
        ``None`` unmixed."""
        if self.mix_weight is None or self.mix_partner is None:
            return None
        out = []
        for t in (self.mix_weight, self.mix_partner):
            tv = t.view(self.n_views, -1)
            if self.world_size > 1:
                tv = distributed.gather_no_grad(tv.T.contiguous()).T
            out.append(tv.reshape(-1))
        return out[0], out[1]

    def local(self) -> Episode:
        """This episode restricted to this rank's B images (classes ``0 .. B-1``), for
        losses whose targets never leave the rank."""
        offset = self.rank * self.batch_size
        partner = None if self.mix_partner is None else self.mix_partner - offset
        local_pairs = None if self.pair_layout is None else self.all_pairs(gather=False)
        return dataclasses.replace(self, labels=self.labels - offset, n_way=self.batch_size, rank=0,
                                   world_size=1, tasks=1, mix_partner=partner, pair_layout=local_pairs)

    def class_targets(self, rows: Tensor | None = None) -> Tensor:
        """Soft class targets ``(R, n_way)`` of the view-samples ``rows`` (all V*B by
        default): one-hot on the own class, split with the mixed-in class when mixed."""
        rows = torch.arange(self.labels.shape[0], device=self.labels.device) if rows is None else rows
        if self.mix_weight is None or self.mix_partner is None:
            return soft_class_targets(self.labels[rows], self.n_way)
        own = self.labels[rows]
        return soft_class_targets(own, self.n_way, self.mix_weight[rows], self.mix_partner[rows])


def soft_class_targets(classes: Tensor, n_classes: int, weight: Tensor | None = None,
                       partner: Tensor | None = None) -> Tensor:
    """``(R, n_classes)`` rows: one-hot on ``classes (R,)``, or ``weight`` on the class and
    ``1 - weight`` on ``partner`` (a mixed sample)."""
    out = torch.zeros(classes.shape[0], n_classes, device=classes.device)
    if weight is None or partner is None:
        return out.scatter_(1, classes[:, None], 1.0)
    out.scatter_add_(1, classes[:, None], weight[:, None])
    return out.scatter_add_(1, partner[:, None], (1 - weight)[:, None])


@dataclasses.dataclass(frozen=True, eq=False)
class Embeddings:
    """Encoder and head outputs for the V*B view-samples of ``n_views`` views (view-major).

    ``h (V*B, D_h)``: representation. ``z (V*B, D_z)``: projection used by the losses.
    ``teacher_z (len(teacher_views) * B, D_z)``: the EMA teacher's projections of the views
    ``teacher_views``, in that order (``None`` without a teacher; no gradient).
    ``extras``: further named outputs (the projections of ``Views.extra``'s batches).
    ``online_views``: the views whose rows ``h`` and ``z`` hold, in order, when the online
    network skipped some (``teacher.exclusive``); empty: every view. ``n_views``: V, so
    that ``view(v)`` finds a view's rows (0 only for embeddings made by hand; then pass
    ``n_views`` to ``view``).
    """

    h: Tensor
    z: Tensor
    extras: Mapping[str, Tensor] = dataclasses.field(default_factory=dict)
    teacher_views: tuple[int, ...] = ()
    online_views: tuple[int, ...] = ()
    teacher_z: Tensor | None = None
    n_views: int = 0

    def __post_init__(self) -> None:
        _check(self.h.dim() == 2 and self.z.dim() == 2, "Embeddings",
               f"h and z must be 2-D, got {tuple(self.h.shape)} and {tuple(self.z.shape)}")
        _check(self.h.shape[0] == self.z.shape[0], "Embeddings",
               f"h and z disagree on V*B: {self.h.shape[0]} vs {self.z.shape[0]}")
        _check((self.teacher_z is None) == (not self.teacher_views), "Embeddings",
               "teacher_z and teacher_views go together (both or neither)")
        if self.teacher_z is not None:
            _check(self.teacher_z.dim() == 2 and self.teacher_z.shape[0] % len(self.teacher_views) == 0,
                   "Embeddings", f"teacher_z must be ({len(self.teacher_views)} * B, D_z), got "
                                 f"{tuple(self.teacher_z.shape)}")

    def _rows(self, v: int, n_views: int | None) -> slice:
        n = n_views or self.n_views
        if n < 1:
            raise ShapeError("Embeddings: the number of views is unknown (embeddings made by hand): "
                             "pass n_views")
        views = self.online_views or tuple(range(n))
        if v not in views:
            raise ShapeError(f"Embeddings: view {v} asked for, but the online network embeds views "
                             f"{list(views)} (teacher.exclusive skips the teacher's views)")
        b = self.z.shape[0] // len(views)
        row = views.index(v)
        return slice(row * b, (row + 1) * b)

    def view(self, v: int, n_views: int | None = None) -> Tensor:
        """The projections ``z`` of view ``v``: ``(B, D_z)``."""
        return self.z[self._rows(v, n_views)]

    def h_view(self, v: int, n_views: int | None = None) -> Tensor:
        """The representations ``h`` of view ``v``: ``(B, D_h)``."""
        return self.h[self._rows(v, n_views)]

    def teacher_view(self, v: int, n_views: int | None = None) -> Tensor:
        """The teacher's projections of view ``v``: ``(B, D_z)``, no gradient. Raises
        ``ShapeError`` naming ``teacher.views`` when the teacher did not embed view ``v``."""
        if self.teacher_z is None or v not in self.teacher_views:
            what = "no teacher is configured" if self.teacher_z is None else \
                f"the teacher embeds views {list(self.teacher_views)}"
            raise ShapeError(f"Embeddings: teacher projections of view {v} asked for, but {what}; "
                             f"set teacher.views to include {v}")
        b = self.teacher_z.shape[0] // len(self.teacher_views)
        row = self.teacher_views.index(v)
        return self.teacher_z[row * b:(row + 1) * b]


@dataclasses.dataclass(frozen=True, eq=False)
class Logits:
    """Scores of each query against the episode's classes: ``scores (Q, N)`` and
    ``targets (Q,)`` (class indices) or ``(Q, N)`` (soft targets)."""

    scores: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        _check(self.scores.dim() == 2, "Logits", f"scores must be (Q, N), got {tuple(self.scores.shape)}")
        _check(self.targets.shape[0] == self.scores.shape[0], "Logits",
               f"targets must start with Q={self.scores.shape[0]}, got {tuple(self.targets.shape)}")


@dataclasses.dataclass(frozen=True, eq=False)
class LossInputs:
    """Everything a loss may read: the views, the episode, the embeddings, the solver's
    logits (``None`` when the method has no solver) and ``memory (M, D)``, the configured
    memory's keys as read before this step (``None`` without a memory);
    ``memory_normalized``: its rows are unit vectors (a memory written with ``normalize``),
    so a cosine needs no normalisation of them."""

    views: Views
    episode: Episode
    embeddings: Embeddings
    logits: Logits | None = None
    memory: Tensor | None = None
    memory_normalized: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class LossTerms:
    """Named, already weighted, 0-dim loss terms; ``total`` is their sum."""

    terms: Mapping[str, Tensor]

    def __post_init__(self) -> None:
        _check(len(self.terms) > 0, "LossTerms", "needs at least one term")
        for name, t in self.terms.items():
            _check(t.dim() == 0, "LossTerms", f"term {name!r} must be 0-dim, got {tuple(t.shape)}")

    @property
    def total(self) -> Tensor:
        values = list(self.terms.values())
        out = values[0]
        for t in values[1:]:
            out = out + t
        return out

    def detached(self) -> LossTerms:
        return LossTerms({k: v.detach() for k, v in self.terms.items()})


@dataclasses.dataclass(frozen=True, eq=False)
class Features:
    """Frozen features of a labelled split: ``x (N, D)`` and ``y (N,)``."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        _check(self.x.dim() == 2 and self.y.shape == (self.x.shape[0],), "Features",
               f"need x (N, D) and y (N,), got {tuple(self.x.shape)} and {tuple(self.y.shape)}")


@dataclasses.dataclass(eq=False)
class EvalInputs:
    """What an evaluator reads.

    ``encoder``: the frozen encoder (``None`` for the raw-pixel baseline); evaluators that
    train it (fine-tuning) work on a copy. ``data``: the labelled samples (an ``ImageData``:
    uint8 ``train_images (N, C, H, W)``, ``test_images (T, C, H, W)``, labels; or a
    ``TabularData`` of rows; both name their samples ``train_x``/``test_x``).
    ``train_index (N_eval,)``: the train rows frozen-feature protocols use.
    ``features(images) -> (n, D)``: uint8 images -> frozen float32 features.
    ``seed``: the run's seed; ``run_dir``: where evaluators may save what they drew (label
    subsets), ``None`` when nothing may be written. ``details``: evaluators add what a
    reader needs besides the metrics (chosen hyperparameters, subset files); it ends up in
    ``results.json``."""

    encoder: Any
    data: Any
    train_index: Tensor
    features: Callable[[Tensor], Tensor]
    seed: int = 0
    run_dir: Any = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    channels_last: bool = False
    batch_size: int = 512
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    _frozen: tuple[Features, Features] | None = dataclasses.field(default=None, init=False, repr=False)

    def frozen(self) -> tuple[Features, Features]:
        """``(train, test)`` frozen features, extracted once and shared by all evaluators:
        train = the ``train_index`` rows of the train split, test = the whole test split."""
        if self._frozen is None:
            d = self.data
            idx = self.train_index.to(d.train_x.device)
            train = Features(self.features(d.train_x[idx]),
                             d.train_labels[idx.to(d.train_labels.device)])
            test = Features(self.features(d.test_x), d.test_labels)
            self._frozen = (train, test)
        return self._frozen


@dataclasses.dataclass(frozen=True, eq=False)
class StepState:
    """What boundary hooks see: position, the detached loss terms of the last step and
    the (unwrapped) model."""

    step: int
    epoch: int
    terms: LossTerms | None
    model: Any


@dataclasses.dataclass
class StepInputs:
    """What the trainer hands a step: the explicit augmentation ``generator`` (on the
    data's device), the global ``step`` index, the (possibly DDP-wrapped) ``model`` and
    ``autocast``, a factory of the mixed-precision context for the model's forward
    (view generation stays in float32)."""

    generator: torch.Generator
    step: int
    model: torch.nn.Module
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
