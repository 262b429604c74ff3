"""The docs show public names only, and so does ``dir(portsafe)``.

A name with a leading underscore (``portsafe._auto``, ``portsafe._core.ranges``) may change
or go away in any release; an example that uses one teaches users to depend on it.
docs/design.md describes the internals and may name them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import portsafe

ROOT = Path(__file__).resolve().parent.parent
INTERNALS = {"design.md"}
DOCS = [ROOT / "README.md",
        *(path for path in sorted((ROOT / "docs").glob("*.md")) if path.name not in INTERNALS)]
FENCE = re.compile(r"^(?P<fence>```+)(?P<language>[^\s`]*)[^\n]*\n(?P<body>.*?)^(?P=fence)$",
                   re.M | re.S)
OUTPUT = {"", "text"}  # what a program printed, shown to the reader: not an example
PRIVATE = re.compile(r"\bportsafe(?:\.[A-Za-z]\w*)*\._\w+")


def example_code(language: str, body: str) -> str:
    """The part of a block that a reader would copy: a console block's ``$`` commands."""
    if language == "console":
        return "\n".join(line for line in body.splitlines() if line.startswith("$ "))
    return body


def private_names(text: str) -> list[tuple[int, str]]:
    """(line, name) of each private portsafe name in the examples of a Markdown text."""
    found: list[tuple[int, str]] = []
    for block in FENCE.finditer(text):
        if block.group("language") in OUTPUT:
            continue
        code = example_code(block.group("language"), block.group("body"))
        first_line = text.count("\n", 0, block.start("body")) + 1
        found.extend((first_line + code.count("\n", 0, match.start()), match.group())
                     for match in PRIVATE.finditer(code))
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_examples_use_public_names(path):
    """No code block of the docs uses a portsafe name with a leading underscore."""
    found = private_names(path.read_text(encoding="utf-8"))
    assert not found, (f"{path.name} uses private names in examples: "
                       + ", ".join(f"line {line}: {name}" for line, name in found)
                       + "; use (or add) a public name")


def test_the_check_finds_private_names():
    """The check sees imports, attribute paths and console commands, not printed output."""
    text = ("```python\nfrom portsafe._auto import switch\nportsafe._core.ranges.X\n```\n"
            "```console\n$ python -m portsafe._services.keeper\nportsafe._x printed\n```\n"
            "```text\nportsafe._shown_only\n```\n"
            "```python\nimport portsafe\nportsafe.auto.enable()\n```\n")
    assert [name for _, name in private_names(text)] == [
        "portsafe._auto", "portsafe._core", "portsafe._services"]


def test_dir_shows_public_names_only():
    """``dir(portsafe)``: no helper of the module itself (``TYPE_CHECKING``,
    ``annotations``, ``_LAZY``), only ``__all__``, public submodules and dunders."""
    listed = dir(portsafe)
    leaked = [name for name in listed
              if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))]
    assert not leaked
    assert "TYPE_CHECKING" not in listed
    assert "annotations" not in listed
    assert set(portsafe.__all__) <= set(listed)
    for name in listed:
        if not name.startswith("_"):
            assert name in portsafe.__all__ or type(getattr(portsafe, name)).__name__ == (
                "module"), name
