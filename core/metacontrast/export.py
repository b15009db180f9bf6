"""The pre-trained encoder out of a checkpoint, as another library's own model.

``write_export(checkpoint, format, out)`` writes the online encoder's weights (never the
head, the teacher or the memory) to ``out`` as a plain ``state_dict``, and ``out.json``
beside it: the model to build (``torchvision.models.resnet18``, ``timm.create_model``
name, or metacontrast's own encoder config), the module replacements to make before
loading (a CIFAR stem, the classifier replaced by the identity), and the input the
encoder was trained on (channels, size, normalisation). Before anything is written the
library's model is built from that description, loaded with ``strict=True`` and checked
to give the encoder's features on random images.

The pair is written whole or not at all: both files go to temporary names first and are
renamed into place together. Export never writes over its own source, a run's
checkpoints, or (unless ``overwrite=True``) any file that exists.

``out`` ending in ``.safetensors`` holds the same tensors in safetensors' format
(``safetensors.torch.load_file``). ``format=onnx`` writes the encoder as an ONNX graph
instead (``metacontrast.export_onnx``), checked with onnxruntime the same way.

``load_encoder(out)`` does the same building and returns the model in eval mode.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from metacontrast.checkpoint import (
    CHECKPOINT_PATTERN,
    CheckpointError,
    CheckpointWriteError,
    latest_checkpoint,
    load_safe,
    sync_directory,
    write_temporary,
)
from metacontrast.config import ConfigError

FORMATS = ("torchvision", "timm", "state_dict", "onnx")
STATE_FORMATS = FORMATS[:3]  # a state_dict for a model; onnx is a graph with its weights
SAFETENSORS_SUFFIX = ".safetensors"
EXPORT_VERSION = 1
_REPLACEMENTS = {"Identity": nn.Identity, "Conv2d": nn.Conv2d}


class ExportError(CheckpointError):
    """The export cannot be written or read back; the message names the file or setting."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_destination(out: Path, checkpoint: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that would lose something: the checkpoint being exported, a run's
    checkpoint, a directory, or (without ``overwrite``) any file that exists."""
    meta = _metadata_path(out)
    for target in (out, meta):
        if _same_file(target, checkpoint):
            raise ExportError(f"out={out}: that is the checkpoint being exported; export never writes "
                              f"over its source: give another out=")
    if CHECKPOINT_PATTERN.match(out.name) and out.parent.name == "checkpoints":
        raise ExportError(f"out={out}: a run's checkpoints/ directory holds its training checkpoints; "
                          f"export never writes there: give another out=")
    for target in (out, meta):
        if target.is_dir():
            raise ExportError(f"out={out}: {target} is a directory; give the file to write, e.g. "
                              f"out={out / 'encoder.pt'}")
    existing = [p for p in (out, meta) if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"out={out}: {existing[0]} exists; export never writes over a file unless asked: "
                          f"give another out=, or add overwrite=true to replace it")


def _write_pair(weights: dict[str, Any] | bytes, meta_text: str, out: Path) -> None:
    """``out`` (the weights: a state dict for ``torch.save``, or bytes already serialised)
    and ``out.json`` whole or not at all: both written to temporary files first (where a
    full disk fails), then renamed into place."""
    meta_path = _metadata_path(out)
    weights_tmp = write_temporary(weights, out, what="encoder weights")
    text_tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{meta_path.name}.", suffix=".tmp", dir=out.parent)
        text_tmp = Path(name)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(meta_text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(weights_tmp, out)
        try:
            os.replace(text_tmp, meta_path)
        except OSError:
            out.unlink(missing_ok=True)
            raise
        sync_directory(out.parent)
    except OSError as err:
        raise CheckpointWriteError(f"could not write the export {out} and {meta_path.name}: "
                                   f"{err.strerror or err}; nothing of it was left") from err
    finally:
        weights_tmp.unlink(missing_ok=True)
        if text_tmp is not None:
            text_tmp.unlink(missing_ok=True)


@attrs.frozen
class ExportedEncoder:
    weights: Path
    metadata: dict[str, Any]

    def describe(self) -> str:
        m = self.metadata
        checked = ("onnxruntime runs the graph with the encoder's features" if m["format"] == "onnx"
                   else f"the {m['library']} model gives the encoder's features")
        lines = [f"wrote {self.weights} ({m['format']}, {m['out_dim']}-d features) and {self.weights}.json",
                 f"checked: {checked} "
                 f"(largest difference {m['check']['max_abs_diff']:.2g} on random images)",
                 "load it:", *(f"    {line}" for line in m["load"].splitlines())]
        return "\n".join(lines)


def _metadata_path(weights: Path) -> Path:
    return weights.with_name(weights.name + ".json")


def _load_snippet(meta: dict[str, Any], weights: Path) -> str:
    if meta["library"] == "metacontrast":
        return f"import metacontrast\nencoder = metacontrast.load_encoder({str(weights)!r})"
    lines = ["import torch"]
    if meta["library"] == "torchvision":
        lines += ["import torchvision",
                  f"model = torchvision.models.{meta['builder']}(weights=None{_kwargs_text(meta['kwargs'])})"]
    else:
        lines += ["import timm",
                  f"model = timm.create_model({meta['builder']!r}, pretrained=False, num_classes=0"
                  f"{_kwargs_text(meta['kwargs'])})"]
    for path, spec in meta["replace"].items():
        named = (f"{k}={v!r}" for k, v in spec.get("kwargs", {}).items())
        args = ", ".join([*map(repr, spec.get("args", [])), *named])
        lines.append(f"model.{_attribute_path(path)} = torch.nn.{spec['type']}({args})")
    if meta.get("weights") == "safetensors":
        imports = sum(1 for line in lines if line.startswith("import "))
        lines.insert(imports, "from safetensors.torch import load_file")
        lines.append(f"model.load_state_dict(load_file({str(weights)!r}), strict=True)")
    else:
        lines.append(f"model.load_state_dict(torch.load({str(weights)!r}, weights_only=True), strict=True)")
    lines.append("model.eval()  # or: metacontrast.load_encoder(path) does all of this")
    return "\n".join(lines)


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return "".join(f", {k}={v!r}" for k, v in kwargs.items())


def _attribute_path(path: str) -> str:
    """``classifier.1`` -> ``classifier[1]`` (valid Python for the snippet)."""
    parts = path.split(".")
    return parts[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts[1:])


def _replace_modules(model: nn.Module, replace: dict[str, dict[str, Any]]) -> None:
    for path, spec in replace.items():
        kind = spec.get("type")
        if kind not in _REPLACEMENTS:
            raise ExportError(f"replace.{path}: unknown module type {kind!r} "
                              f"(known: {', '.join(_REPLACEMENTS)})")
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        module = _REPLACEMENTS[kind](*spec.get("args", []), **spec.get("kwargs", {}))
        if name.isdigit():
            parent[int(name)] = module  # type: ignore[index]
        else:
            setattr(parent, name, module)


def build_library_model(meta: dict[str, Any]) -> nn.Module:
    """The library's own model as ``meta`` describes it, with untrained weights."""
    library, builder, kwargs = meta["library"], meta["builder"], dict(meta.get("kwargs", {}))
    if library == "torchvision":
        import torchvision

        factory = getattr(torchvision.models, builder, None)
        if factory is None:
            raise ExportError(f"torchvision.models has no model {builder!r}")
        model = factory(weights=None, **kwargs)
    elif library == "timm":
        try:
            import timm
        except ImportError:
            raise ExportError("format timm needs the timm package: pip install timm "
                              "(or pip install -e plugins/timm)") from None
        model = timm.create_model(builder, pretrained=False, num_classes=0, **kwargs)
    else:
        raise ExportError(f"unknown library {library!r} (known: torchvision, timm)")
    _replace_modules(model, meta.get("replace", {}))
    return model


