"""``metacontrast export`` and ``metacontrast.load_encoder``: the trained encoder loads
into the library's own model with ``strict=True`` and gives the framework's features.

The references are written here independently: each library model is built by hand
(torchvision's and timm's constructors, the CIFAR stem made as the export's description
says), and the framework's features come from the trained run's own model."""

from __future__ import annotations

import json
import sys

import pytest
import timm
import torch
import torchvision

import metacontrast
import metacontrast.export
from metacontrast.checkpoint import list_checkpoints, load_safe
from metacontrast.cli import main
from metacontrast.config import from_yaml
from metacontrast.trainer import setup

from .conftest import TINY, fail_with_enospc

QUICK = [*TINY, "evaluation.baselines=[]"]


def _trained(tmp_path_factory, encoder: str):
    run = tmp_path_factory.mktemp(encoder) / "run"
    assert main(["train", *QUICK, f"encoder={encoder}", f"trainer.run_dir={run}"]) == 0
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    payload = load_safe(checkpoint)
    built = setup(from_yaml(payload["config"]), run_dir=run)
    built.model.load_state_dict(payload["model"])
    encoder = built.model.encoder.eval().to(memory_format=torch.contiguous_format)  # as the library models
    return checkpoint, encoder, built.data


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    return _trained(tmp_path_factory, "resnet18_cifar")


def _images(data, n: int = 6) -> torch.Tensor:
    """Normalised test images, as the encoder sees them."""
    x = data.test_x[:n].float()
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (x - mean) / std


def _cifar_stem(model: torch.nn.Module, in_channels: int) -> None:
    model.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = torch.nn.Identity()


def test_a_resnet18_export_loads_into_torchvision_strictly_with_the_same_features(resnet_run, tmp_path, capsys):
    checkpoint, encoder, data = resnet_run
    out = tmp_path / "r18.pt"
    assert main(["export", f"checkpoint={checkpoint}", "format=torchvision", f"out={out}"]) == 0
    said = capsys.readouterr().out
    assert "torchvision.models.resnet18(weights=None)" in said and "strict=True" in said
    meta = json.loads((tmp_path / "r18.pt.json").read_text())
    assert meta["replace"]["maxpool"] == {"type": "Identity"} and meta["replace"]["conv1"]["type"] == "Conv2d"
    assert meta["input"]["channels"] == data.channels and meta["input"]["image_size"] == data.image_size

    model = torchvision.models.resnet18(weights=None)
    _cifar_stem(model, data.channels)
    model.fc = torch.nn.Identity()
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith(("fc.", "head", "teacher", "memory")) for k in state)
    model.load_state_dict(state, strict=True)
    x = _images(data)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), encoder(x), rtol=1e-5, atol=1e-5)


def test_the_same_export_loads_into_timm_and_through_load_encoder(resnet_run, tmp_path):
    checkpoint, encoder, data = resnet_run
    out = tmp_path / "r18_timm.pt"
    assert main(["export", f"checkpoint={checkpoint}", "format=timm", f"out={out}"]) == 0
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    _cifar_stem(model, data.channels)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    loaded = metacontrast.load_encoder(out)
    assert not loaded.training
    x = _images(data)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), encoder(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(x), encoder(x), rtol=1e-5, atol=1e-5)


def test_an_encoder_without_a_library_counterpart_exports_as_its_own_state_dict(tmp_path_factory, tmp_path, capsys):
    checkpoint, encoder, data = _trained(tmp_path_factory, "conv4")
    assert main(["export", f"checkpoint={checkpoint}", "format=timm", f"out={tmp_path / 'x.pt'}"]) == 2
    assert "encoder 'conv4' has no timm counterpart; its formats: state_dict" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.pt.json").exists()
    out = metacontrast.export_encoder(checkpoint.parent.parent, "state_dict", tmp_path / "conv4.pt")
    state = torch.load(out, weights_only=True)
    assert set(state) == {k for k in encoder.state_dict()}
    x = _images(data)
    with torch.no_grad():
        torch.testing.assert_close(metacontrast.load_encoder(out)(x), encoder(x))


