"""# Hooks reference

Every hook a plugin may implement. This module is the one source: each specification's
docstring says when the hook runs, what it returns and what it may do, and
`docs/hooks.md` is generated from it (`python -m metacontrast.hooks_doc --write`; a test
fails when the page and this module differ).

Shape letters (used in every docstring of the project): **B** batch, **V** views,
**N** way, **K** shot, **S** support, **Q** query, **D** feature dim, **M** memory size,
**C** channels, **H** height, **W** width.

Implement a hook with the marker and the exact hook name:

```python
from metacontrast import hookimpl

@hookimpl
def metacontrast_register_losses():
    return [MyLoss]
```

A function whose name starts with `metacontrast_` but is not a hook below is an error at
start-up (a misspelt hook never fails silently), and so is a hook whose arguments are not
those of its specification.

Every hook is called through pluggy's relay (`pm.hook.<name>(...)`), so pluggy's rules
hold: implementations run in pluggy's order (the plugin registered last first, `tryfirst`
and `trylast` move one), a `firstresult` hook stops at the first non-`None` answer, and
hook-call monitoring (`PluginManager.hooks.add_hookcall_monitoring`) sees every call.
Setup hooks that collect one answer from every plugin are called on each plugin's own
relay (`subset_hook_caller`), in registration order, so that every answer is attributed
to its plugin in error messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from metacontrast import PROJECT_NAME

if TYPE_CHECKING:
    from metacontrast.interfaces import (
        Encoder,
        EpisodeBuilder,
        Evaluator,
        Head,
        Logger,
        Loss,
        Memory,
        Solver,
        TrainStep,
        ViewGenerator,
    )
    from metacontrast.records import StepState

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

# Headings of the page, each before the hook it names (``metacontrast.hooks_doc``).
SECTIONS: dict[str, tuple[str, str]] = {
    "metacontrast_register_view_generators": ("Registration hooks (setup, called on every plugin)", """
Each returns a list of classes. Each class has a unique `NAME` (what configs select) and
a `Config` attrs class of its parameters with the paper's defaults; the builder checks
the config section against `Config` (an unknown key or a wrong type fails naming the
full key) and calls `cls(config, context)` with a `BuildContext` (`in_channels`,
`image_size`, `mean`, `std`, `device`, `num_classes`, `num_train`, `encoder_dim`,
`head_dim`, `encoder_parts`, `head_parts`, `rank`, `world_size`, `allowed_targets`, and
`plugins`, the registry, for components that build registered components themselves with
`metacontrast.builder.build_one`). An encoder or head with a `parts` attribute (its
output is that many equal-width parts, one per channel view) sets
`encoder_parts`/`head_parts` for the components built after it. Two classes of one kind
with the same `NAME` fail at start-up, naming both plugins and their distributions.
"""),
    "metacontrast_make_train_step": ("The train step (setup, first result)", ""),
    "metacontrast_on_step_end": ("Boundary hooks", """
