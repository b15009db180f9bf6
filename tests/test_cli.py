"""The command line: train, eval of a checkpoint, plugins."""

from __future__ import annotations

import json

from metacontrast.checkpoint import list_checkpoints
from metacontrast.cli import main

from .conftest import TINY


def test_train_then_eval_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, f"trainer.run_dir={run}"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert set(results["metrics"]) == {"pretrained", "random_init", "raw_pixels"}
    assert 0.0 <= results["metrics"]["pretrained"]["knn_top1"] <= 1.0
    assert results["steps"] == 2 and results["protocols"]["knn"]["k"] == 5
    ckpt = list_checkpoints(run / "checkpoints")[-1]
    capsys.readouterr()
    assert main(["eval", f"checkpoint={ckpt}", "eval.knn.k=3"]) == 0
    evaluated = json.loads((run / "eval" / "results.json").read_text())
    assert evaluated["protocols"]["knn"]["k"] == 3
    assert evaluated["checkpoint"] == str(ckpt)
    # the same encoder and data: the linear probe (deterministic) agrees with training's report
    assert evaluated["metrics"]["pretrained"]["linear_top1"] == results["metrics"]["pretrained"]["linear_top1"]


def test_eval_refuses_a_checkpoint_from_another_config(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, f"trainer.run_dir={run}"]) == 0
    ckpt = list_checkpoints(run / "checkpoints")[-1]
    capsys.readouterr()
    assert main(["eval", f"checkpoint={ckpt}", "encoder.hidden=32"]) == 2
    assert "encoder: checkpoint" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={tmp_path / 'missing.pt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_plugins_and_usage(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "builtin  [metacontrast" in out and "kornia  [metacontrast-kornia" in out
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
