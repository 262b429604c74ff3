"""The API reference's layout: each module's public names by kind, functions first.

``docs/reference.md`` names each module with a placeholder,
``<!-- api: portsafe.socket_helper -->``, optionally followed by names to show first.
:func:`api_markdown` expands it into the module's docstring and then its ``__all__`` by
kind: functions first, then fixtures, classes and constants, errors last, each with its
own ``:::`` directive (so each gets a heading, a table-of-contents entry and an anchor
that other pages and docstrings link to). A name added to ``__all__`` shows up by itself.
The package is read statically by griffe, as mkdocstrings reads it: nothing is imported,
so the docs build needs no pytest for ``portsafe.pytest_plugin``.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

import griffe

API = re.compile(r"^<!-- api: (?P<module>[\w.]+)(?P<first>(?: [\w]+)*) -->$", re.MULTILINE)
KINDS = ("Functions", "Fixtures", "Classes", "Constants", "Errors")


@functools.cache
def package(name: str) -> griffe.Module:
    """portsafe as griffe reads it from ``src`` (statically: no import, no pytest needed)."""
    root = Path(__file__).resolve().parents[2] / "src"
    loaded = griffe.load(name, search_paths=[str(root)], resolve_aliases=True,
                         resolve_external=False)
    assert isinstance(loaded, griffe.Module)
    return loaded


def is_error(cls: griffe.Class, depth: int = 0) -> bool:
    """Whether ``cls`` derives from a builtin exception (through any of its bases)."""
    for base in cls.bases:
        path = str(base.canonical_path if isinstance(base, griffe.Expr) else base)
        if not path.startswith("portsafe."):  # a builtin or the standard library's
            module, _, name = path.rpartition(".")
            try:
                outside = getattr(importlib.import_module(module or "builtins"), name, None)
            except ImportError:
                outside = None
            if isinstance(outside, type) and issubclass(outside, BaseException):
                return True
            continue
        found = lookup(path)
        if isinstance(found, griffe.Class) and depth < 20 and is_error(found, depth + 1):
            return True
    return False


def lookup(path: str) -> object:
    """The object at a dotted path inside portsafe, aliases followed, or None."""
    top, _, rest = path.partition(".")
    if top != "portsafe":
        return None
    try:
        found = package(top)[rest] if rest else package(top)
        return found.final_target if isinstance(found, griffe.Alias) else found
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def kind_of(obj: object) -> str:
    """Which section of a module's reference a public name belongs in."""
    if isinstance(obj, griffe.Class):
        return "Errors" if is_error(obj) else "Classes"
    if isinstance(obj, griffe.Function):
        fixture = any("fixture" in str(decorator.value) for decorator in obj.decorators)
        return "Fixtures" if fixture else "Functions"
    return "Constants"


def api_markdown(module_name: str, first: list[str]) -> str:
    """The reference of one module: its docstring, then its public names by kind."""
    module = lookup(module_name)
    assert isinstance(module, griffe.Module), f"{module_name}: no such module in src/"
    names = [str(name) for name in module.exports or () if not str(name).startswith("_")]
    names.sort(key=lambda name: first.index(name) if name in first else len(first))
    sections: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for name in names:
        sections[kind_of(lookup(f"{module_name}.{name}"))].append(name)
    parts = [(f"::: {module_name}\n    options:\n      members: false\n"
              "      show_root_heading: true\n      heading_level: 2\n")]
    for kind, members in sections.items():
        if not members:
            continue
        parts.append(f"### {kind} {{ #{module_name}--{kind.lower()} }}\n")
        parts.extend(f"::: {module_name}.{name}\n    options:\n      heading_level: 4\n"
                     "      show_root_full_path: false\n" for name in members)
    return "\n".join(parts)


def expand(markdown: str) -> str:
    """``markdown`` with every ``<!-- api: ... -->`` placeholder expanded."""
    return API.sub(lambda m: api_markdown(m.group("module"), m.group("first").split()),
                   markdown)
