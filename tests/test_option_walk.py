"""Every option of every config group, plugins' included, selected alone on the command line
as a user would (``group=option``, ``loss=[option]``, ``+group=option``): it either takes
effect (the run is set up with that very component) or is refused in one line naming the
group or the option. A choice that is silently dropped, or built and never read, fails
here. (Each option with what it needs runs two steps in test_configs.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from metacontrast.cli import _errors, compose_with_plugins
from metacontrast.config_options import config_directories, config_groups, group_options
from metacontrast.plugins import PluginManager
from metacontrast.trainer import setup

from .conftest import TINY

MANAGER = PluginManager()
SEARCHPATH = MANAGER.config_searchpath()
LIST_GROUPS = {"loss", "eval"}
# groups composed only (they choose data, devices or whole recipes; every one of them runs
# two steps in test_configs.py): the rest are set up, building their component
COMPOSED_ONLY = {"data", "experiment", "method", "recipe", "trainer"}
BASE = [o for o in TINY if not o.startswith(("eval.", "experiment="))]  # the default config


def _primary_groups() -> set[str]:
    defaults = OmegaConf.load(config_directories()[0] / "config.yaml").defaults
    return {next(iter(d)) for d in defaults if isinstance(d, dict) or OmegaConf.is_dict(d)}


PRIMARY = _primary_groups()
WALK = [(g, o) for g in config_groups(SEARCHPATH) for o in group_options(g, SEARCHPATH)]


def _selection(group: str, option: str) -> str:
    if group in LIST_GROUPS:
        return f"{group}=[{option}]"
    return f"{group}={option}" if group in PRIMARY else f"+{group}={option}"


def _option_file(group: str, option: str) -> dict:
    for directory in config_directories(SEARCHPATH):
        path = directory / group / f"{option}.yaml"
        if path.is_file():
            return OmegaConf.to_container(OmegaConf.load(path)) or {}
    raise AssertionError(f"{group}/{option}.yaml not found")


def _assert_took_effect(group: str, option: str, cfg, run) -> None:
    """The component the option names is the one the run built."""
    own = _option_file(group, option)
    c = run.components
    built = {"views": c.view_generator, "episode": c.episode_builder, "encoder": c.model.encoder,
             "head": c.model.head, "solver": c.model.solver, "memory": c.memory}
    if group in built:
        name = own.get("name")
        if name is None:  # solver=none, memory=none: nothing is built
            assert built[group] is None, (group, option)
        else:
            assert cfg[group].name == name and name == built[group].NAME, (group, option)
    elif group == "loss":
        assert set(c.model.losses) == set(own), (option, list(c.model.losses))
    elif group == "eval":
        assert set(c.evaluators) == set(own), (option, list(c.evaluators))
    elif group == "optim":
        assert cfg.optim.name == own["name"] and type(run.optimizer).__name__.lower().startswith(
            {"lars": "lars", "sgd": "sgd", "adam": "adam", "adamw": "adamw"}.get(own["name"], ""))
    elif group == "teacher":
        assert c.model.teacher is not None
    else:  # view transforms and the losses an option adds (task_aug, aux, mix)
        transforms = {t.NAME for t in c.view_transforms}
        assert set(own.get("view_transforms", {})) <= transforms, (group, option, transforms)
        assert set(own.get("loss", {})) <= set(c.model.losses), (group, option)


def test_the_walk_covers_every_group_and_plugins_options():
    groups = {g for g, _ in WALK}
    assert {"views", "episode", "encoder", "head", "solver", "loss", "memory", "eval", "optim", "teacher",
            "task_aug", "aux", "mix", "data", "method", "experiment", "recipe", "trainer"} <= groups
    assert ("encoder", "timm") in WALK and ("eval", "knn_faiss") in WALK  # plugins' own options


@pytest.mark.parametrize(("group", "option"), WALK, ids=lambda x: str(x))
def test_an_option_chosen_alone_takes_effect_or_is_refused_naming_it(group, option, tmp_path):
    selection = _selection(group, option)
    try:
        cfg, plugins = compose_with_plugins([*BASE, selection, f"trainer.run_dir={tmp_path}"])
        if group in COMPOSED_ONLY:
            return
        run = setup(cfg, plugins, run_dir=Path(tmp_path))
    except _errors() as err:
        message = str(err)
        assert "\n" not in message.strip(), message
        assert group in message or option in message, f"{selection}: refused without naming it: {message}"
        return
    _assert_took_effect(group, option, cfg, run)


def test_a_knn_k_above_the_bank_is_refused_before_training_and_leaves_no_run(tmp_path, capsys):
    from metacontrast.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "eval.knn.k=100000", f"trainer.run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert "eval.knn.k: 100000 neighbours, but the kNN bank holds 200 labelled images; choose k <= 200" in err
    assert not run_dir.exists()  # nothing of a run that never started is left to re-enter


@pytest.mark.parametrize("override", ["loss.nt_xent.weight=nan", "loss.nt_xent.temperature=inf",
                                      "optim.lr=nan", "views.crop_scale=[0.2,nan]"])
def test_a_number_that_is_not_finite_is_refused_at_composition_naming_its_key(override):
    from metacontrast.config import ConfigError, compose_config

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}(\.1)?: must be a finite number"):
        compose_config([override])


def test_a_loss_from_outside_that_declares_nothing_is_trusted_with_any_input():
    """Outside plugins written before ``Loss.READS`` keep working: undeclared reads anything."""
    from metacontrast.builder import check_inputs_are_read
    from metacontrast.interfaces import Loss
    from metacontrast.plugins import as_module

    class ReadsTheQueue(Loss):
        NAME = "reads_the_queue"

    from metacontrast import hookimpl

    @hookimpl
    def metacontrast_register_losses():
        return [ReadsTheQueue]

    manager = PluginManager(extra=[as_module("outside_loss", metacontrast_register_losses=metacontrast_register_losses)])
    from metacontrast.config import compose_config

    cfg = compose_config([*BASE, "memory=queue", "memory.source=z", "+loss.reads_the_queue.weight=1.0"])
    check_inputs_are_read(cfg, manager)  # nt_xent reads no memory, the outside loss may
    cfg = compose_config([*BASE, "memory=queue", "memory.source=z"])
    with pytest.raises(Exception, match="memory: memory=queue is selected, but no selected loss reads a memory"):
        check_inputs_are_read(cfg, manager)
