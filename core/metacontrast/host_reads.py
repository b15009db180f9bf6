"""Finding the operations that make the host wait for the device, on any device.

On a GPU a train step should queue work and never wait for it: every ``.item()``,
``nonzero``, boolean-mask index or tensor built from Python data stalls the host until the
device catches up. CUDA's sync debug mode reports these only on a GPU; ``HostReads``
recognises the same operations at the dispatcher, so a CPU-only machine (and its test
suite) can check that a code path would run without waiting on a GPU.

Counted (``ATEN_READS``): reading a value to the host (``.item()``, ``float(t)``,
``bool(t)`` go through ``_local_scalar_dense``; ``tolist`` of a CPU tensor bypasses the
dispatcher and is not seen), the operations whose output size
depends on the data (``nonzero``, ``masked_select``, ``unique``, ``bincount``,
``repeat_interleave`` without ``output_size``, indexing with a boolean mask), value
comparisons that return a Python bool (``equal``, ``is_nonzero``), the error checks of
``torch.linalg`` (``cholesky``, ``inv``, ``solve``: use the ``_ex`` forms), and building a tensor
from Python numbers (``lift_fresh``: on a GPU, a pageable host-to-device copy).
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

ATEN_READS = {
    aten._local_scalar_dense.default: "read to host",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.bincount.default: "bincount",
    aten.repeat_interleave.Tensor: "repeat_interleave",
    aten.equal.default: "equal",
    aten.is_nonzero.default: "is_nonzero",
    aten._linalg_check_errors.default: "linalg error check",
    aten.lift_fresh.default: "tensor from Python data",
    aten.lift_fresh_copy.default: "tensor from Python data",
}
for _name in ("_unique", "_unique2", "unique_dim", "unique_consecutive"):
    for _overload in getattr(aten, _name).overloads():
        ATEN_READS[getattr(getattr(aten, _name), _overload)] = "unique"

_TORCH_DIR = Path(torch.__file__).resolve().parent
_OPTIM_DIR = _TORCH_DIR / "optim"


def _bool_index(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether an ``index``/``index_put`` call selects with a boolean mask."""
    if func not in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                    aten._index_put_impl_.default):
        return False
    indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def _caller() -> str | None:
    """``file.py:line`` of the innermost frame outside torch itself; ``None`` for an
    operation of ``torch.optim``: its optimizers keep their step counters on the host
    unless ``capturable`` or ``fused``, so their reads do not wait for a device."""
    in_optim = False
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        in_optim = in_optim or _OPTIM_DIR in path.parents
        if _TORCH_DIR not in path.parents and path != Path(__file__).resolve():
            return None if in_optim else f"{path.name}:{frame.lineno}"
    return "?"


class HostReads(TorchDispatchMode):
    """Context manager counting host-waiting operations by ``file:line`` of the caller.

    ``reads``: ``Counter`` of ``"file.py:line (what)"``; ``total`` their sum.

    >>> with HostReads() as reads:
    ...     _ = torch.arange(4).nonzero()
    >>> reads.total
    1
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.reads.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        what = ATEN_READS.get(func)
        if what is None and _bool_index(func, args, kwargs):
            what = "boolean-mask index"
        caller = _caller() if what is not None else None
        if caller is not None:
            self.reads[f"{caller} ({what})"] += 1
        return func(*args, **kwargs)
