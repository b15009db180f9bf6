"""Command line: ``metacontrast train|eval|plugins``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metacontrast import __version__

USAGE = """usage: metacontrast <command> [overrides ...]

commands:
  train [key=value ...]                    pre-train, then evaluate (hydra overrides,
                                           e.g. data=cifar10 data.root=DIR encoder=resnet18)
  eval checkpoint=PATH [key=value ...]     evaluate a checkpoint's encoder
  plugins                                  list plugins and the components they register
  config [key=value ...]                   print the composed config
  multirun [--dir DIR] [key=a,b ...]       one train per combination of the swept values
                                           (hydra sweep syntax: a,b  range(0,3)); also
                                           train -m / train --multirun
  report RUN_DIR [RUN_DIR ...] [--out DIR] Markdown report with PNG plots of finished runs
                                           (a sweep directory stands for all its runs)
"""


def _errors() -> tuple[type[BaseException], ...]:
    from metacontrast.checkpoint import CheckpointError
    from metacontrast.config import ConfigError
    from metacontrast.data import DatasetError
    from metacontrast.plugins import PluginError, UnknownComponentError
    from metacontrast.records import ShapeError
    from metacontrast.report import ReportError
    from metacontrast.trainer import TrainingError

    return (CheckpointError, ConfigError, DatasetError, PluginError, UnknownComponentError,
            ShapeError, TrainingError, ReportError)


def compose_with_plugins(args: list[str]):
    """Compose once to read the ``plugins`` section, load the plugins it allows, then
    compose again with the config directories those plugins ship."""
    from metacontrast.builder import check_component_configs
    from metacontrast.config import compose_config
    from metacontrast.plugins import PluginManager
    from metacontrast.targets import check_targets

    plugin_args = [a for a in args if a.lstrip("+~").startswith("plugins.")]
    section = compose_config(plugin_args).plugins
    plugins = PluginManager(autoload=section.autoload, block=section.block)
    cfg = compose_config(args, searchpath=plugins.config_searchpath())
    check_targets(cfg, plugins.allowed_targets(), source="the config files and overrides")
    check_component_configs(cfg, plugins)
    return cfg, plugins


def _train(args: list[str]) -> int:
    if any(a in ("-m", "--multirun") for a in args):
        return _multirun([a for a in args if a not in ("-m", "--multirun")])
    from metacontrast.trainer import fit

    cfg, plugins = compose_with_plugins(args)
    results = fit(cfg, plugins)
    if results:
        print(json.dumps({"run_dir": results["run_dir"], "metrics": results["metrics"]}, indent=2))
    return 0


def _eval(args: list[str]) -> int:
    from metacontrast.config import ConfigError
    from metacontrast.trainer import evaluate_checkpoint

    paths = [a.split("=", 1)[1] for a in args if a.startswith("checkpoint=")]
    if len(paths) != 1:
        raise ConfigError("checkpoint: eval needs exactly one checkpoint=PATH")
    rest = [a for a in args if not a.startswith("checkpoint=")]
    results = evaluate_checkpoint(Path(paths[0]), rest)
    print(json.dumps({"run_dir": results["run_dir"], "metrics": results["metrics"]}, indent=2))
    return 0


def _plugins(args: list[str]) -> int:
    from metacontrast.plugins import PluginManager, describe

    print(describe(PluginManager()))
    return 0


def _config(args: list[str]) -> int:
    from metacontrast.config import to_yaml

    cfg, _ = compose_with_plugins(args)
    print(to_yaml(cfg), end="")
    return 0


def _option(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    """``--flag VALUE`` or ``--flag=VALUE`` taken out of ``args``."""
    rest, value = [], None
    it = iter(args)
    for a in it:
        if a == flag:
            value = next(it, None)
            if value is None:
                from metacontrast.config import ConfigError

                raise ConfigError(f"{flag}: needs a value")
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
    return value, rest


def _multirun(args: list[str]) -> int:
    from metacontrast.multirun import run_sweep

    sweep_dir, rest = _option(args, "--dir")
    return run_sweep(rest, Path(sweep_dir) if sweep_dir else None)


def _report(args: list[str]) -> int:
    from metacontrast.report import write_report

    out, paths = _option(args, "--out")
    if not paths:
        from metacontrast.report import ReportError

        raise ReportError("report: give at least one run directory")
    path = write_report([Path(p) for p in paths], Path(out) if out else None)
    print(path)
    return 0


COMMANDS = {"train": _train, "eval": _eval, "plugins": _plugins, "config": _config,
            "multirun": _multirun, "report": _report}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"metacontrast {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"metacontrast: error: unknown command {argv[0]!r}; commands: "
              f"{', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from metacontrast.signals import StopRequested

    try:
        return command(argv[1:])
    except StopRequested as stopped:
        import signal

        # already stopping: a second SIGTERM (torchrun tells the other ranks to stop once the
        # first one exits) must not turn this orderly exit into a kill
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"metacontrast: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except _errors() as err:
        print(f"metacontrast: error: {err}", file=sys.stderr)
        return 2
    finally:
        # leave the process group before exiting: an interpreter that exits with gloo's
        # threads still running can abort (SIGABRT) instead of returning its status
        from metacontrast.distributed import shutdown

        shutdown()


def entry_point() -> None:
    """Console script: ``main`` with torchrun's error recording, so a rank that fails with
    an unexpected exception has its traceback in torchrun's summary."""
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())


if __name__ == "__main__":
    entry_point()
