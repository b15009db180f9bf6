"""Command line: ``metacontrast train|eval|export|plugins|config|multirun|report``.

Every command is an ``argparse`` sub-command with its own ``--help``; hydra overrides
(``key=value``, ``+key=value``, ``~key``) are its positional arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metacontrast import __version__

DEBUG_ENV = "METACONTRAST_DEBUG"

EXIT_CODES = """exit status:
  0    done
  1    the operating system refused (a file or directory that cannot be read or
       written, a full disk)
  2    a mistake in the command or config, or a run directory that another process
       holds or that holds a finished run
  130  stopped by SIGINT (training checkpoints first; the same command resumes)
  143  stopped by SIGTERM (likewise)"""

DESCRIPTION = """Contrastive self-supervised learning and meta-learning as one thing: every training
batch is an episode. `metacontrast <command> --help` describes each command."""

EXAMPLES = {
    "train": """examples:
  metacontrast train                                   the main job (digits, SimCLR, Conv-4)
  metacontrast train method=protonet trainer.max_steps=20
  metacontrast train experiment=cifar10_simclr_fast data.root=DIR
  metacontrast train trainer.run_dir=runs/mine         resume it with the same command
  metacontrast train -m method=simclr,byol trainer.seed=0,1   one run per combination

The options of every config group (what goes after group=): metacontrast plugins.
The composed config, without training: metacontrast config [key=value ...].""",
    "eval": """examples:
  metacontrast eval checkpoint=runs/X/checkpoints/step-000000100.pt
  metacontrast eval checkpoint=runs/X                  a run directory: its newest checkpoint
  metacontrast eval checkpoint=PATH eval=[linear] eval.linear.epochs=200""",
    "export": """formats:
  torchvision  a state_dict for the torchvision model of the same architecture
  timm         a state_dict for timm.create_model(<name>, num_classes=0)
  state_dict   the encoder module as metacontrast builds it (any encoder)
  onnx         an ONNX graph with a dynamic batch dimension, checked with onnxruntime
OUT ending in .safetensors writes the state_dict formats as safetensors.
Beside OUT, OUT.json says how to build the model (stem changes, the classifier's
replacement) and how to normalise its input; metacontrast.load_encoder(OUT) does it
(onnxruntime.InferenceSession(OUT) for onnx). Both are written or neither. An existing
OUT is refused unless overwrite=true; the checkpoint being exported and a run's
checkpoints are never written over.

examples:
  metacontrast export checkpoint=runs/X/checkpoints/step-000000100.pt format=torchvision out=r18.pt
  metacontrast export checkpoint=runs/X format=torchvision out=r18.safetensors
  metacontrast export checkpoint=runs/X format=onnx out=encoder.onnx
  python -c 'import metacontrast; print(metacontrast.load_encoder("r18.pt"))'""",
    "plugins": """Lists each installed plugin, the components it registers, and the options of
