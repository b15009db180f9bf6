"""``docs/hooks.md``, generated from the hook specifications (``metacontrast.hookspecs``).

    python -m metacontrast.hooks_doc            # print the page
    python -m metacontrast.hooks_doc --write    # rewrite docs/hooks.md (in a source checkout)

The module's docstring is the page's introduction; each hook gets a section with its
signature, how it is called (every plugin, or first result) and its docstring.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from metacontrast import hookspecs

GENERATED_NOTE = ("<!-- generated from core/metacontrast/hookspecs.py by `python -m metacontrast.hooks_doc "
                  "--write`: edit the docstrings there, not this page -->")


def hook_names() -> list[str]:
    """The hooks in the order they are declared."""
    functions = [f for name, f in vars(hookspecs).items()
                 if name.startswith("metacontrast_") and inspect.isfunction(f)]
    return [f.__name__ for f in sorted(functions, key=lambda f: f.__code__.co_firstlineno)]


def _how_called(name: str) -> str:
    options = getattr(getattr(hookspecs, name), f"{hookspecs.PROJECT_NAME}_spec")
    return "first result" if options.get("firstresult") else "every plugin"


def render() -> str:
    """The page, as Markdown."""
    parts = [GENERATED_NOTE, inspect.getdoc(hookspecs) or ""]
    for name in hook_names():
        if name in hookspecs.SECTIONS:
            title, text = hookspecs.SECTIONS[name]
            parts.append(f"## {title}" + (f"\n\n{text.strip()}" if text.strip() else ""))
        function = getattr(hookspecs, name)
        signature = str(inspect.signature(function)).replace("'", "")
        parts.append(f"### `{name}`\n\n`{name}{signature}` ({_how_called(name)})\n\n"
                     f"{inspect.getdoc(function)}")
    return "\n\n".join(parts).rstrip() + "\n"


def page_path() -> Path:
    return Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite docs/hooks.md")
    args = parser.parse_args()
    if args.write:
        page_path().write_text(render())
        print(f"wrote {page_path()}")
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
