"""docs/writing_plugins.md's view generator, view transform and evaluator, as printed.

The page's code blocks are run here as an outside author would use them: registered as
an in-process plugin, their YAML files on the config search path, two training steps
with the generator and the transform, and the evaluator selected alone after the
README's experiment. A change to the page that breaks its code fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metacontrast import hookimpl
from metacontrast.config import ConfigError, compose_config
from metacontrast.plugins import PluginManager, as_module, describe
from metacontrast.trainer import fit

from .conftest import TEST_DEVICE

PAGE = Path(__file__).resolve().parent.parent / "docs" / "writing_plugins.md"
SECTIONS = ("## A view generator", "## A view transform, with a config option", "## An evaluator")


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end > 0 else None]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def doc_plugin(tmp_path_factory):
    """The page's classes in one module, and a config directory with its YAML files."""
    text = PAGE.read_text()
    namespace: dict = {}
    configs = tmp_path_factory.mktemp("doc_configs")
    for title in SECTIONS:
        section = _section(text, title)
        for code in _blocks(section, "python"):
            if "ViewTransform" in code and "import" not in code.split("class")[0]:
                code = "from metacontrast.interfaces import ViewTransform\n" + code
            exec(compile(code, f"{PAGE.name}: {title}", "exec"), namespace)
        for path, yaml in zip(re.findall(r"`configs/([a-z_/]+\.yaml)`", section), _blocks(section, "yaml"),
                              strict=False):
            (configs / path).parent.mkdir(parents=True, exist_ok=True)
            (configs / path).write_text(yaml)
    generators = [namespace["FlipViews"], namespace["GaussianNoise"]]
    module = as_module("docplugin",
                       metacontrast_register_view_generators=hookimpl(lambda: generators),
                       metacontrast_register_evaluators=hookimpl(lambda: [namespace["NearestMean"]]))
    return PluginManager(autoload=True, extra=[module]), configs


def _cfg(configs: Path, tmp_path: Path, *overrides: str):
    return compose_config(["experiment=digits_simclr", "trainer=debug", f"trainer.device={TEST_DEVICE}",
                           "trainer.resume=never", "trainer.batch_size=16", "trainer.max_steps=2",
                           "trainer.epochs=1", "evaluation.train_subset=200", "data.test_subset=100",
                           f"trainer.run_dir={tmp_path}", f"hydra.searchpath=[file://{configs}]", *overrides])


def test_the_pages_generator_transform_and_evaluator_train_and_evaluate(doc_plugin, tmp_path):
    plugins, configs = doc_plugin
    cfg = _cfg(configs, tmp_path, "views=flips", "views.p=0.3", "+task_aug=gaussian_noise",
               "view_transforms.gaussian_noise.std=0.05", "eval=[nearest_mean]")
    assert list(cfg.eval) == ["nearest_mean"]  # the experiment's eval.knn.k adds no kNN
    results = fit(cfg, plugins)
    assert results["steps"] == 2
    metrics = results["metrics"]["pretrained"]
    assert list(metrics) == ["nearest_mean_top1"] and 0 <= metrics["nearest_mean_top1"] <= 1
    listing = describe(plugins)
    assert "view_generator:    flips" in listing and "view_transform:    gaussian_noise" in listing


def test_a_transform_named_as_the_generator_and_the_reverse_are_named(doc_plugin, tmp_path):
    plugins, configs = doc_plugin
    with pytest.raises(ConfigError, match=r"views.name: 'gaussian_noise' is a view transform .* generators: "
                                          r".*flips"):
        fit(_cfg(configs, tmp_path, "views.name=gaussian_noise"), plugins)
    with pytest.raises(ConfigError, match=r"view_transforms.flips: 'flips' is a view generator, not a view "
                                          r"transform; use it as views=flips"):
        fit(_cfg(configs, tmp_path, "+view_transforms.flips.p=0.5"), plugins)
