"""Every key of the typed config schema, walked with values out of its range: the command
line exits 2 with one line naming the key and what it allows, and no traceback."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from metacontrast import cli
from metacontrast.config import Config, compose_config
from metacontrast.schema_checks import RULES, UNCHECKED

from .launch import HANG_GUARD_S

# key -> values a user might type that must be refused at composition
BAD: dict[str, list[str]] = {
    "data.image_size": ["-1"],
    "data.train_subset": ["-5"],
    "data.test_subset": ["-1"],
    "data.seed": ["-1"],
    "data.mean": ["[0.5,1.5,0.5]", "[-0.1]"],
    "data.std": ["[0.2,0.0,0.2]", "[-1.0]"],
    "data.workers": ["-2"],
    "data.decode": ["gpu"],
    "data.bad_files": ["ignore"],
    "data.max_bad_fraction": ["1.5", "-0.01", "nan"],
    "data.table.test_fraction": ["0", "1", "1.2"],
    "data.table.split_seed": ["-3"],
    "optim.name": ["rmsprop"],
    "optim.lr": ["-0.1", "nan", "inf"],
    "optim.weight_decay": ["-1e-6", "inf"],
    "optim.momentum": ["1.0", "-0.9"],
    "optim.betas": ["[0.9]", "[0.9,1.0]", "[0.9,0.999,0.1]"],
    "optim.eta": ["0", "-0.001"],
    "optim.warmup_epochs": ["-1", "inf"],
    "optim.schedule": ["linear"],
    "optim.min_lr": ["-1e-3"],
    "trainer.epochs": ["0", "-1"],
    "trainer.max_steps": ["-1"],
    "trainer.time_limit_s": ["-1", "nan", "inf"],
    "trainer.batch_size": ["0", "-4"],
    "trainer.accumulate": ["0"],
    "trainer.precision": ["fp8", "half"],
    "trainer.compile": ["graph"],
    "trainer.cuda_graph_warmup": ["1"],
    "trainer.device": ["tpu", "cuda:x"],
    "trainer.seed": ["-1"],
    "trainer.forward_chunks": ["0"],
    "trainer.log_every": ["0"],
    "trainer.checkpoint_every": ["-10"],
    "trainer.keep_checkpoints": ["-1"],
    "trainer.eval_every_epochs": ["-1"],
    "trainer.threads": ["-2"],
    "trainer.grad_clip_norm": ["-1", "nan"],
    "trainer.grad_clip_value": ["-0.5"],
    "trainer.nonfinite": ["ignore"],
    "trainer.max_consecutive_skips": ["-1"],
    "evaluation.baselines": ["[random]", "[raw_pixels,imagenet]"],
    "evaluation.train_subset": ["-1"],
    "evaluation.batch_size": ["0"],
    "evaluation.projection_points": ["-1"],
    "evaluation.projection": ["umap"],
    "evaluation.target_value": ["nan", "inf"],
    "teacher.momentum": ["1.5", "-0.1"],
    "teacher.final_momentum": ["2"],
    "teacher.schedule": ["step"],
}

# values at the edges that stay allowed
EDGES = ["optim.lr=0", "data.max_bad_fraction=1", "data.max_bad_fraction=0", "trainer.max_steps=0",
         "trainer.time_limit_s=0", "trainer.time_limit_s=0.5",
         "trainer.batch_size=1", "optim.momentum=0", "trainer.device=cuda:1", "trainer.compile=true",
         "trainer.precision=BF16", "evaluation.baselines=[]", "optim.warmup_epochs=0.5"]

# keys where the test sets another option first, so that the key exists
NEEDS = {"teacher.": ["method=byol"]}


def _leaf_keys(schema: type, prefix: str = "") -> list[tuple[str, object]]:
    """Every leaf key of a schema dataclass, with its type."""
    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        target = inner[0] if typing.get_origin(kind) is typing.Union and len(inner) == 1 else kind
        if dataclasses.is_dataclass(target):
            keys += _leaf_keys(target, f"{prefix}{f.name}.")
        elif kind is not typing.Any:  # component sections: checked by their own Config
            keys.append((f"{prefix}{f.name}", kind))
    return keys


def test_every_schema_key_is_either_checked_or_free_and_the_test_walks_every_checked_one():
    keys = dict(_leaf_keys(Config))
    assert set(RULES) | UNCHECKED == set(keys), "a schema key is neither in RULES nor in UNCHECKED"
    assert not set(RULES) & UNCHECKED
    assert set(BAD) == set(RULES), "every checked key has out-of-range values in this test"
    for key, kind in keys.items():  # a boolean has no out-of-range value; everything else is looked at
        if kind is bool:
            assert key in UNCHECKED


@pytest.mark.parametrize("key", sorted(BAD))
def test_out_of_range_values_exit_2_naming_the_key_and_range(key, capsys):
    prefix = next((v for k, v in NEEDS.items() if key.startswith(k)), [])
    for value in BAD[key]:
        code = cli.main(["config", *prefix, f"{key}={value}"])
        out, err = capsys.readouterr()
        assert code == 2, (key, value, out)
        assert err.startswith(f"metacontrast: error: {key}: must be "), (key, value, err)
        assert "Traceback" not in err and err.count("\n") == 1, err


def test_values_at_the_edges_of_their_ranges_compose():
    for override in EDGES:
        compose_config([override])


def test_a_stored_config_is_checked_like_a_composed_one():
    from metacontrast.config import ConfigError, from_yaml, to_yaml

    text = to_yaml(compose_config([])).replace("batch_size: 256", "batch_size: -4", 1)
    with pytest.raises(ConfigError, match=r"trainer.batch_size: must be >= 1, got -4 \(in the stored config\)"):
        from_yaml(text)


def test_the_cases_that_once_gave_tracebacks_now_exit_2(tmp_path, capsys):
    for override in ["trainer.batch_size=-4", "optim.lr=-0.1"]:
        assert cli.main(["train", override, f"trainer.run_dir={tmp_path / 'run'}"]) == 2
        key = override.split("=")[0]
        assert capsys.readouterr().err.startswith(f"metacontrast: error: {key}: must be ")
    # and from a real process, where a traceback would show
    proc = subprocess.run([sys.executable, "-m", "metacontrast.cli", "train", "trainer.batch_size=0",
                           f"trainer.run_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "metacontrast: error: trainer.batch_size: must be >= 1, got 0\n"
    assert not (tmp_path / "run").exists()
