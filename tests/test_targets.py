"""``_target_`` allowlist: refused before any import, from YAML, overrides or checkpoints."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from metacontrast import hookimpl, trainer
from metacontrast.builtin.encoders import TorchvisionBackbone, TorchvisionConfig
from metacontrast.checkpoint import list_checkpoints, load_safe, save_atomic
from metacontrast.cli import main
from metacontrast.config import ConfigError, compose_config, from_yaml, to_yaml
from metacontrast.interfaces import BuildContext
from metacontrast.plugins import PluginManager, as_module
from metacontrast.targets import UnsafeTargetError, builtin_targets, check_targets, instantiate_checked

from .conftest import TINY

DANGEROUS = ["os.system", "builtins.eval", "torch.load", "importlib.import_module", "subprocess.run"]


@pytest.fixture
def tripwire(tmp_path, monkeypatch) -> str:
    """A module that must never be imported: importing it writes a marker file."""
    marker = tmp_path / "imported"
    (tmp_path / "tripwire_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef boom(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tripwire_mod.boom"
    assert not marker.exists() and "tripwire_mod" not in sys.modules, "the refused target was imported"


@pytest.mark.parametrize("target", DANGEROUS)
def test_override_targets_are_refused_naming_the_key(tmp_path, capsys, target):
    code = main(["train", *TINY, f"trainer.run_dir={tmp_path}", "encoder=torchvision",
                 f"encoder.model._target_={target}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"encoder.model._target_: _target_ '{target}' is not allowed" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_refused_target_is_never_imported(tmp_path, tripwire):
    cfg = compose_config([*TINY, f"trainer.run_dir={tmp_path}", "encoder=torchvision",
                          f"encoder.model._target_={tripwire}"])
    with pytest.raises(UnsafeTargetError, match=r"encoder.model._target_: _target_ 'tripwire_mod.boom'"):
        trainer.fit(cfg)
    with pytest.raises(UnsafeTargetError):
        instantiate_checked({"_target_": tripwire}, builtin_targets(), key="x")


def test_yaml_targets_at_any_depth_are_refused(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "evil.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /encoder: torchvision\n"
        "encoder:\n  model:\n    _target_: torchvision.models.resnet18\n"
        "    norm_layer:\n      _target_: builtins.eval\n      _partial_: true\n")
    cfg = compose_config([*TINY[1:], "experiment=evil"], searchpath=[f"file://{tmp_path}"])
    with pytest.raises(UnsafeTargetError, match=r"encoder.model.norm_layer._target_: _target_ 'builtins.eval'"):
        trainer.setup(cfg)


def test_a_config_cannot_extend_the_allowlist(tmp_path):
    for attempt in ("+plugins.allowed_targets=[os.system]", "+allowed_targets=[os.system]",
                    "+plugins.register_targets=[os.system]"):
        cfg = compose_config([*TINY, f"trainer.run_dir={tmp_path}", attempt,
                              "+extra={_target_: os.system, _args_: [true]}"])
        with pytest.raises(UnsafeTargetError, match=r"extra._target_: _target_ 'os.system'"):
            trainer.setup(cfg)


def test_checkpoint_config_targets_are_refused_on_eval_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config([*TINY, f"trainer.run_dir={run_dir}", "evaluation.baselines=[]", "trainer.resume=auto"])
    trainer.fit(cfg)
    path = list_checkpoints(run_dir / "checkpoints")[-1]
    payload = load_safe(path)
    stored = from_yaml(payload["config"])
    OmegaConf.set_struct(stored, False)
    stored.encoder.hook = {"_target_": "os.system", "_args_": ["touch /tmp/x"]}
    payload["config"] = to_yaml(stored)
    save_atomic(payload, path)
    with pytest.raises(UnsafeTargetError, match=rf"encoder.hook._target_: _target_ 'os.system' is not allowed \(from checkpoint {path}\)"):
        trainer.evaluate_checkpoint(path, [])
    (run_dir / "results.json").unlink()  # an unfinished run, which the same config resumes
    with pytest.raises(UnsafeTargetError, match=rf"from checkpoint {path}"):
        trainer.fit(cfg)  # auto-resume reads the same checkpoint


def test_plugins_extend_the_allowlist_with_exact_names():
    @hookimpl
    def metacontrast_register_targets():
        return ["mypkg.backbones.Net"]

    allowed = PluginManager(autoload=False, extra=[as_module("adds_target", metacontrast_register_targets=
                                                             metacontrast_register_targets)]).allowed_targets()
    check_targets({"a": {"_target_": "mypkg.backbones.Net"}}, allowed)
    with pytest.raises(UnsafeTargetError, match="a._target_"):
        check_targets({"a": {"_target_": "mypkg.backbones.Other"}}, allowed)

    @hookimpl
    def metacontrast_register_targets_wild():
        return ["mypkg.*"]

    from metacontrast.plugins import PluginError

    with pytest.raises(PluginError, match="exact dotted names"):
        PluginManager(autoload=False, extra=[as_module(
            "wild", metacontrast_register_targets=metacontrast_register_targets_wild)]).allowed_targets()


def test_torchvision_backbone_is_the_torchvision_model_without_its_classifier():
    ctx = BuildContext(in_channels=3, image_size=32, mean=(0.5,) * 3, std=(0.2,) * 3,
                       allowed_targets=builtin_targets())
    torch.manual_seed(0)
    ours = TorchvisionBackbone(TorchvisionConfig(model={"_target_": "torchvision.models.resnet18"}), ctx)
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    ours.eval(), reference.eval()
    assert ours.out_dim == 512
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)


def test_unresolvable_interpolation_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot resolve"):
        check_targets(compose_config([*TINY, "+x=${missing.key}"]), builtin_targets())


def test_every_builtin_target_names_something_real():
    import importlib

    for name in sorted(builtin_targets()):
        module, attr = name.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attr)), name
