"""Plugin discovery and the component registry.

Plugins are modules registered with pluggy. The built-in defaults
(``metacontrast.builtin.plugin``) go through the same ``_register`` path as every
third-party module found in the ``metacontrast`` entry-point group.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
import os
import types
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from metacontrast import PROJECT_NAME, __version__, hookspecs
from metacontrast.interfaces import COMPONENT_KINDS, REGISTER_HOOKS

ENTRY_POINT_GROUP = PROJECT_NAME
BUILTIN_MODULES = ("metacontrast.builtin.plugin",)
DISABLE_AUTOLOAD_ENV = "METACONTRAST_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "METACONTRAST_BLOCK_PLUGINS"
MODULES_ENV = "METACONTRAST_PLUGINS"
BUILTIN_NAME = "builtin"


class PluginError(RuntimeError):
    """A plugin could not be loaded, is malformed, or conflicts with another."""


class UnknownComponentError(KeyError):
    """A config names a component nobody registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@attrs.define
class PluginInfo:
    """One registered plugin: entry-point name, distribution, version, module and the
    component names it registers, by kind."""

    name: str
    distribution: str
    version: str
    module: str
    components: dict[str, list[str]] = attrs.field(factory=dict)


_HOOK_NAMES = frozenset(n for n in dir(hookspecs) if n.startswith(f"{PROJECT_NAME}_"))


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _owner(info: PluginInfo) -> str:
    return f"{info.name!r} (distribution {info.distribution} {info.version}, module {info.module})"


class PluginManager:
    """Loads plugins and answers which component class a config name means.

    ``autoload``: load the entry points of the group ``metacontrast`` (off in tests that
    want a clean manager; also off when ``METACONTRAST_DISABLE_PLUGIN_AUTOLOAD=1``).
    ``block``: entry-point or distribution names never loaded (also taken from the
    comma-separated ``METACONTRAST_BLOCK_PLUGINS``). ``extra``: modules or objects to
    register as well, as if they were plugins. ``METACONTRAST_PLUGINS``: comma-separated
    importable module names registered the same way (a local plugin without packaging it;
    the environment, never a config, chooses code to import).
    """

    def __init__(self, *, autoload: bool = True, block: Iterable[str] = (),
                 extra: Iterable[Any] = ()) -> None:
        self.hooks = pluggy.PluginManager(PROJECT_NAME)
        self.hooks.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.blocked = frozenset([*block, *_env_list(BLOCK_ENV)])
        for module_name in BUILTIN_MODULES:
            self._register(importlib.import_module(module_name), BUILTIN_NAME, PROJECT_NAME,
                           __version__)
        if autoload and os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("1", "true", "yes"):
            self._load_entry_points()
        for module_name in _env_list(MODULES_ENV):
            try:
                module = importlib.import_module(module_name)
            except Exception as err:
                raise PluginError(f"{MODULES_ENV}: module {module_name!r} failed to import: "
                                  f"{type(err).__name__}: {err}") from err
            self._register(module, module_name, f"<{MODULES_ENV}>", "")
        for i, plugin in enumerate(extra):
            name = getattr(plugin, "__name__", None) or f"extra{i}"
            self._register(plugin, name, "<registered in process>", "")
        try:
            self.hooks.check_pending()
        except pluggy.PluginValidationError as err:
            info = self.infos.get(self.hooks.get_name(err.plugin) or "")
            where = _owner(info) if info else repr(err.plugin)
            raise PluginError(f"plugin {where} implements an unknown hook: {err}") from None
        self.components = self._collect_components()

    # -- loading ----------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "<unknown distribution>"
            version = ep.dist.version if ep.dist is not None else ""
            if ep.name in self.blocked or dist in self.blocked:
                continue
            if ep.name in self.infos:
                first = self.infos[ep.name]
                if first.distribution == dist:
                    continue  # the same distribution seen twice on sys.path
                raise PluginError(f"two plugins are named {ep.name!r}: {_owner(first)} and "
                                  f"distribution {dist} {version} ({ep.value})")
            try:
                module = ep.load()
            except Exception as err:
                raise PluginError(f"plugin {ep.name!r} (distribution {dist} {version}, entry point "
                                  f"{ep.name} = {ep.value}) failed to load: "
                                  f"{type(err).__name__}: {err}") from err
            self._register(module, ep.name, dist, version)

    def _register(self, plugin: Any, name: str, distribution: str, version: str) -> None:
        module = getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name=name, distribution=distribution, version=version, module=module)
        misspelt = sorted(
            attr for attr in dir(plugin)
            if attr.startswith(f"{PROJECT_NAME}_") and attr not in _HOOK_NAMES
            and callable(getattr(plugin, attr))
        )
        if misspelt:
            raise PluginError(f"plugin {_owner(info)} defines {', '.join(misspelt)}, which is not "
                              f"a hook; known hooks: {', '.join(sorted(_HOOK_NAMES))}")
        try:
            self.hooks.register(plugin, name=name)
        except pluggy.PluginValidationError as err:
            raise PluginError(f"plugin {_owner(info)} has a hook that does not match its "
                              f"specification: {err}") from None
        except ValueError as err:
            raise PluginError(f"plugin {_owner(info)} could not be registered: {err}") from None
        self.infos[name] = info

    # -- calling hooks ----------------------------------------------------------------

    def answers(self, hook: str, **kwargs: Any) -> list[tuple[PluginInfo, Any]]:
        """Every plugin's answer to the collecting hook ``hook``, in registration order,
        each through that plugin's own pluggy relay (``subset_hook_caller``) so that the
        answer is attributed to its plugin; plugins answering ``None`` are left out."""
        registered = {name: self.hooks.get_plugin(name) for name in self.infos}
        out = []
        for name in registered:
            others = [p for n, p in registered.items() if n != name]
            for answer in self.hooks.subset_hook_caller(hook, remove_plugins=others)(**kwargs):
                out.append((self.infos[name], answer))
        return out

    # -- components -------------------------------------------------------------------

    def _collect_components(self) -> dict[str, dict[str, type]]:
        registry: dict[str, dict[str, type]] = {kind: {} for kind in COMPONENT_KINDS}
        owners: dict[tuple[str, str], PluginInfo] = {}
        for kind, base in COMPONENT_KINDS.items():
            for info, classes in self.answers(REGISTER_HOOKS[kind]):
                if not isinstance(classes, list | tuple):
                    raise PluginError(f"plugin {_owner(info)}: {REGISTER_HOOKS[kind]} must return "
                                      f"a list of classes, got {type(classes).__name__}")
                for cls in classes:
                    if not (inspect.isclass(cls) and issubclass(cls, base)):
                        raise PluginError(f"plugin {_owner(info)} registers {cls!r} as a {kind}, "
                                          f"but it is not a subclass of {base.__qualname__}")
                    name = getattr(cls, "NAME", None)
                    if not isinstance(name, str) or not name:
                        raise PluginError(f"plugin {_owner(info)}: {kind} {cls.__qualname__} has "
                                          f"no NAME")
                    if name in registry[kind]:
                        first = owners[(kind, name)]
                        raise PluginError(f"two {kind} components are named {name!r}: one from plugin "
                                          f"{_owner(first)}, one from plugin {_owner(info)}")
                    registry[kind][name] = cls
                    owners[(kind, name)] = info
                    info.components.setdefault(kind, []).append(name)
        return registry

    def get(self, kind: str, name: str, *, key: str | None = None) -> type:
        """The class of component ``name`` of ``kind``; ``key`` is the config key that
        asked, named in the error when nobody registered ``name``."""
        if kind not in self.components:
            raise UnknownComponentError(f"unknown component kind {kind!r}; kinds: "
                                        f"{', '.join(self.components)}")
        found = self.components[kind].get(name)
        if found is None:
            available = ", ".join(sorted(self.components[kind])) or "none registered"
            where = f"{key}: " if key else ""
            raise UnknownComponentError(f"{where}unknown {kind} {name!r}; available: {available}")
        return found

    def make_train_step(self, config: Any, components: Any) -> Any:
        """The train step for ``config``: the first answer of ``metacontrast_make_train_step``
        in pluggy's order (the built-in default is ``trylast``: it answers when no plugin
        does)."""
        return self.hooks.hook.metacontrast_make_train_step(config=config, components=components)

    def allowed_targets(self) -> frozenset[str]:
        """The ``_target_`` allowlist: built-in names plus every plugin's
        ``metacontrast_register_targets``."""
        from metacontrast.targets import builtin_targets

        names = set(builtin_targets())
        for info, answer in self.answers("metacontrast_register_targets"):
            for name in answer:
                if not isinstance(name, str) or "." not in name or "*" in name:
                    raise PluginError(f"plugin {_owner(info)}: register_targets must return exact "
                                      f"dotted names, got {name!r}")
                names.add(name)
        return frozenset(names)

    def config_searchpath(self) -> list[str]:
        """Every plugin's hydra search-path entries, in registration order."""
        entries: list[str] = []
        for info, answer in self.answers("metacontrast_config_searchpath"):
            for entry in answer:
                if not isinstance(entry, str) or "://" not in entry:
                    raise PluginError(f"plugin {_owner(info)}: config search-path entries must be "
                                      f"'pkg://...' or 'file://...' strings, got {entry!r}")
                entries.append(entry)
        return entries

    def plugin_infos(self) -> list[PluginInfo]:
        return list(self.infos.values())


