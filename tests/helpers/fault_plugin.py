"""A plugin that injects faults and records what each step saw, for the reliability tests.

Loaded in subprocesses through ``METACONTRAST_PLUGINS=fault_plugin`` (with this folder
on ``PYTHONPATH``); each behaviour is switched on by an environment variable:

- ``FAULT_RAISE=R:S``   rank R raises ``RuntimeError`` at the end of step S.
- ``FAULT_KILL=R:S``    rank R kills itself with SIGKILL at the end of step S (first
                        attempt only: ``TORCHELASTIC_RESTART_COUNT`` is 0 or unset).
- ``FAULT_SIGNAL=R:S``  rank R sends itself SIGTERM at the end of step S.
- ``FAULT_RECORD=DIR``  append one JSON line per micro-batch to ``DIR/rank<r>.jsonl``: the
                        step, the sample indices and a digest of the augmentation
                        generator's state before the views were drawn.
- ``FAULT_NO_RESTORE=rng|optimizer``  resume without restoring the RNG streams or the
                        optimizer state (negative controls).
- ``FAULT_SLOW_REPORT=SECONDS``  ``json.dump`` (which writes torchrun's error files) pauses
                        halfway for that long, as a write on a machine too busy to finish it
                        promptly: a signal arriving then cuts the file in two.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from metacontrast import distributed, hookimpl, resume
from metacontrast.step import DefaultTrainStep


def _at(name: str) -> tuple[int, int] | None:
    value = os.environ.get(name)
    if not value:
        return None
    rank, step = value.split(":")
    return int(rank), int(step)


def _here(name: str, step: int) -> bool:
    where = _at(name)
    return where is not None and where == (distributed.current().rank, step)


@hookimpl
def metacontrast_on_step_end(state: Any) -> None:
    if _here("FAULT_RAISE", state.step):
        raise RuntimeError(f"injected failure on rank {distributed.current().rank} at step {state.step}")
    if _here("FAULT_KILL", state.step) and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    if _here("FAULT_SIGNAL", state.step):
        os.kill(os.getpid(), signal.SIGTERM)


class RecordingStep(DefaultTrainStep):
    def __init__(self, inner: DefaultTrainStep, out: Path) -> None:
        super().__init__(inner.view_generator, inner.episode_builder, inner.view_transforms,
                         memory=inner.memory, model=inner.model)
        self.out = out

    def __call__(self, batch: Any, ctx: Any) -> Any:
        digest = hashlib.sha1(ctx.generator.get_state().numpy().tobytes()).hexdigest()[:16]
        row = {"step": ctx.step, "index": batch.index.tolist(), "augment_state": digest}
        if ctx.step == 0:  # the weights every rank starts from
            weights = b"".join(p.detach().float().numpy().tobytes() for p in ctx.model.parameters())
            row["initial_weights"] = hashlib.sha1(weights).hexdigest()[:16]
        with open(self.out / f"rank{distributed.current().rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        return super().__call__(batch, ctx)


@hookimpl
def metacontrast_make_train_step(config: Any, components: Any) -> Any:
    out = os.environ.get("FAULT_RECORD")
    if not out:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    inner = DefaultTrainStep(components.view_generator, components.episode_builder, components.view_transforms,
                             memory=components.memory, model=components.model)
    return RecordingStep(inner, Path(out))


if os.environ.get("FAULT_NO_RESTORE") == "rng":
    resume.restore_rng_state = lambda state, generators: None
if os.environ.get("FAULT_NO_RESTORE") == "optimizer":
    import torch

    torch.optim.Optimizer.load_state_dict = lambda self, state_dict: None


if os.environ.get("FAULT_SLOW_REPORT"):
    import time

    _delay = float(os.environ["FAULT_SLOW_REPORT"])
    _dump = json.dump

    def _slow_dump(obj: Any, fp: Any, *args: Any, **kwargs: Any) -> None:
        """Write the first half, pause, write the rest: a write a signal can cut in two."""
        text = json.dumps(obj, *args, **kwargs)
        fp.write(text[: len(text) // 2])
        fp.flush()
        time.sleep(_delay)
        fp.write(text[len(text) // 2:])

    json.dump = _slow_dump
