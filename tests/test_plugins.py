"""Plugin discovery, registration errors, blocking, and a real pip-installed plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metacontrast import hookspecs
from metacontrast.plugins import PluginError, PluginManager, UnknownComponentError, as_module

from .conftest import TINY


def make_distribution(root: Path, dist: str, ep_name: str, module: str, source: str) -> None:
    """A distribution installed into ``root``: the module and a dist-info with its entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[metacontrast]\n{ep_name} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtin_and_installed_plugins_are_found():
    pm = PluginManager()
    names = {i.name: i for i in pm.plugin_infos()}
    assert names["builtin"].distribution == "metacontrast"
    assert "simclr" in names["kornia"].components["view_generator"]
    assert "nt_xent" in names["simclr"].components["loss"]
    assert pm.get("encoder", "resnet18").NAME == "resnet18"


def test_autoload_off_keeps_only_builtins(monkeypatch):
    assert [i.name for i in PluginManager(autoload=False).plugin_infos()] == ["builtin"]
    monkeypatch.setenv("METACONTRAST_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert [i.name for i in PluginManager().plugin_infos()] == ["builtin"]


def test_block_by_entry_point_or_distribution(monkeypatch):
    pm = PluginManager(block=["simclr"])
    assert "simclr" not in {i.name for i in pm.plugin_infos()}
    monkeypatch.setenv("METACONTRAST_BLOCK_PLUGINS", "metacontrast-kornia")
    assert "kornia" not in {i.name for i in PluginManager().plugin_infos()}


def test_import_error_names_distribution_and_entry_point(site):
    make_distribution(site, "broken-plugin", "broken", "broken_mod", "import not_a_module_anywhere\n")
    with pytest.raises(PluginError) as err:
        PluginManager()
    msg = str(err.value)
    assert "'broken'" in msg and "broken-plugin" in msg and "broken_mod" in msg
    assert "not_a_module_anywhere" in msg


def test_wrong_hook_signature_is_refused(site):
    make_distribution(site, "sig-plugin", "sig", "sig_mod", """
        from metacontrast import hookimpl

        @hookimpl
        def metacontrast_register_losses(unexpected_argument):
            return []
    """)
    with pytest.raises(PluginError, match=r"'sig' \(distribution sig-plugin 1.0.*does not match"):
        PluginManager()


def test_misspelt_hook_name_is_refused(site):
    make_distribution(site, "typo-plugin", "typo", "typo_mod", """
        from metacontrast import hookimpl

        @hookimpl
        def metacontrast_register_loses():
            return []
    """)
    with pytest.raises(PluginError, match="metacontrast_register_loses.*not a hook"):
        PluginManager()


def test_duplicate_component_names_name_both_owners(site):
    make_distribution(site, "dup-plugin", "dup", "dup_mod", """
        from metacontrast import hookimpl
        from metacontrast.interfaces import Loss

        class Another(Loss):
            NAME = "nt_xent"

        @hookimpl
        def metacontrast_register_losses():
            return [Another]
    """)
    with pytest.raises(PluginError) as err:
        PluginManager()
    assert "two loss components" in str(err.value)
    assert "'nt_xent'" in str(err.value)
    assert "metacontrast-simclr" in str(err.value) and "dup-plugin" in str(err.value)


def test_component_of_the_wrong_kind_is_refused():
    from metacontrast import hookimpl
    from metacontrast.interfaces import Head

    class NotALoss(Head):
        NAME = "oops"

    @hookimpl
    def metacontrast_register_losses():
        return [NotALoss]

    with pytest.raises(PluginError, match="not a subclass of Loss"):
        PluginManager(autoload=False, extra=[as_module("wrong_kind",
                                                       metacontrast_register_losses=metacontrast_register_losses)])


def test_unknown_component_lists_available_names():
    pm = PluginManager()
    with pytest.raises(UnknownComponentError) as err:
        pm.get("encoder", "vit_tiny", key="encoder.name")
    assert "encoder.name" in str(err.value) and "conv4, resnet18, resnet50" in str(err.value)


class _Monitor:
    """Every hook call pluggy's relay makes (hook-call monitoring)."""

    def __init__(self, pm: PluginManager) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        pm.hooks.add_hookcall_monitoring(
            lambda name, impls, kwargs: self.calls.append((name, [i.plugin_name for i in impls])),
            lambda outcome, name, impls, kwargs: None)


def test_the_first_plugin_answer_wins_and_the_trylast_builtin_answers_only_alone():
    """As pluggy documents for ``firstresult``: implementations are asked last registered
    first; the first non-None answer wins and the rest are not called; the built-in
    default (``trylast``) is asked after every plugin and answers when none did."""
    from metacontrast import hookimpl

    asked: list[str] = []

    def claimant(name: str, answer: object | None):
        def claim(config, components):
            asked.append(name)
            return answer
        return as_module(name, metacontrast_make_train_step=hookimpl(claim))

    first, second = object(), object()
    pm = PluginManager(autoload=False, extra=[claimant("claim_a", first), claimant("claim_b", second)])
    monitor = _Monitor(pm)
    assert pm.make_train_step(None, None) is second  # claim_b registered last: asked first
    assert asked == ["claim_b"]  # the first answer ends the call
    assert monitor.calls[-1][0] == "metacontrast_make_train_step"
    assert monitor.calls[-1][1][0] == "builtin"  # pluggy lists the trylast built-in first (called last)

    asked.clear()
    pm = PluginManager(autoload=False, extra=[claimant("claim_a", first), claimant("claim_b", None)])
    assert pm.make_train_step(None, None) is first and asked == ["claim_b", "claim_a"]

    asked.clear()
    none = PluginManager(autoload=False, extra=[claimant("claim_none", None)])
    with pytest.raises(AttributeError):  # the built-in default is asked last: it reads the components
        none.make_train_step(None, None)
    assert asked == ["claim_none"]


def test_a_tryfirst_plugin_is_asked_before_a_later_registered_one():
    from metacontrast import hookimpl

    first, second = object(), object()
    early = as_module("early", metacontrast_make_train_step=hookimpl(tryfirst=True)(lambda config, components: first))
    late = as_module("late", metacontrast_make_train_step=hookimpl(lambda config, components: second))
    assert PluginManager(autoload=False, extra=[early, late]).make_train_step(None, None) is first


def test_setup_hooks_go_through_pluggys_relay_attributed_to_each_plugin():
    pm = PluginManager(autoload=False)
    monitor = _Monitor(pm)
    pm.answers("metacontrast_register_losses")
    assert [name for name, _ in monitor.calls] == ["metacontrast_register_losses"] * len(pm.infos)


def test_docs_hooks_md_is_generated_from_the_hookspecs():
    from metacontrast import hooks_doc

    page = (Path(__file__).resolve().parent.parent / "docs" / "hooks.md").read_text()
    assert page == hooks_doc.render(), "docs/hooks.md differs from the hookspecs: python -m metacontrast.hooks_doc --write"
    hooks = hooks_doc.hook_names()
    assert len(hooks) == len([n for n in dir(hookspecs) if n.startswith("metacontrast_")]) >= 12
    for h in hooks:
        assert f"### `{h}`" in page and (getattr(hookspecs, h).__doc__ or "").strip(), h


PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "metacontrast-testcosine"
version = "0.3.0"
dependencies = []

[project.entry-points.metacontrast]
testcosine = "metacontrast_testcosine.plugin"

[tool.setuptools.packages.find]
include = ["metacontrast_testcosine*"]

[tool.setuptools.package-data]
metacontrast_testcosine = ["configs/loss/*.yaml"]
"""

PLUGIN_SOURCE = '''
import attrs
import torch.nn.functional as F

from metacontrast import hookimpl
from metacontrast.interfaces import Loss


@attrs.define
class CosineConfig:
    scale: float = 1.0


class NegativeCosine(Loss):
    """-cos(z_view0, z_view1), averaged: the simplest positive-only loss."""

    NAME = "neg_cosine"
    Config = CosineConfig

    def __init__(self, config, context):
        super().__init__()
        self.scale = config.scale

    def forward(self, inputs):
        emb, n = inputs.embeddings, inputs.episode.n_views
        return -self.scale * F.cosine_similarity(emb.view(0, n), emb.view(1, n)).mean()


@hookimpl
def metacontrast_register_losses():
    return [NegativeCosine]


@hookimpl
def metacontrast_config_searchpath():
    return ["pkg://metacontrast_testcosine.configs"]
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin_src")
    pkg = src / "metacontrast_testcosine"
    (pkg / "configs" / "loss").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (pkg / "__init__.py").write_text("")
    (pkg / "configs" / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(PLUGIN_SOURCE)
    (pkg / "configs" / "loss" / "neg_cosine.yaml").write_text("neg_cosine:\n  weight: 1.0\n  scale: 2.0\n")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--no-index", str(src)]
    subprocess.run(pip, check=True, capture_output=True)
    yield "metacontrast-testcosine"
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "metacontrast-testcosine"],
                   check=True, capture_output=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metacontrast.cli", *args], capture_output=True, text=True)


def test_pip_installed_plugin_is_listed_and_selectable(installed_plugin, tmp_path):
    listing = _cli("plugins")
    assert listing.returncode == 0, listing.stderr
    assert "testcosine  [metacontrast-testcosine 0.3.0]" in listing.stdout
    assert "neg_cosine" in listing.stdout
    run_dir = tmp_path / "run"
    done = _cli("train", *TINY, "loss=[neg_cosine]", f"trainer.run_dir={run_dir}")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"loss/neg_cosine", "lr", "images_per_s"}
    assert -2.0 <= rows[0]["loss/neg_cosine"] <= 2.0  # scale 2 from the plugin's own yaml
    assert "nt_xent" not in (run_dir / "config.yaml").read_text()
    # without the plugin's yaml: add the loss by name, drop the default
    run_dir = tmp_path / "run2"
    done = _cli("train", *TINY, "+loss.neg_cosine.weight=1.0", "~loss.nt_xent", f"trainer.run_dir={run_dir}")
    assert done.returncode == 0, done.stderr
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss/neg_cosine" in row and "loss/nt_xent" not in row