def describe(manager: PluginManager) -> str:
    """Human-readable listing for ``metacontrast plugins``."""
    lines = []
    for info in manager.plugin_infos():
        version = f" {info.version}" if info.version else ""
        lines.append(f"{info.name}  [{info.distribution}{version}]  ({info.module})")
        if not info.components:
            lines.append("    (no components; hooks only)")
        for kind, names in _listed_kinds(manager, info).items():
            lines.append(f"    {kind + ':':18} {', '.join(sorted(names))}")
    lines += ["", "config options (what to type: group=option; +group=option for aux, mix, task_aug and a "
                  "teacher where the method has none):"]
    lines += describe_options(manager.config_searchpath())
    return "\n".join(lines)


def _listed_kinds(manager: PluginManager, info: PluginInfo) -> dict[str, list[str]]:
    """A plugin's components by kind, view transforms apart from view generators (both
    register through ``metacontrast_register_view_generators``)."""
    from metacontrast.interfaces import ViewTransform

    kinds: dict[str, list[str]] = {}
    for kind, names in info.components.items():
        for name in names:
            cls = manager.components[kind][name]
            shown = "view_transform" if kind == "view_generator" and issubclass(cls, ViewTransform) else kind
            kinds.setdefault(shown, []).append(name)
    return kinds


def describe_options(searchpath: list[str]) -> list[str]:
    """One line per config group: its options, plugins' included."""
    import textwrap

    from metacontrast.config_options import config_groups, group_options

    lines = []
    for group in config_groups(searchpath):
        text = ", ".join(group_options(group, searchpath))
        lines += textwrap.wrap(text, width=100, initial_indent=f"    {group + ':':18} ",
                               subsequent_indent=" " * 23)
    return lines


def as_module(name: str, **attributes: Any) -> types.ModuleType:
    """A throw-away module holding ``attributes``: handy to register a plugin in-process."""
    module = types.ModuleType(name)
    for k, v in attributes.items():
        setattr(module, k, v)
    return module