def test_export_mistakes_are_named(tmp_path, capsys):
    assert main(["export", "checkpoint=x.pt", "format=tflite", f"out={tmp_path / 'o.pt'}"]) == 2
    assert ("format: 'tflite' is not a format; choose one of torchvision, timm, state_dict, onnx"
            in capsys.readouterr().err)
    assert main(["export", "checkpoint=x.pt"]) == 2
    assert "needs format=... out=..." in capsys.readouterr().err
    assert main(["export", "checkpoint=x.pt", "format=timm", "out=o.pt", "fromat=timm"]) == 2
    assert "unknown argument 'fromat=timm'" in capsys.readouterr().err
    (tmp_path / "lonely.pt").write_bytes(b"")
    with pytest.raises(metacontrast.export.ExportError, match="lonely.pt.json does not exist"):
        metacontrast.load_encoder(tmp_path / "lonely.pt")


def test_the_export_is_the_online_encoder_never_the_teacher(tmp_path_factory, tmp_path):
    """BYOL keeps an EMA copy of the encoder (the teacher): the export holds the online one."""
    run = tmp_path_factory.mktemp("byol") / "run"
    assert main(["train", *QUICK, "method=byol", "trainer.max_steps=3", f"trainer.run_dir={run}"]) == 0
    payload = load_safe(list_checkpoints(run / "checkpoints")[-1])
    out = metacontrast.export_encoder(run, "state_dict", tmp_path / "online.pt")
    state = torch.load(out, weights_only=True)
    online = {k.removeprefix("encoder."): v for k, v in payload["model"].items() if k.startswith("encoder.")}
    teacher = {k.removeprefix("teacher.encoder."): v for k, v in payload["model"].items()
               if k.startswith("teacher.encoder.")}
    assert teacher and set(state) == set(online) == set(teacher)
    assert all(torch.equal(state[k], online[k]) for k in state)
    assert any(not torch.equal(state[k], teacher[k]) for k in state if state[k].is_floating_point())


def test_any_torchvision_backbone_exports_with_its_classifier_replaced(tmp_path_factory, tmp_path, capsys):
    """encoder=torchvision (MobileNetV3-Small, whose classifier is a Sequential) on grey
    digits: the export loads into torchvision's own builder, classifier.3 replaced by the
    identity, and takes the grey images repeated to 3 channels."""
    run = tmp_path_factory.mktemp("mobilenet") / "run"
    assert main(["train", *QUICK, "encoder=torchvision", "encoder.model._target_=torchvision.models.mobilenet_v3_small",
                 f"trainer.run_dir={run}"]) == 0
    payload = load_safe(list_checkpoints(run / "checkpoints")[-1])
    built = setup(from_yaml(payload["config"]), run_dir=run)
    built.model.load_state_dict(payload["model"])
    encoder = built.model.encoder.eval().to(memory_format=torch.contiguous_format)
    out = tmp_path / "mnv3.pt"
    assert main(["export", f"checkpoint={run}", "format=torchvision", f"out={out}"]) == 0
    assert "model.classifier[3] = torch.nn.Identity()" in capsys.readouterr().out
    model = torchvision.models.mobilenet_v3_small(weights=None)
    model.classifier[3] = torch.nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    meta = json.loads((tmp_path / "mnv3.pt.json").read_text())
    assert meta["input"]["channels"] == 3 and len(meta["input"]["mean"]) == 3
    x = _images(built.data)  # grey (N, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x.expand(-1, 3, -1, -1)), encoder(x), rtol=1e-5, atol=1e-5)


