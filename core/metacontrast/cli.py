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

options (before the command):
  --debug      show the traceback of an error (also METACONTRAST_DEBUG=1)

exit status: 0 done; 1 the operating system refused (a file or directory that cannot be
read or written, a full disk); 2 a mistake in the command or config, or a run directory
that another process holds or that holds a finished run; 130 / 143 stopped by SIGINT /
SIGTERM (training checkpoints first; the same command resumes).
"""
DEBUG_ENV = "METACONTRAST_DEBUG"


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


def _os_error(err: OSError) -> str:
    """One line for an operating-system error: the path and the cause."""
    where = f"{err.filename}: " if err.filename else ""
    cause = err.strerror or str(err) or type(err).__name__
    return f"{where}{cause}"


def main(argv: list[str] | None = None) -> int:
    import os

    from metacontrast.threads import prepare_environment

    prepare_environment()  # before torch is first imported
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
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
    from metacontrast.signals import StopRequested, Terminated, terminate_as_exception

    try:
        with terminate_as_exception():
            return command(argv[1:])
    except Terminated:
        if debug:
            raise
        print("metacontrast: stopped by SIGTERM; nothing half-written is left behind", file=sys.stderr)
        return 143
    except StopRequested as stopped:
        import signal

        # already stopping: a second SIGTERM (torchrun tells the other ranks to stop once the
        # first one exits) must not turn this orderly exit into a kill
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"metacontrast: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except _errors() as err:
        if debug:
            raise
        print(f"metacontrast: error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))
    except OSError as err:
        if debug:
            raise
        print(f"metacontrast: error: {_os_error(err)} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("metacontrast: interrupted (SIGINT); nothing half-written is left behind", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, or a peer rank's failure seen from here
        if debug:
            raise
        report_failure(err)
        return 1
    finally:
        # leave the process group before exiting: an interpreter that exits with gloo's
        # threads still running can abort (SIGABRT) instead of returning its status
        from metacontrast.distributed import shutdown

        shutdown()


def report_failure(err: BaseException) -> None:
    """Report an unexpected exception: its traceback to stderr and, under torchrun, into the
    error file torchrun reads (``TORCHELASTIC_ERROR_FILE``, in torchrun's format) so that it
    heads torchrun's summary.

    It runs before this process leaves the process group (``main``'s ``finally``): a rank
    that fails has reported by the time its peers notice it is gone and fail in turn, and
    torchrun, which stops the other workers with SIGTERM as soon as one has ended, cannot
    cut the first rank's report short. SIGTERM is held back while reporting, and the error
    file is written whole or not at all (a temporary file renamed into place), so torchrun
    never reads half a file."""
    import os
    import signal
    import tempfile
    import time
    import traceback

    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        text = "".join(traceback.format_exception(err))
        sys.stderr.write(text)
        sys.stderr.flush()
        path = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if path:
            data = {"message": {"message": f"{type(err).__name__}: {err}",
                                "extraInfo": {"py_callstack": text, "timestamp": str(int(time.time()))}}}
            fd, tmp = tempfile.mkstemp(prefix=".error.", dir=os.path.dirname(path) or ".")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def entry_point() -> None:
    """Console script: ``main``, with Python's fault handler on (a crash in native code
    prints every thread's stack) and unexpected exceptions reported for torchrun
    (``report_failure``)."""
    import faulthandler

    faulthandler.enable(all_threads=True)
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
