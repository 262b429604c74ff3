"""Alias ``test.support.<helper>`` to ``portsafe.<helper>`` in this interpreter.

Installed by ``sitecustomize.py`` (this directory is put on ``PYTHONPATH`` by
``tools/cpython_suite.py``), so it also runs in every regrtest ``-j`` worker. A
``sys.meta_path`` finder answers for the CPython name with the *portsafe module object
itself*: ``from test.support import socket_helper`` then binds portsafe's module, and
``mock.patch("test.support.socket_helper.X")`` patches the very globals portsafe reads.

Environment:
    PORTSAFE_CPYTHON_REPLACE     comma-separated helper names (socket_helper,
                                 script_helper); unset = do nothing at all.
    PORTSAFE_CPYTHON_CALLS_FILE  a file to append one JSON line per process to, saying
                                 which module was loaded from where and how many times
                                 each public function was called: the runner's proof
                                 that the replacement was the one in use.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.abc
import importlib.util
import json
import os
import sys
import types

HELPERS = ("socket_helper", "script_helper")


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.original_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.original_spec = module.__spec__
        _instrument(module, spec.name)
        return module

    def exec_module(self, module):
        # module_from_spec() stamped the alias spec on portsafe's module; give it back
        # its own so that reload() and pickling by reference keep working.
        module.__spec__ = self.original_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.aliases:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(self.aliases[fullname]))


_calls: dict[str, dict[str, int]] = {}


def _record(line: dict[str, object]) -> None:
    path = os.environ.get("PORTSAFE_CPYTHON_CALLS_FILE")
    if not path:
        return
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    # One O_APPEND write per line, so concurrent workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _counted(func, counts: dict[str, int]):
    name = func.__name__

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return func(*args, **kwargs)

    return wrapper


def _instrument(module: types.ModuleType, alias: str) -> None:
    if getattr(module, "_portsafe_alias_instrumented", False):
        return
    module._portsafe_alias_instrumented = True  # type: ignore[attr-defined]
    counts = _calls.setdefault(alias, {})
    for name in getattr(module, "__all__", ()):
        value = module.__dict__.get(name)
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            setattr(module, name, _counted(value, counts))
    _record({"event": "loaded", "alias": alias, "module": module.__name__,
             "file": module.__file__, "pid": os.getpid()})

    def report() -> None:
        _record({"event": "calls", "alias": alias, "module": module.__name__,
                 "pid": os.getpid(), "calls": counts})

    atexit.register(report)


def install() -> None:
    names = [n.strip() for n in os.environ.get("PORTSAFE_CPYTHON_REPLACE", "").split(",")]
    aliases = {f"test.support.{n}": f"portsafe.{n}" for n in names if n in HELPERS}
    if not aliases:
        return
    if any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _AliasFinder(aliases))
