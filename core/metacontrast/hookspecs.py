"""Every hook a plugin may implement, each documented where it is declared.

Shape letters used in every docstring of the project:
B batch, V views, N way, K shot, Q query, S support, D feature dim, M memory size,
C channels, H height, W width.

Registration hooks (``metacontrast_register_*``) run once at start-up, are called on
every plugin (1:N) and return a list of component classes, each with a unique ``NAME``.
``metacontrast_make_train_step`` is first-result: the first non-``None`` answer wins and
the built-in default answers last. Boundary hooks run between steps, never inside one.
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
        Loss,
        Memory,
        Solver,
        TrainStep,
        ViewGenerator,
    )
    from metacontrast.records import StepState

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def metacontrast_register_view_generators() -> list[type[ViewGenerator]]:
    """Return view generator classes (setup, 1:N).

    A view generator maps a ``Batch`` of uint8 images ``(B, C, H, W)`` on the device to
    ``Views``: a tuple of V float tensors ``(B, C, H_v, W_v)`` plus the random parameters
    that made them (each ``(V, B, ...)``). Parameters are drawn from the explicit
    ``torch.Generator`` it is given, separately from their application, so a view can be
    replayed.
    """


@hookspec
def metacontrast_register_encoders() -> list[type[Encoder]]:
    """Return encoder classes (setup, 1:N).

    An encoder is an ``nn.Module`` mapping float images ``(N, C, H, W)`` to
    representations ``h`` of shape ``(N, D)``, with ``D`` exposed as ``out_dim``.
    """


@hookspec
def metacontrast_register_heads() -> list[type[Head]]:
    """Return head classes (setup, 1:N).

    A head is an ``nn.Module`` mapping ``h`` ``(N, D_in)`` to a projection ``z``
    ``(N, D_out)``, with ``D_out`` exposed as ``out_dim``.
    """


@hookspec
def metacontrast_register_episode_builders() -> list[type[EpisodeBuilder]]:
    """Return episode builder classes (setup, 1:N).

    An episode builder turns ``Views`` (V views of B images) into an ``Episode``: the
    class label of each of the ``V * B`` view-samples (view-major order, index
    ``v * B + b``), and the support ``(S,)`` and query ``(Q,)`` index sets into them.
    """


@hookspec
def metacontrast_register_solvers() -> list[type[Solver]]:
    """Return inner-loop solver classes (setup, 1:N).

    A solver is an ``nn.Module`` that fits a classifier on the episode's support
    embeddings and scores the queries: ``(Embeddings, Episode) -> Logits`` with scores
    ``(Q, N)`` over the episode's N classes and targets ``(Q,)``. It may hold learnable
    parameters (a logit scale, say); gradients flow through the inner loop.
    """


@hookspec
def metacontrast_register_losses() -> list[type[Loss]]:
    """Return loss classes (setup, 1:N).

    A loss is an ``nn.Module`` called as ``loss(LossInputs) -> Tensor`` with a 0-dim
    result; the step weights each loss by its configured ``weight`` and sums them.
    """


@hookspec
def metacontrast_register_memories() -> list[type[Memory]]:
    """Return memory classes (setup, 1:N).

    A memory holds keys ``(M, D)`` in buffers (so it is part of every checkpoint),
    answers ``read() -> (M, D)`` and is updated at the step boundary with
    ``update(keys (B, D), ids (B,))`` after keys are gathered from all ranks.
    """


@hookspec
def metacontrast_register_evaluators() -> list[type[Evaluator]]:
    """Return evaluator classes (setup, 1:N).

    An evaluator reads frozen ``Features`` of labelled train and test data
    (``(N_train, D)``, ``(N_test, D)`` with integer labels) and returns named metrics.
    """


@hookspec
def metacontrast_register_targets() -> list[str]:
    """Return dotted names a config may use as ``_target_`` (setup, 1:N).

    Only exact names are allowed (``mypkg.backbones.Net``, never a prefix). The built-in
    allowlist holds torchvision's model builders and torch.nn norm and activation layers;
    a config can never add to it (see ``metacontrast.targets``).
    """


@hookspec
def metacontrast_config_searchpath() -> list[str]:
    """Return hydra search-path entries that hold this plugin's config files (setup, 1:N).

    Entries are ``pkg://<package>`` or ``file://<dir>`` directories laid out like the
    project's ``configs/`` (``loss/<name>.yaml``, ``method/<name>.yaml``, ...), so that
    ``loss=[<name>]`` or ``method=<name>`` selects what the plugin ships.
    """


@hookspec(firstresult=True)
def metacontrast_make_train_step(config: Any, components: Any) -> TrainStep | None:
    """Return the train step for methods whose step differs (setup, first result).

    ``config`` is the composed config, ``components`` the built ``Components``. Return
    ``None`` when the configured method is not yours. The built-in default answers last
    and computes ``LossTerms`` from views, episode, embeddings, logits and losses.
    """


@hookspec
def metacontrast_on_step_end(state: StepState) -> None:
    """Called after each optimizer step (boundary, 1:N). ``state`` holds step, epoch,
    the detached loss terms and the model; update momentum teachers or memories here."""


@hookspec
def metacontrast_on_epoch_end(state: StepState) -> None:
    """Called after the last step of each epoch (boundary, 1:N)."""


@hookspec
def metacontrast_on_checkpoint(state: StepState, payload: dict[str, Any]) -> None:
    """Called before a checkpoint is written (boundary, 1:N).

    Add entries to ``payload`` (tensors, numbers, strings and containers of them only,
    so the checkpoint still loads with ``weights_only=True``).
    """
