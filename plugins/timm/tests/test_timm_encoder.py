"""The timm encoder: built as timm builds the model, patch models sized for the data, local
pretrained weights only, two training steps of SimCLR and ProtoNet on a ResNet, a ConvNeXt
and a small ViT, and the trained encoder exported back to timm (torch and safetensors weights)
and as an ONNX graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

import metacontrast
from metacontrast.builder import build_one
from metacontrast.checkpoint import list_checkpoints
from metacontrast.config import ConfigError, compose_config
from metacontrast.interfaces import BuildContext
from metacontrast.plugins import PluginManager
from metacontrast.trainer import fit
from metacontrast_timm.encoder import choose_patch

MODELS = ["resnet18", "convnext_atto", "vit_tiny_patch16_224"]


def _context(channels: int = 3, size: int = 32) -> tuple[PluginManager, BuildContext]:
    plugins = PluginManager()
    return plugins, BuildContext(in_channels=channels, image_size=size, mean=(0.5,) * channels,
                                 std=(0.25,) * channels, plugins=plugins)


def _build(params: dict, channels: int = 3, size: int = 32):
    plugins, context = _context(channels, size)
    return build_one(plugins, "encoder", "encoder", {"name": "timm", **params}, context)


@pytest.mark.parametrize("side, own, asked, expected", [
    (32, 16, 0, 4), (224, 16, 0, 16), (96, 16, 0, 8), (8, 16, 0, 1), (28, 16, 0, 2), (32, 16, 2, 2),
])
def test_the_patch_leaves_at_least_8_by_8_patches_unless_asked(side, own, asked, expected):
    assert choose_patch(side, own, asked) == expected
    if not asked:  # the rule written out: the largest halving of the model's patch that fits
        fits = [own // 2 ** i for i in range(8) if own // 2 ** i >= 1 and side // (own // 2 ** i) >= 8
                and side % (own // 2 ** i) == 0]
        assert expected == (fits[0] if fits else 1)


@pytest.mark.parametrize("model", MODELS)
def test_the_encoder_is_the_timm_model_without_its_classifier(model):
    torch.manual_seed(0)
    encoder = _build({"model": model}, channels=1, size=32).eval()
    kwargs = {"in_chans": 1}
    if model.startswith("vit"):
        kwargs.update(img_size=32, patch_size=4)
        assert tuple(encoder.net.patch_embed.grid_size) == (8, 8)
    reference = timm.create_model(model, pretrained=False, num_classes=0, **kwargs).eval()
    reference.load_state_dict(encoder.net.state_dict(), strict=True)  # the same architecture
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        out = encoder(x)
        assert out.shape == (3, reference.num_features) == (3, encoder.out_dim)
        torch.testing.assert_close(out, reference(x))


def test_pretrained_weights_come_from_a_local_file_only(tmp_path):
    source = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    encoder = _build({"model": "resnet18", "pretrained_file": str(tmp_path / "r18.pth")})
    for name, value in encoder.net.state_dict().items():
        assert torch.equal(value, source.state_dict()[name]), name
    with pytest.raises(ConfigError, match=r"encoder.pretrained_file: .*missing.pth does not exist"):
        _build({"model": "resnet18", "pretrained_file": str(tmp_path / "missing.pth")})


def test_a_misspelt_model_or_a_patch_for_a_convnet_is_named():
    with pytest.raises(ConfigError, match="model 'resnt18' is not a timm model; did you mean resnet18"):
        _build({"model": "resnt18"})
    with pytest.raises(ConfigError, match="encoder.patch_size: resnet18 does not cut images into patches"):
        _build({"model": "resnet18", "patch_size": 4})


@pytest.fixture(scope="module")
def colour(tmp_path_factory) -> str:
    g = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("colour") / "colour.npz"
    np.savez(path, x_train=g.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), y_train=g.integers(0, 3, 48),
             x_test=g.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), y_test=g.integers(0, 3, 12))
    return str(path)


@pytest.mark.parametrize("method", ["simclr", "protonet"])
@pytest.mark.parametrize("model", MODELS)
def test_two_steps_of_simclr_and_protonet(model, method, colour, tmp_path):
    run = tmp_path / "run"
    cfg = compose_config([f"method={method}", "data=npz", f"data.root={colour}", "views=simclr_cifar",
                          "encoder=timm", f"encoder.model={model}", "trainer=debug", "trainer.device=cpu",
                          "trainer.batch_size=8", "trainer.max_steps=2", "trainer.epochs=1",
                          "trainer.channels_last=true", "evaluation.baselines=[]", "eval=[knn]", "eval.knn.k=3",
                          f"trainer.run_dir={run}"], searchpath=PluginManager().config_searchpath())
    results = fit(cfg)
    assert results["steps"] == 2 and results["encoder"] == "timm"
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    if model.startswith("vit") and method == "simclr":  # the trained encoder goes back to timm
        out = metacontrast.export_encoder(run, "timm", tmp_path / "vit.pt")
        meta = json.loads((tmp_path / "vit.pt.json").read_text())
        assert meta["builder"] == model and meta["kwargs"] == {"in_chans": 3, "img_size": 32, "patch_size": 4}
        reference = timm.create_model(model, pretrained=False, num_classes=0, **meta["kwargs"]).eval()
        reference.load_state_dict(torch.load(out, weights_only=True), strict=True)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(metacontrast.load_encoder(out)(x), reference(x))
            expected = reference(x)
        assert list_checkpoints(run / "checkpoints")
        # the same weights as safetensors for timm, and the encoder as an ONNX graph
        from safetensors.torch import load_file

        reference.load_state_dict(load_file(metacontrast.export_encoder(run, "timm", tmp_path / "vit.safetensors")),
                                  strict=True)
        onnxruntime = pytest.importorskip("onnxruntime")
        graph = metacontrast.export_encoder(run, "onnx", tmp_path / "vit.onnx")
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        for batch in (x, x[:1]):
            got = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
            torch.testing.assert_close(got, expected[: len(batch)], rtol=0,
                                       atol=1e-4 * max(1.0, float(expected.abs().max())))
