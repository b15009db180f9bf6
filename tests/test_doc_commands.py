"""The docs' commands run as written, in a scratch directory (training shortened to two
steps on the small digits: the commands' other arguments are the page's own)."""

from __future__ import annotations

import pytest

from metacontrast.cli import main

from .conftest import TINY
from .helpers.doc_commands import python_blocks, shell_commands, shell_commands_with_env

# the page chooses the experiment and the loggers
SHORT = [*(o for o in TINY[1:] if not o.startswith("logger=")), "evaluation.baselines=[]", "trainer.progress=false"]


def _run(command: list[str]) -> int:
    return main([*command, *SHORT] if command[0] == "train" else command)


def test_the_export_pages_commands_and_snippets_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = shell_commands("export.md")
    assert [c[0] for c in commands] == ["train", "export", "export", "export"]
    for command in commands:
        assert _run(command) == 0, command
    capsys.readouterr()
    blocks = python_blocks("export.md")
    assert len(blocks) == 3
    ran = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "docs/export.md", "exec"), namespace)
        ran.append(namespace)
    assert [n["features"].shape for n in ran if "features" in n] == [(8, 512)]  # the ONNX block
    assert sum("model" in n for n in ran) == 2  # the torchvision blocks, loaded strictly
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["runs", "r18.pt", "r18.pt.json", "r18.safetensors", "r18.safetensors.json", "r18.onnx", "r18.onnx.json"])


def test_the_logging_pages_commands_run_and_log_where_they_say(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    for key, value in {"WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_CONFIG_DIR": str(tmp_path / "wb"),
                       "WANDB_CACHE_DIR": str(tmp_path / "wb"), "WANDB_DATA_DIR": str(tmp_path / "wb")}.items():
        monkeypatch.setenv(key, value)
    commands = shell_commands_with_env("logging.md")
    assert len(commands) == 3
    for env, command in commands:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            assert _run(command) == 0, command
    capsys.readouterr()
    runs = tmp_path / "runs"
    assert (runs / "logged" / "tensorboard").is_dir() and list((runs / "logged" / "wandb").glob("offline-run-*"))
    assert (runs / "tracked" / "mlflow_run.json").is_file() and (tmp_path / "mlruns").is_dir()
    assert not (runs / "quiet" / "tensorboard").exists() and (runs / "quiet" / "metrics.jsonl").is_file()


@pytest.mark.parametrize("page", ["export.md", "logging.md"])
def test_every_sh_block_line_is_a_command(page):
    assert shell_commands(page)
