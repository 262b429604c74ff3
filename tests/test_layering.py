"""The layering rule of ``src/portsafe``, read from the code's own imports.

The folders are the layers. From the bottom:

0. ``_errors``: the exception hierarchy.
1. ``_settings``, ``_platform``, ``_system``, ``_unixsock``: the standard-library-only base
   (settings, which lock system and OS facilities this process uses,
   what the OS says about processes, unix-socket plumbing).
2. ``_locking/``: held while locked: names (Linux), lock files (elsewhere), the claim.
3. ``_core/``: candidates, the probe, the walk, reservations, the port-server client.
4. ``_net/``: hand-off, waiting, who holds a port, argument checks. Above the core, not
   beside it: ``listen()`` binds a port the core reserves, and ``who`` reads the holders
   of names.
5. ``_auto/`` and ``_services/``: auto mode; the keeper and the port server. Neither
   imports the other.
6. ``_cli/``, ``_pytest/`` and the public modules (``portsafe``, ``socket_helper``,
   ``script_helper``, ``testing``, ``pytest_plugin``, ``__main__``).

The rule: a module imports only modules of a lower layer (within one package freely, and
the base modules of layers 0 and 1 each other; ``_auto`` and ``_services`` not each
other); and across packages only names without a leading underscore, nor does it read
another package's private attribute through a module it imported. Imports under
``TYPE_CHECKING`` are exempt: they cost nothing at run time. Imports inside functions
count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "portsafe"

LAYERS = {
    "_errors": 0,
    "_settings": 1, "_platform": 1, "_system": 1, "_unixsock": 1,
    "_locking": 2,
    "_core": 3,
    "_net": 4,
    "_auto": 5, "_services": 5,
    "_cli": 6, "_pytest": 6,
    "_testing": 6,
}
TOP = 6
APART = {frozenset({"_auto", "_services"})}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def home(module: str) -> str:
    """The package (or base module) of a dotted portsafe module: its layer's key."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(module: str) -> int:
    return LAYERS.get(home(module), TOP)


def is_package(module: str) -> bool:
    return (SRC.parent.joinpath(*module.split(".")) / "__init__.py").exists()


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:``."""
    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and \
                node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports_of(path: Path) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """((line, module imported, name imported or ""), (line, private attribute read
    through a module of another package)) of *path*, at run time."""
    me = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = runtime_nodes(tree)
    found: list[tuple[int, str, str]] = []
    foreign: dict[str, str] = {}  # local name -> module of another package
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, "") for alias in node.names
                         if alias.name.startswith("portsafe."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                (node.module == "portsafe" or node.module.startswith("portsafe.")):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if (SRC.parent / Path(*full.split("."))).with_suffix(".py").exists() or \
                        is_package(full) or full.endswith("._speedups"):
                    found.append((node.lineno, full, ""))
                    if home(full) != home(me):
                        foreign[alias.asname or alias.name] = full
                else:
                    found.append((node.lineno, node.module, alias.name))
    reads = [(node.lineno, f"{node.value.id}.{node.attr}") for node in nodes
             if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and
             node.value.id in foreign and node.attr.startswith("_") and
             not node.attr.startswith("__")]
    return found, reads


MODULES = sorted(path for path in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_go_down(path: Path) -> None:
    me = module_name(path)
    mine = home(me)
    problems = []
    found, reads = imports_of(path)
    for line, module, name in found:
        if module == "portsafe" and not name:
            continue
        theirs = home(module)
        if theirs != mine:
            if layer(module) > layer(me) or (layer(module) == layer(me) > 1 and
                                              mine in LAYERS and theirs in LAYERS):
                problems.append(f"line {line}: {me} (layer {layer(me)}) imports {module} "
                                f"(layer {layer(module)})")
            if name.startswith("_") and not name.startswith("__"):
                problems.append(f"line {line}: {me} imports the private {module}.{name}")
        if frozenset({mine, theirs}) in APART:
            problems.append(f"line {line}: {me} imports {module}: {mine} and {theirs} "
                            f"must not import each other")
    problems.extend(f"line {line}: {me} reads {attr} of another package's module"
                    for line, attr in reads)
    assert problems == []


def test_every_module_has_a_layer() -> None:
    """A new folder needs its place in the rule: add it to LAYERS."""
    folders = {p.parent.name for p in MODULES if p.parent != SRC}
    base = {p.stem for p in SRC.glob("_*.py") if p.stem != "__init__" and
            p.stem != "__main__"}
    assert folders | base <= set(LAYERS) | {"__pycache__"}


def test_private_packages_have_empty_inits() -> None:
    for init in SRC.glob("_*/__init__.py"):
        assert init.read_text() == "", f"{init} is not empty"
