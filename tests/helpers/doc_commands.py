"""The commands and Python blocks of a docs page, to run them as written.

A page's ```sh blocks hold ``metacontrast`` commands (one a line, with or without the
``.venv/bin/`` prefix); its ```python blocks run after them, in the same directory."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
PREFIXES = (".venv/bin/metacontrast", "metacontrast")


def shell_commands(page: str) -> list[list[str]]:
    """Each ``metacontrast`` command of the page's sh blocks, as the argument list after
    the program name (without the environment assignments it may start with)."""
    return [args for _, args in shell_commands_with_env(page)]


def shell_commands_with_env(page: str) -> list[tuple[dict[str, str], list[str]]]:
    """Each command as ``(environment assignments, arguments after the program name)``."""
    text = (DOCS / page).read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            env = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            if words and words[0] in PREFIXES:
                commands.append((env, words[1:]))
            elif words:
                raise AssertionError(f"{page}: a sh block line that is not a metacontrast command: {line!r}")
    return commands


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
