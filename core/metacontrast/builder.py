"""Build components from a composed config through the plugin registry."""

from __future__ import annotations

from typing import Any

import attrs
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metacontrast.config import ConfigError
from metacontrast.interfaces import (
    BuildContext,
    Encoder,
    EpisodeBuilder,
    Evaluator,
    Head,
    Logger,
    Memory,
    ViewGenerator,
    ViewTransform,
)
from metacontrast.model import Model
from metacontrast.plugins import PluginManager
from metacontrast.teacher import EMATeacher

RESERVED_KEYS = ("name",)


@attrs.define
class Components:
    """Everything built from one config: the data-side stages, the trainable ``model``,
    the optional memory, the evaluators by name and the context they were built with."""

    view_generator: ViewGenerator
    view_transforms: list[ViewTransform]
    episode_builder: EpisodeBuilder
    model: Model
    memory: Memory | None
    evaluators: dict[str, Evaluator]
    context: BuildContext


def component_config(cls: type, key: str, params: dict[str, Any]) -> Any:
    """Check ``params`` against ``cls.Config`` and build it. Unknown keys and wrong types
    raise ``ConfigError`` naming ``key.<param>`` and the valid keys."""
    schema = cls.Config
    fields = {f.name for f in attrs.fields(schema)}
    unknown = sorted(set(params) - fields)
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"{key}.{unknown[0]}: unknown key for {cls.NAME!r}; valid keys: {valid}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema()), params)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        bad = getattr(err, "full_key", None) or getattr(err, "key", None)
        where = f"{key}.{bad}" if bad else key
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
    except (ValueError, TypeError) as err:  # the component's own validation
        raise ConfigError(f"{key}: {err}") from None


def _node(cfg: DictConfig, key: str) -> dict[str, Any]:
    node = OmegaConf.select(cfg, key)
    if node is None:
        raise ConfigError(f"{key}: missing; choose one with {key}=<name>")
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(container, dict) or "name" not in container:
        raise ConfigError(f"{key}: must be a mapping with a 'name' key, got {container!r}")
    return container


def build_one(plugins: PluginManager, kind: str, key: str, params: dict[str, Any],
              context: BuildContext) -> Any:
    """Build the component ``params['name']`` of ``kind`` (config key ``key``). A
    ``ValueError`` from the component's constructor (what it refuses about the data or the
    other components) becomes a ``ConfigError`` naming ``key``."""
    params = dict(params)
    name = params.pop("name")
    cls = plugins.get(kind, str(name), key=f"{key}.name")
    modalities = getattr(cls, "MODALITIES", ("image", "table"))
    if context.modality not in modalities:
        raise ConfigError(f"{key}.name: {name!r} works on {' and '.join(modalities)} data, but the data "
                          f"are of kind {context.modality!r}; choose a {kind} for {context.modality} data")
    config = component_config(cls, key, params)
    try:
        return cls(config, context)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{key}: {err}") from None


def build_encoder(cfg: DictConfig, plugins: PluginManager, context: BuildContext) -> Encoder:
    """The encoder alone (``metacontrast export``, ``metacontrast.load_encoder``)."""
    return build_one(plugins, "encoder", "encoder", _node(cfg, "encoder"), context)


def _named_map(cfg: DictConfig, key: str) -> dict[str, dict[str, Any]]:
    node = OmegaConf.select(cfg, key)
    if node is None:
        return {}
    container = OmegaConf.to_container(node, resolve=True)
    if not isinstance(container, dict):
        raise ConfigError(f"{key}: must map names to settings, got {container!r}")
    for name, params in container.items():
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"{key}.{name}: must be a mapping of settings, got {params!r}")
    # an entry set to null is switched off (e.g. loss.nt_xent=null)
    return {str(k): dict(v) for k, v in container.items() if v is not None}


def _check_single_view_readers(losses: dict[str, Any], solver: Any) -> None:
    """``teacher.exclusive`` leaves the teacher's views out of ``Embeddings.h``/``z``: only
    losses that read single views (and no solver) can run."""
    if solver is not None:
        raise ConfigError(f"teacher.exclusive: solver {solver.NAME!r} reads every view; set "
                          f"teacher.exclusive=false or solver=none")
    for name, loss in losses.items():
        if loss.READS_ALL_VIEWS:
            raise ConfigError(f"teacher.exclusive: loss {name!r} reads every view's projections; set "
                              f"teacher.exclusive=false")