every config group (what to type after group=).""",
    "config": """examples:
  metacontrast config method=moco_v2 encoder=resnet18_cifar""",
    "multirun": """examples:
  metacontrast multirun --dir sweeps/seeds method=simclr,byol trainer.seed=range(0,3)
  (running it again skips finished jobs and resumes the others)""",
    "report": """examples:
  metacontrast report runs/A runs/B --out reports/ab
  metacontrast report sweeps/seeds           (a sweep directory stands for all its runs)""",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised (exit 2 through ``main``) instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class UsageError(ValueError):
    """A mistake in the command line itself (unknown command or flag, missing argument)."""


def _add(sub, name: str, help_text: str, *, overrides: str | None = None) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text,
                            epilog=EXAMPLES.get(name, "") + "\n\n" + EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    if overrides is not None:
        parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metacontrast", description=DESCRIPTION, epilog=EXIT_CODES,
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (also {DEBUG_ENV}=1)")
    parser.add_argument("--version", action="version", version=f"metacontrast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    train = _add(sub, "train", "pre-train, then evaluate",
                 overrides="hydra overrides: group=option (data=cifar10 encoder=resnet18) or key=value")
    train.add_argument("-m", "--multirun", action="store_true",
                       help="one run per combination of the swept values (as `metacontrast multirun`)")
    train.add_argument("--dir", help="with -m: the sweep directory")
    _add(sub, "eval", "evaluate a checkpoint's encoder",
         overrides="checkpoint=PATH (required: a file, or a run directory: its newest checkpoint), "
                   "then overrides of the stored config")
    _add(sub, "export", "write a checkpoint's encoder as a torchvision, timm or plain state_dict, or ONNX",
         overrides="checkpoint=PATH (a file, or a run directory: its last checkpoint) "
                   "format=torchvision|timm|state_dict|onnx out=FILE [overwrite=true]")
    _add(sub, "plugins", "list plugins, their components and the config options")
    _add(sub, "config", "print the composed config", overrides="hydra overrides, as for train")
    multirun = _add(sub, "multirun", "one train per combination of the swept values",
                    overrides="hydra sweep syntax: key=a,b  key=range(0,3)")
    multirun.add_argument("--dir", help="the sweep directory (default multirun/<time>)")
    report = _add(sub, "report", "a Markdown report with PNG plots of finished runs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories (a sweep directory stands for all its runs)")
    report.add_argument("--out", help="where to write the report (default: beside the runs)")
    help_cmd = sub.add_parser("help", help="this help, or a command's: help <command>")
    help_cmd.add_argument("topic", nargs="?", metavar="<command>")
    return parser


def _errors() -> tuple[type[BaseException], ...]:
    from metacontrast.checkpoint import CheckpointError
    from metacontrast.config import ConfigError
    from metacontrast.data import DatasetError
    from metacontrast.plugins import PluginError, UnknownComponentError
    from metacontrast.records import ShapeError
    from metacontrast.report import ReportError
    from metacontrast.trainer import TrainingError

    return (CheckpointError, ConfigError, DatasetError, PluginError, UnknownComponentError,
            ShapeError, TrainingError, ReportError, UsageError)


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


def _check_overrides(args: list[str], command: str) -> None:
    for a in args:
        if "=" not in a and not a.startswith("~"):
            raise UsageError(f"metacontrast {command}: {a!r} is not an override (key=value, "
                             f"+key=value or ~key; see metacontrast {command} --help)")
    _refuse_shell_expanded(args)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _refuse_shell_expanded(args: list[str]) -> None:
    """A brace pattern left unquoted is expanded by the shell into several overrides of one
    key, of which hydra would keep only the last: refuse it, showing the quoting."""
    import re

    values: dict[str, list[str]] = {}
    for a in args:
        key, _, value = a.partition("=")
        values.setdefault(key.lstrip("+"), []).append(value)
    for key, given in values.items():
        shapes = {re.sub(r"\d+", "#", v) for v in given}
        shape = next(iter(shapes))
        # names differing only in their numbers (train-000001.tar); not plain numbers, which
        # a later override may deliberately replace
        if (len(set(given)) > 1 and len(shapes) == 1 and "#" in shape and shape.strip("#.-")
                and not all(_is_number(v) for v in given)):
            raise UsageError(f"{key}: given {len(given)} times ({given[0]} ... {given[-1]}), as the shell "
                             f"expands an unquoted brace pattern; only the last would count. Quote the "
                             f"pattern for the shell and for hydra: \"{key}='PATTERN'\", e.g. "
                             f"\"{key}='train-{{000000..000099}}.tar'\"")


def _key_values(args: list[str], command: str, keys: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """``key=value`` arguments named in ``keys`` taken out of ``args``; the rest returned."""
    found: dict[str, str] = {}
    rest = []
    for a in args:
        key, _, value = a.partition("=")
        if key in keys:
            if key in found:
                raise UsageError(f"metacontrast {command}: {key} given twice")
            found[key] = value
        else:
            rest.append(a)
    return found, rest


def _train(ns: argparse.Namespace) -> int:
    if ns.multirun:
        return _multirun(ns)
    if ns.dir:
        raise UsageError("metacontrast train: --dir goes with -m (a sweep); a run's directory is "
                         "trainer.run_dir=DIR")
    from metacontrast.trainer import fit

    cfg, plugins = compose_with_plugins(ns.overrides)
    results = fit(cfg, plugins)
    if "metrics" in results:  # rank 0
        from metacontrast.summary import print_summary

        print_summary(results)
    return 0


def _eval(ns: argparse.Namespace) -> int:
    from metacontrast.trainer import evaluate_checkpoint

    found, rest = _key_values(ns.overrides, "eval", ("checkpoint",))
    if not found.get("checkpoint"):
        raise UsageError("metacontrast eval: needs checkpoint=PATH (see metacontrast eval --help)")
    results = evaluate_checkpoint(Path(found["checkpoint"]), rest)
    from metacontrast.summary import print_summary

    print_summary(results)
    return 0


def _export(ns: argparse.Namespace) -> int:
    from metacontrast.export import FORMATS, write_export

    found, rest = _key_values(ns.overrides, "export", ("checkpoint", "format", "out", "overwrite"))
    if rest:
        raise UsageError(f"metacontrast export: unknown argument {rest[0]!r}; it takes checkpoint=PATH "
                         f"format={'|'.join(FORMATS)} out=FILE [overwrite=true]")
    overwrite = found.get("overwrite", "false").lower()
    if overwrite not in ("true", "false"):
        raise UsageError(f"metacontrast export: overwrite={found['overwrite']!r}; it is true or false")
    missing = [k for k in ("checkpoint", "format", "out") if not found.get(k)]
    if missing:
        raise UsageError(f"metacontrast export: needs {' '.join(k + '=...' for k in missing)} "
                         f"(see metacontrast export --help)")
    written = write_export(Path(found["checkpoint"]), found["format"], Path(found["out"]),
                           overwrite=overwrite == "true")
    print(written.describe())
    return 0


def _plugins(ns: argparse.Namespace) -> int:
    from metacontrast.plugins import PluginManager, describe

    print(describe(PluginManager()))
    return 0


def _config(ns: argparse.Namespace) -> int:
    from metacontrast.config import to_yaml

    cfg, _ = compose_with_plugins(ns.overrides)
    print(to_yaml(cfg), end="")
    return 0


def _multirun(ns: argparse.Namespace) -> int:
    from metacontrast.multirun import run_sweep

    return run_sweep(list(ns.overrides), Path(ns.dir) if ns.dir else None)


def _report(ns: argparse.Namespace) -> int:
    from metacontrast.report import write_report

    path = write_report([Path(p) for p in ns.run_dirs], Path(ns.out) if ns.out else None)
    print(path)
    return 0


COMMANDS = {"train": _train, "eval": _eval, "export": _export, "plugins": _plugins, "config": _config,
            "multirun": _multirun, "report": _report}


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed command line, or the exit status when parsing already answered (help)."""
    try:
        ns = parser.parse_args(argv)
    except SystemExit as done:  # --help and --version print and exit 0
        return int(done.code or 0)
    if ns.command is None:
        parser.print_help(sys.stderr)
        return 2
    if ns.command == "help":
        if ns.topic and ns.topic not in COMMANDS:
            raise UsageError(f"metacontrast help: unknown command {ns.topic!r}; "
                             f"commands: {', '.join(COMMANDS)}")
        return _parse(parser, [ns.topic, "--help"] if ns.topic else ["--help"])
    if hasattr(ns, "overrides"):
        _check_overrides(ns.overrides, ns.command)
    return ns


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
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in argv[:1]
    try:
        parsed = _parse(build_parser(), argv)
    except UsageError as err:
        print(f"{err}", file=sys.stderr)
        return 2
    if isinstance(parsed, int):
        return parsed
    command = COMMANDS[parsed.command]
    from metacontrast.signals import StopRequested, Terminated, terminate_as_exception

    try:
        with terminate_as_exception():
            return command(parsed)
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