def _checkpoint_encoder(checkpoint: Path) -> tuple[nn.Module, dict[str, Any], Any]:
    """The checkpoint's online encoder with its trained weights, the build facts and the config."""
    from metacontrast.config import from_yaml

    payload = load_safe(checkpoint)
    cfg = from_yaml(payload["config"])
    facts = payload.get("build_facts")
    if not facts:
        kind = "a table's encoder" if str(cfg.data.name) == "tabular" else "this checkpoint"
        raise ExportError(f"checkpoint {checkpoint}: {kind} cannot be exported (no build facts stored: "
                          f"export covers image encoders, from checkpoints written by metacontrast 0.1.0 "
                          f"or later)")
    encoder = build_encoder_from(cfg, facts)
    weights = {k.removeprefix("encoder."): v for k, v in payload["model"].items() if k.startswith("encoder.")}
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ExportError(f"checkpoint {checkpoint}: its encoder weights do not fit encoder "
                          f"{cfg.encoder.name!r}: {str(err).splitlines()[0]}") from None
    source = {"checkpoint": str(checkpoint), "step": int(payload["position"]["step"]),
              "method": str(cfg.get("method_name", "")), "dataset": str(cfg.data.name)}
    return encoder.eval(), {"facts": facts, "source": source}, cfg


def build_encoder_from(cfg: Any, facts: dict[str, Any]) -> nn.Module:
    """metacontrast's encoder of ``cfg`` (untrained) for images described by ``facts``."""
    from metacontrast.builder import build_encoder
    from metacontrast.interfaces import BuildContext
    from metacontrast.plugins import PluginManager

    plugins = PluginManager(autoload=bool(cfg.plugins.autoload), block=list(cfg.plugins.block))
    context = BuildContext(in_channels=int(facts["in_channels"]), image_size=int(facts["image_size"]),
                           mean=tuple(facts["mean"]), std=tuple(facts["std"]),
                           modality=str(facts.get("modality", "image")),
                           allowed_targets=plugins.allowed_targets(), plugins=plugins)
    return build_encoder(cfg, plugins, context)


