"""The README's Python example runs as written (in a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "metacontrast.compose(" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip().endswith("torch.Size([1, 512])")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "results.json").is_file() and (run_dir / "resnet18.pt.json").is_file()