def test_export_never_writes_over_its_source_a_runs_checkpoint_or_an_existing_file(resnet_run, tmp_path, capsys):
    checkpoint, _, _ = resnet_run
    before = checkpoint.read_bytes()
    for extra in ([], ["overwrite=true"]):
        assert main(["export", f"checkpoint={checkpoint}", "format=state_dict", f"out={checkpoint}", *extra]) == 2
        assert "that is the checkpoint being exported; export never writes over its source" in capsys.readouterr().err
    sibling = checkpoint.with_name("step-000000001.pt")
    assert main(["export", f"checkpoint={checkpoint}", "format=state_dict", f"out={sibling}",
                 "overwrite=true"]) == 2
    assert "a run's checkpoints/ directory holds its training checkpoints" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before and not sibling.exists()
    assert not checkpoint.with_name(checkpoint.name + ".json").exists()
    load_safe(checkpoint)  # still the training checkpoint

    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"the user's own file")
    assert main(["export", f"checkpoint={checkpoint}", "format=torchvision", f"out={mine}"]) == 2
    err = capsys.readouterr().err
    assert f"{mine} exists; export never writes over a file unless asked" in err and "overwrite=true" in err
    assert mine.read_bytes() == b"the user's own file" and not (tmp_path / "mine.pt.json").exists()
    assert main(["export", f"checkpoint={checkpoint}", "format=torchvision", f"out={mine}", "overwrite=true"]) == 0
    capsys.readouterr()
    model = metacontrast.load_encoder(mine)  # the advice works: the pair is there, whole
    assert model.fc.__class__.__name__ == "Identity"
    assert main(["export", f"checkpoint={checkpoint}", "format=torchvision", f"out={mine}", "overwrite=yes"]) == 2
    assert "overwrite='yes'; it is true or false" in capsys.readouterr().err


