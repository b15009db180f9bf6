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
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_a_failed_save_during_training_exits_non_zero_naming_the_path(tmp_path, capsys, monkeypatch):
    import torch

    run = tmp_path / "run"
    overrides = [*TINY, f"trainer.run_dir={run}", "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0",
                 "trainer.max_steps=3", "evaluation.baselines=[]"]
    real_save, calls = torch.save, []

    def fails_on_the_second_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fails_on_the_second_save)
    assert main(["train", *overrides]) == 1  # the operating system refused: exit 1
    out = capsys.readouterr()
    assert f"could not write checkpoint {run}/checkpoints/step-000000002.pt" in out.err
    assert "No space left on device" in out.err and "saved" not in (out.out + out.err).lower()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000000001.pt"]  # no partial file
    assert not (run / "results.json").exists()