Run between steps (never inside the step), on every rank, called on every plugin.
"""),
}


@hookspec
def metacontrast_register_view_generators() -> list[type[ViewGenerator]]:
    """Returns `ViewGenerator` subclasses (`nn.Module`). Called as `generator(batch: Batch,
    rng: torch.Generator) -> Views`.

    - in: `Batch.images` uint8 `(B, C, H, W)` on the device, `Batch.index` `(B,)`.
    - out: `Views.images`, a tuple of V float tensors `(B, C, H_v, W_v)` (sizes may differ per
      view, as in multi-crop), and `Views.params`, the random parameters that made them, each
      with leading dims `(V, B)`.
    - All randomness comes from the `torch.Generator` passed in (its state is checkpointed):
      draw the parameters first, apply them second, so a view can be replayed.

    Built in: `identity`. `metacontrast-kornia`: `simclr`.

    **View transforms** are registered through the same hook: subclasses of `ViewTransform`
    (`transform(views: Views, rng) -> Views`), listed in the name-keyed `view_transforms`
    config map and applied after the view generator in increasing `ORDER`, in float32. They
    may change images, add `params` (each `(V, B, ...)`), and add auxiliary image batches to
    `Views.extra` (encoded in their own pass; their projections appear in
    `Embeddings.extras` under the same name). Mixing sets the typed `Views.mix`
    (`records.Mixing`: `weight`, `partner` `(V, B)`), which the episode turns into soft class
    targets; mixing in the encoder's input embedding sets `Views.embedding_mix`.
    `metacontrast-metassl`: `task_rotation` (one angle per image, all its views),
    `naive_rotation` (one per view), `rotation_copies` (`extra["rotation"]` for the rotation
    loss), `unmix` (mixup / CutMix with the reversed batch).
    """


@hookspec
def metacontrast_register_encoders() -> list[type[Encoder]]:
    """Returns `Encoder` subclasses (`nn.Module`): float images `(N, C, H, W)` -> `h (N, D)`,
    with `D` in the attribute `out_dim`. Built in: `resnet18`, `resnet50` (torchvision,
    option `cifar_stem`), `conv4`.
    """


@hookspec
def metacontrast_register_heads() -> list[type[Head]]:
    """Returns `Head` subclasses (`nn.Module`): `h (N, D_in)` -> `z (N, out_dim)`. The
    context's `encoder_dim` is `D_in`. Built in: `mlp` (SimCLR's projection head),
    `identity`.
    """


@hookspec
def metacontrast_register_episode_builders() -> list[type[EpisodeBuilder]]:
    """Returns `EpisodeBuilder` subclasses: `builder(views: Views) -> Episode`.

    - `Episode.labels (V*B,)`: the class of each view-sample in view-major order (`v * B + b`):
      the global image index `rank * B + b`, so an episode can span all ranks.
    - `Episode.support (S,)`, `Episode.query (Q,)`: local indices into the `V*B` view-samples.
    - `Episode.n_way` (`W * B` when spanning ranks), `tasks` (classes split into this many
      equal tasks), `n_support_views` (m1; 0 for the all-pairs episode), `n_views`,
      `batch_size`, `rank`, `world_size`, `exclude_self` (a query is never scored against
      itself, as in SimCLR's all-pairs episode), `mix_weight`/`mix_partner` (soft targets of
      mixed views; `Episode.class_targets()` gives them dense).

    The episode is the one owner of the layout: which rows are positives, supports and
    queries, where each row's own column is, rank offsets, task splits and mixing targets.
    Losses and solvers read it (`episode.all_pairs(gather)`: candidates gathered in column
    order, `self_mask`, `positive`, `negative_mask`, `same_view`;
    `episode.support_of_all_ranks(z)`; `episode.local()`; `episode.class_targets()`), never
    work it out from view indices or `rank * B` themselves (`metacontrast.layout` holds the
    arithmetic, once).

    Built in: `n_way_k_shot` (`Episode.from_views`: m1 = `support_views` views per image as
    support, the rest queries, `tasks`, `span_ranks`) and `pairs` (the same builder with m1
    = 0: SimCLR's all against all).
    """


@hookspec
def metacontrast_register_solvers() -> list[type[Solver]]:
    """Returns `Solver` subclasses (`nn.Module`): `solver(embeddings, episode) -> Logits` with
    `scores (Q, N)` and `targets (Q,)` (or soft `(Q, N)`). The inner loop is fitted on the
    support embeddings inside the step, differentiably; learnable parameters (a logit scale)
    are trained with the model. `solver=none` means the losses read embeddings directly. For
    episodes spanning ranks, read the supports of every rank with
    `episode.support_of_all_ranks(z)` (gathered with gradient) and score only the local
    queries (DDP's averaging then gives the loss of the whole episode). `metacontrast-
    metassl`: `protonet`, `ridge` (R2-D2), `svm` (MetaOptNet's multi-class SVM), `all_pairs`
    (SimCLR as a solver).
    """


@hookspec
def metacontrast_register_losses() -> list[type[Loss]]:
    """Returns `Loss` subclasses (`nn.Module`): `loss(LossInputs) -> Tensor` (0-dim).
    `LossInputs` holds `views`, `episode`, `embeddings` (`h`, `z` of shape `(V*B, D)`,
    `extras`), `logits` (or `None`) and `memory` (the memory's keys `(M, D)` as they were
    before the step, or `None`). Losses are configured as a map from name to settings;
    `weight` (default 1) multiplies the term, the step sums the weighted terms, and each
    term is logged as `loss/<name>`; an entry set to null is switched off. An entry may name
    another registered loss with `name:` to use one loss twice with different settings
    (`loss.strong_infonce: {name: moco_infonce, query_view: 2}`). `metacontrast-simclr`:
    `nt_xent`. `metacontrast-metassl`: `query_ce` (cross-entropy of the solver's logits,
    soft targets allowed), `byol` (needs the `teacher:` section; its predictor lives in the
    loss), `rotation` (4-way angle prediction on `extras["rotation"]`). `metacontrast-moco`:
    `moco_infonce`. `metacontrast-clsa`: `ddm`.

    A loss that only reads single views through `embeddings.view(v)` /
    `embeddings.teacher_view(v)` sets the class attribute `READS_ALL_VIEWS = False`; only
    such losses (and no solver) run with `teacher.exclusive`, where the online network skips
    the teacher's views and `h`, `z` hold the other views' rows (`embeddings.online_views`).

    A loss declares what it reads with the class attributes `READS` (a frozenset of
    `"logits"`, `"memory"`, `"teacher"`, `"mixed"`: the inputs it may use) and `NEEDS`
    (those it cannot run without). When every selected loss declares `READS`, a solver,
    memory, teacher or mixing transform (`ViewTransform.MIXES`) that none of them reads is
    refused when the config is checked, naming it, and so is a loss whose `NEEDS` are not
    selected. A loss that declares nothing (`READS = None`, the default) is trusted to read
    anything.

    An EMA teacher (BYOL's target network, MoCo's key encoder) is not a loss but part of the
    model: the `teacher:` config section makes `Model.teacher` a frozen copy of encoder and
    head, moved after every optimizer step by the step's `after_optimizer_step` (then the
    memory is written: one owner of both); its projections of the views in `teacher.views`
    (all by default) are `embeddings.teacher_z`, read one view at a time with
    `embeddings.teacher_view(v)`.
    """


@hookspec
def metacontrast_register_memories() -> list[type[Memory]]:
    """Returns `Memory` subclasses (`nn.Module`): keys `(M, D)` in buffers (so they are part of
    every checkpoint) and three methods. `read() -> (M, D)`: what losses see as
    `LossInputs.memory`, read before the forward pass. `keys_of(embeddings, views) -> (keys
    (n, D), ids (n,))`: what this rank writes; the base class picks the rows of
    `config.source` (`teacher_z`, `z` or `h`) for `config.views`, detached and normalised,
    when the memory's `Config` extends `interfaces.MemoryConfig`. `update(keys, ids)`: the
    write, called by the default step after the optimizer step with every rank's keys in
    rank order (gathered without gradient), identically on every rank. `metacontrast-faiss`:
    `queue` (FIFO, MoCo) and `memory_bank` (one momentum-updated entry per sample).
    `memory=none` for methods without one. See [memories.md](memories.md).
    """


@hookspec
def metacontrast_register_evaluators() -> list[type[Evaluator]]:
    """Returns `Evaluator` subclasses. A frozen-feature protocol implements
    `evaluator.evaluate(train: Features, test: Features) -> dict[str, float]` where
    `Features.x (N, D)` are frozen float32 features and `Features.y (N,)` integer labels. A
    protocol that needs the encoder or the images overrides `run(inputs: EvalInputs)`
    (`inputs.encoder`, `inputs.data` with uint8 `(N, C, H, W)` images, `inputs.frozen()`,
    `inputs.details` for what `results.json` should show) and sets `NEEDS_ENCODER = True`;
    `PERIODIC = False` keeps an expensive one out of the evaluations during pre-training.
    `self.key` is the config key it was built under (name metrics after it when a protocol
    may be configured twice). Metrics are floats, higher is better (accuracies in [0, 1]);
    names ending in `_ci95` are not compared for "best". Built in: `knn`, `linear` (L-BFGS,
    SGD, closed form, augmented), `few_shot`, `semi_supervised`, `transfer`
    ([evaluation.md](evaluation.md)). `metacontrast-faiss`: `knn_faiss`. Two evaluators
    reporting one metric name are an error naming both.
    """


@hookspec
def metacontrast_register_loggers() -> list[type[Logger]]:
    """Returns `Logger` subclasses: where a run's results go, selected as a name-keyed map
    (`logger=[jsonl, tensorboard, wandb]`, several at once). Built on rank 0 only; each
    receives `start(RunStart)` once (run directory, the config, the step training starts
    from, whether it resumes), `log_metrics(row)` for each logging step, `log_evaluation(row,
    protocols)` for each periodic evaluation, `log_figures({name: png})` after training when
    it sets `WANTS_FIGURES`, `log_summary(results)` (the content of `results.json`) and
    `close(status)` (`finished`, `stopped` or `failed`). A logger whose store cannot forget
    rows sets `live = False` and receives a row only once a checkpoint holds its step (each
    step exactly once across a kill and resume). `unavailable()` names a missing package; it
    is checked on every rank before any data is read. Built in: `jsonl` (`metrics.jsonl`),
    `tensorboard`. `metacontrast-wandb`: `wandb`. `metacontrast-mlflow`: `mlflow`. See
    [logging.md](logging.md).
    """


@hookspec
def metacontrast_register_targets() -> list[str]:
    """Setup, called on every plugin. Returns exact dotted names (`mypkg.backbones.Net`; no
    wildcards) that a config may use as a hydra `_target_`. The built-in allowlist holds
    torchvision's classification model builders and torch.nn norm and activation layers.
    Every config (YAML, overrides, the config stored in a checkpoint) is checked against the
    union before anything is built; components instantiate nodes only through
    `metacontrast.targets.instantiate_checked(node, context.allowed_targets, key)`. A config
    can never extend the list (see `docs/reliability.md`).

    ```python
    @hookimpl
    def metacontrast_register_targets():
        return ["metacontrast_mymethod.backbones.WideNet"]
    ```
    """


@hookspec
def metacontrast_config_searchpath() -> list[str]:
    """Setup, called on every plugin. Returns hydra search-path entries
    (`pkg://package.configs` or `file:///dir`) laid out like `configs/`, so that
    `loss=[my_loss]` or `method=my_method` picks the YAML the plugin ships:

    ```python
    @hookimpl
    def metacontrast_config_searchpath():
        return ["pkg://metacontrast_mymethod.configs"]
    ```
    """


@hookspec(firstresult=True)
def metacontrast_make_train_step(config: Any, components: Any) -> TrainStep | None:
    """Setup, first result. `metacontrast_make_train_step(config, components) -> TrainStep |
    None`. Return `None` unless the configured method is yours (look at
    `config.method_name`). The hook is called through pluggy's relay with `firstresult`:
    plugins are asked in pluggy's order (the one registered last first; `tryfirst`/`trylast`
    move an implementation), the first non-`None` answer wins and the rest are not asked.
    The built-in default is `trylast`: it answers only when no plugin did.

    Most methods need no step of their own: return the default step
    (`metacontrast.step.DefaultTrainStep`) with another `objective`. The step walks `Batch
    -> Views -> Episode -> objective -> LossTerms` for every method; the objective (`(views,
    episode, memory, memory_normalized, ctx) -> (LossTerms, Embeddings)`, default: the
    model's weighted losses) is where a method's step differs. A step object has
    `__call__(batch: Batch, ctx: records.StepInputs) -> LossTerms` (forward only: the
    trainer runs backward, the optimizer, the scheduler) and `after_optimizer_step(step,
    total_steps)`, the one owner of what follows the optimizer: the EMA teacher moves, then
    the memory is written (never called for a skipped step). `ctx` has `generator`
    (augmentation RNG), `step`, `model` (the DDP-wrapped `Model`: call it, so gradients are
    synchronised; a plugin that needs the plain model takes `components.model` when it
    builds its step, never `model.module`) and `autocast` (enter it around the model's
    forward only: view generation stays in float32).

    A step that needs gradients other than those of its loss (MetAug's MAGs are trained on a
    second-order meta objective) computes them itself with `torch.autograd.grad` and returns
    them through a carrier term, `sum(p * g) - (the same).detach()`: value 0, gradient `g`
    (see `metacontrast_metaug.step.MetAugObjective`). The trainer's backward then applies
    them, and DDP all-reduces them, like any other gradient. MetAug answers when a `metaug`
    loss is configured rather than by `method_name`, so any method can use that loss.
    """


@hookspec
def metacontrast_on_step_end(state: StepState) -> None:
    """Boundary, called on every plugin. `metacontrast_on_step_end(state: StepState)` after
    each optimizer step (also a skipped one), on every rank, never inside the step:
    `state.step` (the number of optimizer steps done), `state.epoch`, `state.terms`
    (detached `LossTerms`), `state.model` (the unwrapped `Model`). For monitoring and
    outside bookkeeping (a plugin's own logger, an early stop of its own); teachers and
    memories are updated by the step itself (`after_optimizer_step`). No plugin of this
    repository needs it; it is the one way for an outside plugin to watch every step.
    """