def check_component_configs(cfg: DictConfig, plugins: PluginManager) -> None:
    """Check every component section against its component's ``Config`` (unknown keys,
    types, the component's own value checks) without building anything: run before any
    data is read, so a bad value fails in a moment, naming its key."""
    sections = [("view_generator", "views", _node(cfg, "views")),
                ("episode_builder", "episode", _node(cfg, "episode")),
                ("encoder", "encoder", _node(cfg, "encoder")), ("head", "head", _node(cfg, "head"))]
    for kind, key in (("solver", "solver"), ("memory", "memory")):
        if OmegaConf.select(cfg, key) is not None:
            sections.append((kind, key, _node(cfg, key)))
    for kind, key in (("view_generator", "view_transforms"), ("loss", "loss"), ("evaluator", "eval"),
                      ("logger", "logger")):
        for name, params in _named_map(cfg, key).items():
            params = {k: v for k, v in params.items() if not (kind == "loss" and k == "weight")}
            sections.append((kind, f"{key}.{name}", {"name": name, **params}))
    for kind, key, params in sections:
        params = dict(params)
        cls = plugins.get(kind, str(params.pop("name")), key=f"{key}.name")
        check_view_kind(key, cls, plugins)
        component_config(cls, key, params)
        missing = cls.unavailable() if kind == "logger" else None
        if missing:
            raise ConfigError(f"{key}: {missing}; or leave it out of logger=[...]")
    check_inputs_are_read(cfg, plugins)


def _selected_inputs(cfg: DictConfig, plugins: PluginManager) -> dict[str, str]:
    """The optional loss inputs the config provides, each with the setting that selects it."""
    provided = {}
    for name in _named_map(cfg, "view_transforms"):
        if getattr(plugins.get("view_generator", name, key=f"view_transforms.{name}"), "MIXES", False):
            provided["mixed"] = f"view_transforms.{name} (it mixes images)"
    if OmegaConf.select(cfg, "solver") is not None:
        provided["logits"] = f"solver={cfg.solver.name}"
    if OmegaConf.select(cfg, "memory") is not None:
        provided["memory"] = f"memory={cfg.memory.name}"
    if OmegaConf.select(cfg, "teacher") is not None:
        provided["teacher"] = "teacher (an EMA teacher)"
    return provided


_WHAT = {"logits": "a solver's logits", "memory": "a memory", "teacher": "the teacher's projections",
         "mixed": "mixed views' soft targets"}
_SELECT = {"logits": "solver=<name>", "memory": "memory=<name>",
           "teacher": "+teacher=<name> (or a method with one)", "mixed": "+mix=<name>"}
_NOTHING = "it would cost time and change nothing"
_UNREAD = {"logits": _NOTHING, "memory": _NOTHING, "teacher": _NOTHING,
           "mixed": "the losses would train on mixed images with their unmixed targets"}
_DROP = {"logits": "solver=none", "memory": "memory=none", "teacher": "~teacher", "mixed": "no mixing"}


def check_inputs_are_read(cfg: DictConfig, plugins: PluginManager) -> None:
    """Every solver, memory and teacher the config selects is read by a selected loss, and
    every selected loss has what it ``NEEDS``: a choice that would change nothing (a
    memory no loss reads) or fail at the first step is refused naming it. Losses that do
    not declare ``READS`` (outside plugins) are trusted to read anything."""
    losses = {name: plugins.get("loss", str(params.get("name", name)), key=f"loss.{name}")
              for name, params in _named_map(cfg, "loss").items()}
    provided = _selected_inputs(cfg, plugins)
    for name, cls in losses.items():
        for needed in sorted(cls.NEEDS):
            if needed not in provided:
                raise ConfigError(f"loss.{name}: it reads {_WHAT[needed]}, and none is selected; choose "
                                  f"{_SELECT[needed]}, or another loss")
    declared = [cls.READS for cls in losses.values()]
    if any(reads is None for reads in declared):
        return
    read = set().union(*declared)
    memory_source = OmegaConf.select(cfg, "memory.source")
    if "memory" in read and memory_source == "teacher_z":
        read.add("teacher")  # the memory is written with the teacher's projections
    for what, setting in provided.items():
        if what in read:
            continue
        readers = sorted(n for n, c in plugins.components["loss"].items()
                         if what in (c.READS or ()))
        key = setting.split("=")[0].split(" ")[0]
        raise ConfigError(f"{key}: {setting} is selected, but no selected loss reads {_WHAT[what]} "
                          f"(loss: {', '.join(losses)}): {_UNREAD[what]}. "
                          f"Choose {_DROP[what]}, or a loss that reads it: {', '.join(readers)}")