def test_export_to_a_directory_is_refused_and_leaves_nothing(resnet_run, tmp_path, capsys):
    checkpoint, _, _ = resnet_run
    assert main(["export", f"checkpoint={checkpoint}", "format=timm", f"out={tmp_path}"]) == 2
    assert f"{tmp_path} is a directory; give the file to write, e.g. out={tmp_path / 'encoder.pt'}" in (
        capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_export_leaves_neither_file(resnet_run, tmp_path, capsys, monkeypatch):
    """Simulated with /dev/full (the kernel's own ENOSPC on every write)."""
    checkpoint, _, _ = resnet_run
    import metacontrast.checkpoint as checkpoint_module

    fail_with_enospc(monkeypatch, checkpoint_module)
    out = tmp_path / "r18.pt"
    assert main(["export", f"checkpoint={checkpoint}", "format=torchvision", f"out={out}"]) == 1
    err = capsys.readouterr().err
    assert f"could not write encoder weights {out}: No space left on device" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_a_failed_rename_of_the_description_takes_the_weights_back_out(resnet_run, tmp_path, capsys, monkeypatch):
    checkpoint, _, _ = resnet_run
    real, calls = metacontrast.export.os.replace, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(30, "Read-only file system", str(dst))
        return real(src, dst)

    monkeypatch.setattr(metacontrast.export.os, "replace", second_rename_fails)
    out = tmp_path / "r18.pt"
    assert main(["export", f"checkpoint={checkpoint}", "format=torchvision", f"out={out}"]) == 1
    assert "Read-only file system; nothing of it was left" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_on_a_real_full_disk_says_so_and_leaves_nothing(resnet_run, small_tmpfs, capsys):
    """A 4 MiB tmpfs and a 45 MB ResNet-18: the kernel's ENOSPC, reported as such."""
    checkpoint, _, _ = resnet_run
    out = small_tmpfs / "r18.pt"
    assert main(["export", f"checkpoint={checkpoint}", "format=torchvision", f"out={out}"]) == 1
    err = capsys.readouterr().err
    assert f"could not write encoder weights {out}: No space left on device" in err
    assert list(small_tmpfs.iterdir()) == []


def _onnx_features(path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_an_onnx_export_gives_the_encoders_features_in_onnxruntime_at_any_batch_size(resnet_run, tmp_path, capsys):
    """Tolerance: 1e-4 of the largest feature (both run in float32 on the CPU)."""
    checkpoint, encoder, data = resnet_run
    out = tmp_path / "encoder.onnx"
    assert main(["export", f"checkpoint={checkpoint}", "format=onnx", f"out={out}"]) == 0
    said = capsys.readouterr().out
    assert "onnxruntime.InferenceSession" in said and "checked: onnxruntime runs the graph" in said
    meta = json.loads((tmp_path / "encoder.onnx.json").read_text())
    assert meta["format"] == "onnx" and meta["opset"] == 18
    assert meta["graph_input"]["shape"] == ["batch", data.channels, data.image_size, data.image_size]
    assert meta["graph_output"]["shape"] == ["batch", 512]
    assert meta["input"]["mean"] == list(data.mean)

    import onnx

    onnx.checker.check_model(str(out))
    x = _images(data, 6)
    with torch.no_grad():
        expected = encoder(x)
    for batch in (x, x[:1]):
        got = _onnx_features(out, batch)
        torch.testing.assert_close(got, expected[: len(batch)], rtol=0, atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(metacontrast.export.ExportError, match="is an ONNX graph: run it with onnxruntime"):
        metacontrast.load_encoder(out)
    # the snippet written for users runs as written
    namespace: dict = {}
    exec(meta["load"], namespace)
    assert namespace["features"].shape == (8, 512)


def test_a_safetensors_export_loads_strictly_into_torchvision(resnet_run, tmp_path):
    from safetensors.torch import load_file

    checkpoint, encoder, data = resnet_run
    out = tmp_path / "r18.safetensors"
    assert main(["export", f"checkpoint={checkpoint}", "format=torchvision", f"out={out}"]) == 0
    assert out.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON; no pickle
    meta = json.loads((tmp_path / "r18.safetensors.json").read_text())
    assert meta["weights"] == "safetensors" and "load_file(" in meta["load"]
    model = torchvision.models.resnet18(weights=None)
    _cifar_stem(model, data.channels)
    model.fc = torch.nn.Identity()
    model.load_state_dict(load_file(out), strict=True)
    x = _images(data)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), encoder(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(metacontrast.load_encoder(out)(x), encoder(x), rtol=1e-5, atol=1e-5)


def test_an_encoder_of_our_own_exports_to_onnx_and_safetensors(tmp_path_factory, tmp_path):
    checkpoint, encoder, data = _trained(tmp_path_factory, "conv4")
    x = _images(data, 5)
    with torch.no_grad():
        expected = encoder(x)
    onnx_out = metacontrast.export_encoder(checkpoint, "onnx", tmp_path / "conv4.onnx")
    torch.testing.assert_close(_onnx_features(onnx_out, x), expected, rtol=0,
                               atol=1e-4 * max(1.0, float(expected.abs().max())))
    st_out = metacontrast.export_encoder(checkpoint, "state_dict", tmp_path / "conv4.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(metacontrast.load_encoder(st_out)(x), expected)


def test_onnx_mistakes_are_named_and_leave_nothing(resnet_run, tmp_path, capsys, monkeypatch):
    checkpoint, _, _ = resnet_run
    assert main(["export", f"checkpoint={checkpoint}", "format=onnx", f"out={tmp_path / 'e.safetensors'}"]) == 2
    assert "format=onnx writes an ONNX graph, not safetensors; name the file e.onnx" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    assert main(["export", f"checkpoint={checkpoint}", "format=onnx", f"out={tmp_path / 'e.onnx'}"]) == 2
    err = capsys.readouterr().err
    assert "format=onnx needs onnxruntime: pip install onnx onnxscript onnxruntime" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


class _NotTraceable(torch.nn.Module):
    out_dim = 4

    def forward(self, x):
        if float(x.sum()) > 0:  # a branch on a value: torch.export cannot trace it
            return x.flatten(1)[:, :4]
        return -x.flatten(1)[:, :4]


def test_an_encoder_that_cannot_be_traced_is_refused_naming_why():
    from metacontrast.export_onnx import OnnxExportError, onnx_bytes

    with pytest.raises(OnnxExportError, match=r"encoder 'branchy' cannot be exported to ONNX \("):
        onnx_bytes(_NotTraceable(), (1, 4, 4), "branchy")


@pytest.mark.parametrize("fmt, name", [("onnx", "e.onnx"), ("torchvision", "e.safetensors")])
def test_a_full_disk_during_an_onnx_or_safetensors_export_leaves_nothing(resnet_run, tmp_path, capsys,
                                                                         monkeypatch, fmt, name):
    checkpoint, _, _ = resnet_run
    import metacontrast.checkpoint as checkpoint_module

    fail_with_enospc(monkeypatch, checkpoint_module)
    out = tmp_path / name
    assert main(["export", f"checkpoint={checkpoint}", f"format={fmt}", f"out={out}"]) == 1
    err = capsys.readouterr().err
    assert f"could not write encoder weights {out}: No space left on device" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
