"""The encoder as an ONNX graph (``metacontrast export format=onnx``).

The online encoder, in eval mode, is exported with torch's ONNX exporter (``torch.export``
underneath) with a dynamic batch dimension: input ``images`` float32 ``(batch, C, H, W)``
(normalised as the encoder was trained), output ``features`` float32 ``(batch, D)``.
Before anything is written the graph is run with onnxruntime on random images at two
batch sizes and its features compared with the encoder's (``ONNX_TOLERANCE``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
from torch import nn

ONNX_OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "features"
# largest difference allowed between onnxruntime's and torch's features, relative to the
# largest feature magnitude (and at least this much in absolute terms)
ONNX_TOLERANCE = 1e-4
CHECK_BATCHES = (4, 1)
PROTOBUF_LIMIT = 2**31 - 1  # one ONNX file holds at most 2 GB


class OnnxExportError(ValueError):
    """The encoder cannot be exported to ONNX, or the graph does not give its features."""


def require_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or one line naming what to install."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxExportError(f"format=onnx needs {', '.join(missing)}: pip install onnx onnxscript "
                              f"onnxruntime")
    import onnx
    import onnxruntime

    return onnx, onnxruntime


def onnx_bytes(encoder: nn.Module, input_shape: tuple[int, int, int], name: str) -> bytes:
    """The serialised ONNX model of ``encoder`` (eval mode) for inputs ``(batch, *input_shape)``."""
    require_onnx()
    example = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(encoder.eval(), (example,), dynamo=True, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET,
                                        external_data=False)
    except Exception as err:
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise OnnxExportError(f"format=onnx: encoder {name!r} cannot be exported to ONNX "
                              f"({type(err).__name__}: {first})") from None
    if program is None:
        raise OnnxExportError(f"format=onnx: torch's exporter gave no program for encoder {name!r}")
    proto = program.model_proto
    if proto.ByteSize() > PROTOBUF_LIMIT:
        raise OnnxExportError(f"format=onnx: encoder {name!r} is larger than 2 GB, the limit of one ONNX "
                              f"file; export format=state_dict instead")
    return proto.SerializeToString()


def check_onnx(data: bytes, encoder: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Run the graph with onnxruntime (CPU) on random images at each of ``CHECK_BATCHES``
    and compare with ``encoder``'s features; returns what was checked, for ``OUT.json``."""
    _, onnxruntime = require_onnx()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    largest = 0.0
    for batch in CHECK_BATCHES:
        images = torch.rand(batch, *input_shape, generator=generator)
        with torch.no_grad():
            expected = encoder(images).flatten(1)
        got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])
        if tuple(got.shape) != tuple(expected.shape):
            raise OnnxExportError(f"format=onnx: onnxruntime gives features of shape {tuple(got.shape)} for "
                                  f"a batch of {batch}, the encoder {tuple(expected.shape)}")
        diff = float((got - expected).abs().max())
        allowed = ONNX_TOLERANCE * max(1.0, float(expected.abs().max()))
        if diff > allowed:
            raise OnnxExportError(f"format=onnx: onnxruntime's features differ from the encoder's by "
                                  f"{diff:.3g} (allowed {allowed:.3g}) for a batch of {batch}")
        largest = max(largest, diff)
    return {"max_abs_diff": largest, "images": sum(CHECK_BATCHES), "batch_sizes": list(CHECK_BATCHES),
            "tolerance": f"{ONNX_TOLERANCE:g} x max(1, largest feature)",
            "runtime": f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"}


def onnx_description(input_shape: tuple[int, int, int], out_dim: int) -> dict[str, Any]:
    """The graph's input and output, for ``OUT.json``."""
    return {"opset": ONNX_OPSET,
            "graph_input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", *input_shape]},
            "graph_output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", out_dim]}}


def onnx_snippet(path: str, channels: int, size: int) -> str:
    return "\n".join([
        "import numpy as np",
        "import onnxruntime",
        f"session = onnxruntime.InferenceSession({path!r}, providers=['CPUExecutionProvider'])",
        f"images = np.zeros((8, {channels}, {size}, {size}), dtype=np.float32)  # normalised, see 'input'",
        f"features = session.run([{OUTPUT_NAME!r}], {{{INPUT_NAME!r}: images}})[0]  # (8, out_dim)",
    ])