def check_view_kind(key: str, cls: type, plugins: PluginManager) -> None:
    """View generators and view transforms register through one hook: refuse a transform
    named as the view generator (``views.name``) and a generator listed among the view
    transforms, naming the mistake before the settings are read."""
    if key == "views" and issubclass(cls, ViewTransform):
        generators = sorted(n for n, c in plugins.components["view_generator"].items()
                            if not issubclass(c, ViewTransform))
        raise ConfigError(f"views.name: {cls.NAME!r} is a view transform (it changes the views a view "
                          f"generator made), not a view generator: list it under view_transforms "
                          f"(view_transforms.{cls.NAME}, or the option of task_aug/aux/mix that ships it) "
                          f"and choose a view generator for views; generators: {', '.join(generators)}")
    if key.startswith("view_transforms.") and not issubclass(cls, ViewTransform):
        raise ConfigError(f"{key}: {cls.NAME!r} is a view generator, not a view transform; use it as "
                          f"views={cls.NAME} (or views.name={cls.NAME})")


def build_components(cfg: DictConfig, plugins: PluginManager, context: BuildContext) -> Components:
    """Build every component the config names, encoder first (its D sizes the head). The
    sections were checked by ``check_component_configs`` (settings, and a view transform
    never standing for the view generator or the reverse) before any data was read."""
    view_generator = build_one(plugins, "view_generator", "views", _node(cfg, "views"), context)
    transforms = []
    for name, params in _named_map(cfg, "view_transforms").items():
        transforms.append(build_one(plugins, "view_generator", f"view_transforms.{name}",
                                    {"name": name, **params}, context))
    transforms.sort(key=lambda t: t.ORDER)
    episode_builder = build_one(plugins, "episode_builder", "episode", _node(cfg, "episode"), context)
    context = context.evolve(plugins=plugins)
    encoder: Encoder = build_one(plugins, "encoder", "encoder", _node(cfg, "encoder"), context)
    context = context.evolve(encoder_dim=encoder.out_dim, encoder_parts=int(getattr(encoder, "parts", 1)))
    head: Head = build_one(plugins, "head", "head", _node(cfg, "head"), context)
    context = context.evolve(head_dim=head.out_dim, head_parts=int(getattr(head, "parts", 1)))
    solver = None
    if OmegaConf.select(cfg, "solver") is not None:
        solver = build_one(plugins, "solver", "solver", _node(cfg, "solver"), context)
    losses, weights = {}, {}
    for name, params in _named_map(cfg, "loss").items():
        weights[name] = float(params.pop("weight", 1.0))
        losses[name] = build_one(plugins, "loss", f"loss.{name}", {"name": name, **params}, context)
    if not losses:
        raise ConfigError("loss: no loss selected; choose with loss=[<name>, ...]")
    memory = None
    if OmegaConf.select(cfg, "memory") is not None:
        memory = build_one(plugins, "memory", "memory", _node(cfg, "memory"), context)
    evaluators = {}
    for name, params in _named_map(cfg, "eval").items():
        # an evaluator may read its own data when built (transfer's target dataset): a
        # ValueError there names eval.<name> (build_one)
        evaluators[name] = build_one(plugins, "evaluator", f"eval.{name}", {"name": name, **params}, context)
        evaluators[name].key = name
    teacher = None
    if OmegaConf.select(cfg, "teacher") is not None:
        t = cfg.teacher
        try:
            views = None if t.views is None else tuple(int(v) for v in t.views)
            teacher = EMATeacher(encoder, head, float(t.momentum), float(t.final_momentum), str(t.schedule),
                                 views=views, shuffle_bn=bool(t.shuffle_bn), exclusive=bool(t.exclusive))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if teacher.exclusive:
            _check_single_view_readers(losses, solver)
    model = Model(encoder, head, losses, weights, solver=solver,
                  forward_chunks=int(cfg.trainer.forward_chunks),
                  channels_last=bool(cfg.trainer.channels_last), teacher=teacher)
    return Components(view_generator=view_generator, view_transforms=transforms,
                      episode_builder=episode_builder, model=model, memory=memory,
                      evaluators=evaluators, context=context)


def build_loggers(cfg: DictConfig, plugins: PluginManager, context: BuildContext) -> dict[str, Logger]:
    """The loggers of the name-keyed ``logger`` map (built on rank 0 only)."""
    loggers: dict[str, Logger] = {}
    for name, params in _named_map(cfg, "logger").items():
        loggers[name] = build_one(plugins, "logger", f"logger.{name}", {"name": name, **params}, context)
        loggers[name].key = name
    return loggers
