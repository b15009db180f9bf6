"""What a run says it is doing between the progress bar's runs: loading data, the
precision it chose and why, each evaluator of each evaluation with its time. Lines go to
stderr, from rank 0 only, when ``trainer.progress`` is on."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

import torch


class Announcer:
    """``say(text)``: one line to stderr when enabled. ``phase(text)``: a line when the
    phase starts and its duration when it ends."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"metacontrast: {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """On a terminal one line, completed when the phase ends; in a log two lines."""
        started = time.perf_counter()
        tty = self.enabled and sys.stderr.isatty()
        if tty:
            print(f"metacontrast: {text} ...", end="", file=sys.stderr, flush=True)
        else:
            self.say(f"{text} ...")
        try:
            yield
        finally:
            took = f"{time.perf_counter() - started:.1f} s"
            if tty:
                print(f" {took}", file=sys.stderr, flush=True)
            else:
                self.say(f"{text}: done in {took}")


SILENT = Announcer(False)


def precision_name(dtype: torch.dtype | None) -> str:
    """The autocast dtype as ``trainer.precision`` names it (``None``: fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def precision_reason(requested: str, device: torch.device, dtype: torch.dtype | None) -> str:
    """``bf16 (auto: this CPU computes bf16 natively)``: the precision and why it was chosen."""
    name = precision_name(dtype)
    if requested != "auto":
        return f"{name} (trainer.precision={requested})"
    if device.type == "cuda":
        why = ("this GPU supports bf16" if dtype == torch.bfloat16
               else "this GPU has no bf16; fp16 with loss scaling")
    elif dtype == torch.bfloat16:
        why = "this CPU computes bf16 natively, AVX-512 bf16"
    else:
        why = "this CPU has no native bf16, where bf16 is slower than fp32"
    return f"{name} (auto: {why}; set trainer.precision to choose)"
