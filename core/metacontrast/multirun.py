"""``metacontrast multirun key=a,b key2=range(0,3) ...``: hydra's sweep syntax over runs.

The overrides are parsed by hydra's override parser; every sweep (``a,b``, ``range``,
``choice``) multiplies the jobs (the cartesian product, in the order given, as hydra's
basic sweeper does). Each job is one ``metacontrast train`` in its own process, writing
``<sweep_dir>/<NNN>_<values>/``; ``<sweep_dir>/multirun.yaml`` lists the jobs, their
overrides and how they ended. Running the same command with the same
``--dir`` again skips finished jobs (those with ``results.json``) and resumes the others
from their last checkpoint. ``metacontrast report <sweep_dir>`` summarises the sweep.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from metacontrast.config import ConfigError


def expand_sweep(args: list[str]) -> list[list[str]]:
    """The overrides of every job: ``['method=simclr,byol', 'x=1']`` ->
    ``[['method=simclr', 'x=1'], ['method=byol', 'x=1']]``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(args))
    except Exception as err:
        raise ConfigError(f"multirun: {str(err).splitlines()[0]}") from None
    choices: list[list[str]] = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            try:
                values = list(override.sweep_string_iterator())
            except Exception as err:
                raise ConfigError(f"{key}: this sweep cannot be expanded here ({str(err).splitlines()[0]}); "
                                  f"list the values (a,b,c) or use range()") from None
            choices.append([f"{key}={v}" for v in values])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


def job_name(index: int, job: list[str], swept: set[str]) -> str:
    """``003_method-byol_trainer.seed-1``: the index and the swept values, safe as a file
    name and as a hydra override value (no ``=``)."""
    parts = [o.replace("=", "-", 1) for o in job if o.split("=", 1)[0] in swept]
    text = "_".join(parts) if parts else "job"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return f"{index:03d}_{safe}"[:120]


def run_sweep(args: list[str], sweep_dir: Path | None = None) -> int:
    """Run every job of the sweep in turn; returns 0 when all finished, 1 otherwise."""
    if any(a.startswith("trainer.run_dir=") for a in args):
        raise ConfigError("trainer.run_dir: a multirun sets each job's run directory; give --dir instead")
    from metacontrast.api import compose

    jobs = expand_sweep(args)
    for job in jobs:  # every job's config is checked (hydra settings refused) before the first runs
        try:
            compose(job)
        except ConfigError as err:
            raise ConfigError(f"{err} (in the job {' '.join(job)})") from None
    swept = {o.split("=", 1)[0] for o in args if len(expand_sweep([o])) > 1}
    sweep_dir = Path(sweep_dir) if sweep_dir else Path("multirun") / time.strftime("%Y%m%d-%H%M%S")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"command": ["metacontrast", "multirun", *args], "jobs": []}
    failed = 0
    for index, job in enumerate(jobs):
        run_dir = sweep_dir / job_name(index, job, swept)
        entry: dict[str, Any] = {"index": index, "overrides": job, "run_dir": str(run_dir)}
        if (run_dir / "results.json").is_file():
            entry["status"] = "done (earlier)"
        else:
            print(f"[multirun] job {index + 1}/{len(jobs)}: {' '.join(job)}", file=sys.stderr, flush=True)
            command = [sys.executable, "-m", "metacontrast.cli", "train", *job, f"trainer.run_dir={run_dir}"]
            started = time.perf_counter()
            code = subprocess.call(command, env=os.environ.copy())
            entry["seconds"] = round(time.perf_counter() - started, 1)
            entry["status"] = "done" if code == 0 else f"failed (exit {code})"
            failed += code != 0
        record["jobs"].append(entry)
        (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    print(f"[multirun] {len(jobs) - failed}/{len(jobs)} jobs finished; report with: "
          f"metacontrast report {sweep_dir}", file=sys.stderr)
    return 1 if failed else 0