def _check_same_features(encoder: nn.Module, model: nn.Module, facts: dict[str, Any],
                         repeat_grey: bool) -> float:
    """Largest absolute difference of the two models' features on 4 random images."""
    generator = torch.Generator().manual_seed(0)
    size, channels = int(facts["image_size"]), int(facts["in_channels"])
    images = torch.rand(4, channels, size, size, generator=generator)
    with torch.no_grad():
        expected = encoder(images).flatten(1)
        given = images.expand(-1, 3, -1, -1) if repeat_grey and channels == 1 else images
        got = model(given).flatten(1)
    if got.shape != expected.shape:
        raise ExportError(f"the exported model gives features of shape {tuple(got.shape)}, the encoder "
                          f"{tuple(expected.shape)}")
    diff = float((got - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if diff > 1e-4 * max(1.0, scale):
        raise ExportError(f"the exported model's features differ from the encoder's by {diff:.3g}: "
                          f"the export description is wrong for this encoder")
    return diff


def _weights_encoding(fmt: str, out: Path) -> str:
    """How the weights file is written: ``torch`` (``torch.save``), ``safetensors`` (``out``
    ends in ``.safetensors``) or ``onnx`` (``format=onnx``)."""
    if fmt == "onnx":
        if out.suffix == SAFETENSORS_SUFFIX:
            raise ConfigError(f"out={out}: format=onnx writes an ONNX graph, not safetensors; name the file "
                              f"{out.with_suffix('.onnx').name}")
        return "onnx"
    return "safetensors" if out.suffix == SAFETENSORS_SUFFIX else "torch"


def _serialise(state: dict[str, Any], encoding: str) -> dict[str, Any] | bytes:
    if encoding == "torch":
        return state
    try:
        from safetensors.torch import save
    except ImportError:
        raise ExportError("out=*.safetensors needs the safetensors package: "
                          "pip install safetensors") from None
    return save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"})


def write_export(checkpoint: Path, fmt: str, out: Path, overwrite: bool = False) -> ExportedEncoder:
    """Write the encoder of ``checkpoint`` (a file, or a run directory: its last one) to
    ``out`` (a ``state_dict``; safetensors when ``out`` ends in ``.safetensors``; an ONNX
    graph for ``fmt="onnx"``) and ``out.json``, both or neither. An existing ``out`` is
    refused unless ``overwrite``; the source checkpoint and a run's checkpoints always."""
    if fmt not in FORMATS:
        raise ConfigError(f"format: {fmt!r} is not a format; choose one of {', '.join(FORMATS)}")
    checkpoint, out = latest_checkpoint(Path(checkpoint)), Path(out)
    encoding = _weights_encoding(fmt, out)
    check_destination(out, checkpoint, overwrite)
    encoder, info, cfg = _checkpoint_encoder(checkpoint)
    facts = info["facts"]
    meta: dict[str, Any] = {"metacontrast_export": EXPORT_VERSION, "format": fmt, "weights": encoding,
                            "out_dim": int(getattr(encoder, "out_dim", 0)), "source": info["source"]}
    if fmt == "onnx":
        weights, repeat_grey = _onnx_export(encoder, facts, meta, str(cfg.encoder.name))
    else:
        module, repeat_grey = _library_model(encoder, fmt, facts, meta, cfg)
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        weights = _serialise(state, encoding)
    meta["input"] = {"channels": 3 if repeat_grey else int(facts["in_channels"]),
                     "image_size": int(facts["image_size"]),
                     "mean": list(facts["mean"]) * (3 if repeat_grey and len(facts["mean"]) == 1 else 1),
                     "std": list(facts["std"]) * (3 if repeat_grey and len(facts["std"]) == 1 else 1),
                     "range": "pixels in [0, 1], then (x - mean) / std per channel"}
    meta["facts"] = facts
    if fmt == "onnx":
        from metacontrast.export_onnx import onnx_snippet

        meta["load"] = onnx_snippet(str(out), meta["input"]["channels"], meta["input"]["image_size"])
    else:
        meta["load"] = _load_snippet(meta, out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointWriteError(f"out={out}: cannot make {out.parent}: {err.strerror or err}") from None
    _write_pair(weights, json.dumps(meta, indent=2) + "\n", out)
    return ExportedEncoder(weights=out, metadata=meta)


def _library_model(encoder: nn.Module, fmt: str, facts: dict[str, Any], meta: dict[str, Any],
                   cfg: Any) -> tuple[nn.Module, bool]:
    """The module whose ``state_dict`` is exported for state-dict format ``fmt``, and whether
    grey images are repeated to 3 channels; the library's model is built from ``meta``
    (filled in here), loaded strictly and checked to give the encoder's features."""
    if fmt == "state_dict":
        from omegaconf import OmegaConf

        module, repeat_grey = encoder, False
        meta.update(library="metacontrast", builder=str(cfg.encoder.name),
                    encoder=OmegaConf.to_container(cfg.encoder, resolve=True),
                    plugins=OmegaConf.to_container(cfg.plugins, resolve=True), replace={}, kwargs={})
        model = load_encoder_from(meta, facts)
    else:
        spec = encoder.export_spec(fmt)
        if spec is None:
            offered = [f for f in ("torchvision", "timm") if encoder.export_spec(f) is not None]
            raise ConfigError(f"format: encoder {cfg.encoder.name!r} has no {fmt} counterpart; its formats: "
                              f"{', '.join([*offered, 'state_dict', 'onnx'])}")
        module, repeat_grey = spec.module, spec.repeat_grey
        meta.update(library=spec.library, builder=spec.builder, kwargs=dict(spec.kwargs),
                    replace={k: dict(v) for k, v in spec.replace.items()})
        model = build_library_model(meta)
    try:
        model.load_state_dict(module.state_dict(), strict=True)
    except RuntimeError as err:
        raise ExportError(f"the {fmt} model does not take the encoder's weights: "
                          f"{str(err).splitlines()[0]}") from None
    model.eval()
    meta["check"] = {"max_abs_diff": _check_same_features(encoder, model, facts, repeat_grey), "images": 4}
    return module, repeat_grey


def _onnx_export(encoder: nn.Module, facts: dict[str, Any], meta: dict[str, Any],
                 name: str) -> tuple[bytes, bool]:
    """The encoder's ONNX graph (checked with onnxruntime); fills ``meta``."""
    from metacontrast.export_onnx import OnnxExportError, check_onnx, onnx_bytes, onnx_description

    shape = (int(facts["in_channels"]), int(facts["image_size"]), int(facts["image_size"]))
    try:
        data = onnx_bytes(encoder, shape, name)
        check = check_onnx(data, encoder, shape)
    except OnnxExportError as err:
        raise ExportError(str(err)) from None
    meta.update(library="onnx", builder="onnxruntime.InferenceSession", replace={}, kwargs={},
                **onnx_description(shape, meta["out_dim"]), check=check)
    return data, False


def load_encoder_from(meta: dict[str, Any], facts: dict[str, Any]) -> nn.Module:
    """The model an export describes, untrained (weights are loaded by the caller)."""
    if meta["library"] != "metacontrast":
        return build_library_model(meta)
    from omegaconf import OmegaConf

    from metacontrast.config import Config

    cfg = OmegaConf.merge(OmegaConf.structured(Config),
                          {"encoder": meta["encoder"], "plugins": meta.get("plugins", {})})
    return build_encoder_from(cfg, facts)


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The encoder exported to ``path`` (by ``metacontrast export``), built with its
    library's constructor, loaded with ``strict=True``, in eval mode:
    ``(N, C, H, W)`` normalised images -> ``(N, out_dim)`` features (see ``path.json``
    ``input`` for C, H and the normalisation)."""
    path = Path(path)
    meta_path = _metadata_path(path)
    if not meta_path.is_file():
        raise ExportError(f"{meta_path} does not exist: load_encoder reads the description that "
                          f"metacontrast export writes beside the weights")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{meta_path}: not an export description ({err})") from None
    if meta.get("metacontrast_export") != EXPORT_VERSION:
        raise ExportError(f"{meta_path}: not an export description of version {EXPORT_VERSION}")
    if meta.get("weights") == "onnx":
        raise ExportError(f"{path} is an ONNX graph: run it with onnxruntime (the snippet is 'load' in "
                          f"{meta_path.name}); load_encoder builds torch models from state-dict exports")
    state = _read_state(path, meta, map_location)
    model = load_encoder_from(meta, meta["facts"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ExportError(f"{path}: the weights do not fit the model {meta_path} describes: "
                          f"{str(err).splitlines()[0]}") from None
    return model.to(map_location).eval()


def _read_state(path: Path, meta: dict[str, Any], map_location: str | torch.device) -> dict[str, Any]:
    """The tensors of a state-dict export, read without running any code from the file."""
    if meta.get("weights") == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ExportError(f"{path} is a safetensors file: pip install safetensors") from None
        try:
            return load_file(path, device=str(map_location))
        except Exception as err:
            raise ExportError(f"{path} is not a readable safetensors file: {err}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ExportError(f"{path} cannot be loaded safely (weights_only=True): {err}") from None
