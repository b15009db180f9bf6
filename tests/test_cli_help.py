"""Every command helps itself, and no override is silently ignored."""

from __future__ import annotations

import pytest

from metacontrast.cli import COMMANDS, main
from metacontrast.config_options import config_groups, group_options


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_help_and_exits_0(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: metacontrast {command}") and "exit status:" in out
    assert main(["help", command]) == 0
    assert capsys.readouterr().out == out


def test_the_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
    assert main([]) == 2  # no command: the help, on stderr, and a usage error


@pytest.mark.parametrize("argv, named", [
    (["train", "--bogus"], "--bogus"),
    (["report", "runs/x", "--outt", "y"], "--outt"),
    (["train", "trainer.max_steps"], "'trainer.max_steps' is not an override"),
    (["eval", "trainer.seed=1"], "needs checkpoint=PATH"),
    (["multirun", "--dir"], "--dir: expected one argument"),
    (["help", "trian"], "unknown command 'trian'"),
])
def test_unknown_flags_and_missing_arguments_fail_naming_them(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


# the hydra settings a user might try: each is refused naming what to use instead
@pytest.mark.parametrize("override, advice", [
    ("hydra.run.dir=/tmp/x", "trainer.run_dir=DIR"),
    ("hydra.sweep.dir=/tmp/x", "metacontrast multirun --dir DIR"),
    ("hydra.job.name=mine", "trainer.run_dir=DIR"),
    ("hydra.job.chdir=true", "hydra.searchpath"),
    ("hydra/launcher=joblib", "metacontrast multirun"),
    ("hydra/sweeper=optuna", "metacontrast multirun"),
    ("+hydra.verbose=true", "hydra.searchpath"),
])
def test_hydra_settings_are_refused_not_ignored(override, advice, capsys, tmp_path):
    for command in (["config"], ["train", f"trainer.run_dir={tmp_path / 'run'}"],
                    ["multirun", "--dir", str(tmp_path / "sweep"), "trainer.seed=0,1"]):
        assert main([*command, override]) == 2
        err = capsys.readouterr().err
        assert override.lstrip("+").split("=")[0] in err and advice in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_a_sweep_with_a_misspelt_option_fails_before_any_job_runs(tmp_path, capsys):
    assert main(["multirun", "--dir", str(tmp_path / "sweep"), "method=simclr,protonett"]) == 2
    err = capsys.readouterr().err
    assert "method=protonett: no such option" in err and "(in the job method=protonett)" in err
    assert not (tmp_path / "sweep").exists()


def test_hydra_searchpath_is_honoured(tmp_path, capsys):
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "mine.yaml").write_text("name: conv4\nhidden: 8\n")
    assert main(["config", f"hydra.searchpath=[file://{tmp_path}]", "encoder=mine"]) == 0
    assert "hidden: 8" in capsys.readouterr().out


# groups a user adds to a method (+group=option) rather than changes
APPENDED = ("aux", "mix", "recipe", "task_aug", "teacher")


@pytest.mark.parametrize("group", config_groups())
def test_a_misspelt_option_of_every_group_fails_listing_the_options(group, capsys):
    options = group_options(group)
    assert options, group
    misspelt = options[0] + "x"
    value = f"[{misspelt}]" if group in ("loss", "eval") else misspelt
    plus = "+" if group in APPENDED else ""
    assert main(["config", f"{plus}{group}={value}"]) == 2
    err = capsys.readouterr().err
    assert f"{group}={misspelt}: no such option; the options of {group} are: " in err
    assert all(o in err for o in options)


def test_a_misspelt_experiment_fails_instead_of_training_the_default_job(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "experiment=cifar10_simclr_resnt18", f"trainer.run_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "experiment=cifar10_simclr_resnt18: no such option" in err
    assert "cifar10_simclr_resnet18" in err and "table6/simclr_baseline" in err  # sub-folders listed too
    assert not run.exists()


def test_a_brace_pattern_the_shell_expanded_is_refused_showing_the_quoting(capsys):
    # what bash makes of: data.shards.train=train-{000000..000002}.tar (unquoted)
    expanded = [f"data.shards.train=train-{i:06d}.tar" for i in range(3)]
    assert main(["config", "data=webdataset", *expanded]) == 2
    err = capsys.readouterr().err
    assert "data.shards.train: given 3 times (train-000000.tar ... train-000002.tar)" in err
    assert "\"data.shards.train='train-{000000..000099}.tar'\"" in err
    # a key given twice on purpose (a later value replacing an earlier one) still composes
    assert main(["config", "trainer.seed=1", "trainer.seed=2", "optim.lr=1e-3", "optim.lr=2e-3"]) == 0
    out = capsys.readouterr().out
    assert "seed: 2" in out and "lr: 0.002" in out
