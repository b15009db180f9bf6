"""What a user may type on the command line: the options of every config group, and the
overrides metacontrast honours.

The options are the YAML files of ``configs/<group>/`` and of the same group in every
plugin's config directory (``pkg://`` and ``file://`` search-path entries), sub-folders
included (``experiment=table6/simclr_baseline``). Hydra's own settings (``hydra.*``,
``hydra/<group>=``) are refused rather than ignored: configs are composed with hydra's
compose API, so hydra's job runner, its output directories and its launchers never run.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

HONOURED_HYDRA_KEYS = ("hydra.searchpath",)

_RUN_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.runtime.output_dir")


def _override_key(override: str) -> str:
    """``+hydra.run.dir=x`` -> ``hydra.run.dir``; ``hydra/launcher=basic`` -> ``hydra/launcher``."""
    return override.lstrip("+~").split("=", 1)[0].strip()


def refused_hydra_override(override: str) -> str | None:
    """Why ``override`` cannot be honoured (one line naming what to use instead), or None."""
    key = _override_key(override)
    if not (key == "hydra" or key.startswith(("hydra.", "hydra/"))) or key in HONOURED_HYDRA_KEYS:
        return None
    if key in _RUN_DIR_KEYS:
        return (f"{key}: metacontrast does not use hydra's output directories; give the run directory "
                f"as trainer.run_dir=DIR (a sweep's as: metacontrast multirun --dir DIR key=a,b)")
    if key.startswith("hydra/"):
        return (f"{key}: hydra's launchers and sweepers are not used; metacontrast multirun key=a,b "
                f"runs one process per combination, and torchrun runs one process per device")
    return (f"{key}: hydra's job settings have no effect here (configs are composed, hydra's job "
            f"runner never runs); the run is named by trainer.run_dir=DIR, and the only hydra "
            f"setting honoured is hydra.searchpath")


def unreadable_override(override: str) -> str | None:
    """Why hydra's override grammar cannot read ``override`` (a value with non-ASCII
    letters, spaces or brackets unquoted), with the quoting that reads, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_override(override)
        return None
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"[":
        return f"{override}: hydra cannot read this override ({reason})"
    # hydra's single quotes inside the shell's double ones; for a value with a ' in it,
    # hydra's double quotes, escaped inside the shell's
    shell = f"\"{key}='{value}'\"" if "'" not in value else f'"{key}=\\"{value}\\""'
    return (f"{key}: hydra cannot read the value {value!r} unquoted (letters outside ASCII, spaces and "
            f"characters such as ()[]{{}},:=' have a meaning in hydra's override grammar); quote it for "
            f"hydra inside the shell's quotes: {shell}")


def config_directories(searchpath: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """``configs/`` then each plugin's config directory, as paths on disk."""
    from metacontrast.config import config_dir

    dirs = [config_dir()]
    for entry in searchpath:
        scheme, _, rest = entry.partition("://")
        if scheme == "file":
            dirs.append(Path(rest))
        elif scheme == "pkg":  # pkg://package.module (a directory of the package)
            package, _, sub = rest.partition("/")
            try:
                root = Path(str(importlib.resources.files(package)))
            except (ModuleNotFoundError, TypeError):
                continue
            dirs.append(root / sub if sub else root)
    return [d for d in dirs if d.is_dir()]


def group_options(group: str, searchpath: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The options of a config group, sorted: ``group_options('encoder')`` ->
    ``['conv4', 'resnet18', ...]``; files in sub-folders as ``folder/name``."""
    found: set[str] = set()
    for directory in config_directories(searchpath):
        folder = directory / group
        if folder.is_dir():
            names = (p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
            found.update(n for n in names if not any(part.startswith("_") for part in n.split("/")))
    return sorted(found)


def config_groups(searchpath: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The top-level config groups (folders holding YAML files), sorted."""
    found: set[str] = set()
    for directory in config_directories(searchpath):
        found.update(p.name for p in directory.iterdir() if p.is_dir() and any(p.rglob("*.yaml")))
    return sorted(found)


_MISSING_OPTION = re.compile(r"Could not (?:find|load) '([^']+)'")


def unknown_option_message(hydra_message: str, searchpath: list[str] | tuple[str, ...] = ()) -> str | None:
    """For hydra's "Could not find 'encoder/conv5'": one line naming the override and every
    option of its group (sub-folders included, which hydra's message leaves out)."""
    match = _MISSING_OPTION.search(hydra_message)
    if match is None or "/" not in match.group(1):
        return None
    group, option = match.group(1).split("/", 1)
    options = group_options(group, searchpath)
    if not options:
        return None
    return f"{group}={option}: no such option; the options of {group} are: {', '.join(options)}"
