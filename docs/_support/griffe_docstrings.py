"""A griffe extension for the API reference: Sphinx roles in docstrings become links.

portsafe's docstrings name other objects the Sphinx way (``:func:`listen```,
``:class:`~portsafe.Reservation```), which Markdown would show as raw text. After the
package is loaded, this rewrites every docstring: a role whose target the reference
shows becomes a cross-reference to it (``[`listen()`][portsafe.listen]``, resolved by
mkdocs-autorefs); any other role (a private helper, a name outside portsafe) becomes
plain code. The source files keep their roles, so ``help()`` and Sphinx-aware tools read
them as before.

A target is looked up as written, then relative to the object the docstring belongs to
(its class, its module), then under ``portsafe``; private definitions count as the public
name that exports them (``portsafe._net.handoff.listen`` is ``portsafe.listen``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>func|meth|class|exc|data|attr|mod|obj|const)"
                  r":`(?P<body>[^`]+)`")
TITLED = re.compile(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>")
CALLABLE = {"func", "meth"}


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the package as Markdown."""

    def __init__(self, modules: list[str] | None = None) -> None:
        """``modules``: the modules the reference page documents (``::: name``)."""
        self.modules = modules or ["portsafe"]

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Once the package is loaded: map the public names, then rewrite docstrings."""
        public = public_paths(pkg, self.modules)
        for obj in walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, obj, public)


def lookup(pkg: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    """The object at ``path`` (``portsafe.x.y``) in ``pkg``, or None."""
    if path == pkg.path:
        return pkg
    if not path.startswith(pkg.path + "."):
        return None
    try:
        found: griffe.Object | griffe.Alias = pkg[path[len(pkg.path) + 1:]]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return found


def canonical(pkg: griffe.Module, obj: griffe.Object | griffe.Alias) -> griffe.Object | None:
    """The definition an alias stands for, found in ``pkg`` (None if it is elsewhere)."""
    seen = 0
    while isinstance(obj, griffe.Alias):
        seen += 1
        target = lookup(pkg, obj.target_path)
        if target is None or seen > 10:
            return None
        obj = target
    return obj


def public_paths(pkg: griffe.Module, modules: list[str]) -> dict[str, str]:
    """Definition path or public path -> the public path the reference shows it under.

    Only objects with a docstring count: the reference leaves out the others, so a link
    to one would have no target.
    """
    public: dict[str, str] = {}

    def add(defined: griffe.Object, shown: str) -> None:
        if defined.docstring is None:
            return
        public.setdefault(defined.path, shown)
        public[shown] = shown
        if defined.is_class:
            for name, member in defined.members.items():
                target = canonical(pkg, member)
                if not name.startswith("_") and target is not None:
                    add(target, f"{shown}.{name}")

    for module_path in modules:
        module = lookup(pkg, module_path)
        if not isinstance(module, griffe.Module):
            continue
        public[module.path] = module.path
        names = module.exports if module.exports is not None else [
            name for name in module.members if not name.startswith("_")]
        for name in names:
            member = module.members.get(str(name))
            target = canonical(pkg, member) if member is not None else None
            if target is not None:
                add(target, f"{module.path}.{name}")
    return public


def walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined in it (aliases are left to their targets)."""
    yield obj
    for member in obj.members.values():
        if not isinstance(member, griffe.Alias):
            yield from walk(member)


def scopes(obj: griffe.Object) -> Iterator[str]:
    """The paths a relative target may be relative to, nearest first."""
    current: griffe.Object | None = obj
    while current is not None:
        if not current.is_function and not current.is_attribute:
            yield current.path
        current = current.parent


def resolve(target: str, obj: griffe.Object, public: dict[str, str]) -> str | None:
    """The public path a role's target means in ``obj``'s docstring, or None."""
    candidates = [target, *(f"{scope}.{target}" for scope in scopes(obj)),
                  f"portsafe.{target}"]
    for candidate in candidates:
        if candidate in public:
            return public[candidate]
    return None


def convert(text: str, obj: griffe.Object, public: dict[str, str]) -> str:
    """``text`` with each Sphinx role rewritten as a Markdown link or code span."""

    def replace(match: re.Match[str]) -> str:
        body = match.group("body").strip()
        titled = TITLED.fullmatch(body)
        title = titled.group("title") if titled else None
        target = titled.group("target") if titled else body
        short = target.startswith("~")
        target = target.lstrip("~.")
        if title is None:
            title = target.rsplit(".", 1)[-1] if short else target
            if match.group("role") in CALLABLE:
                title += "()"
        where = resolve(target, obj, public)
        if where is None:
            return f"`{title}`"
        return f"[`{title}`][{where}]"

    return ROLE.sub(replace, text)
