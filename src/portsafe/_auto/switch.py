"""Auto mode's switch: race-free ports for code that was never written for portsafe.

With auto mode on in a process, every Python-level ``bind`` of a TCP or UDP socket to
port 0 gets a port that portsafe reserved (``_autosock``), an explicit port is leased
to this process's family while the socket may be a scanner's probe
(``portsafe._auto.explicit``, Linux), and the known port pickers (portpicker,
ephemeral-port-reserve, port-for) hand out reserved ports (``_autopickers``).
Three ways to turn it on:

* ``PORTSAFE_AUTO=1`` in the environment, for this process and its children: the
  ``portsafe-auto.pth`` start-up hook that the package installs into site-packages calls
  :func:`_from_hook` at interpreter start-up;
* :func:`enable` (the pytest plugin's ``--portsafe-auto`` calls it), which also sets
  ``PORTSAFE_AUTO=1`` so that child processes inherit it;
* nothing else: with auto mode off no patch is installed at all.

The hook must cost nothing measurable: its one line checks the raw environment and
imports this module only when ``PORTSAFE_AUTO`` is set. This module then imports
nothing heavy either: it puts an import watcher in front of ``sys.meta_path`` that
patches ``socket`` (and each known picker) right after it is first imported, so a
program that never opens a socket never loads the socket patches.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

__all__ = ["PTH_NAME", "disable", "enable", "enabled", "hook_installed", "stats"]

#: The start-up hook's file name in site-packages.
PTH_NAME = "portsafe-auto.pth"

#: Modules patched right after their first import: socket, then the known pickers.
_WATCHED = ("socket", "portpicker", "ephemeral_port_reserve", "port_for")

_state: dict[str, object] = {"on": False, "source": "", "saved_env": None, "said": False,
                             "made_family": False}
#: Carries this run's family token to child processes (``portsafe._auto.explicit``).
_FAMILY = "PORTSAFE_AUTO_FAMILY"
_patched: set[str] = set()


def _patch(name: str, module: ModuleType) -> None:
    """Patch one watched module; never let a failure break the caller's import."""
    if name in _patched:
        return
    _patched.add(name)
    try:
        if name == "socket":
            from portsafe._auto import sockets as _autosock

            _autosock.install()
        else:
            from portsafe._auto.pickers import patch

            patch(name, module)
    except Exception:  # auto mode must never break the program
        import logging

        logging.getLogger("portsafe.auto").warning(
            "auto mode could not patch %s; it keeps its own behaviour", name,
            exc_info=True)


class _Loader:
    """Wraps a watched module's loader: runs the module, then patches it."""

    def __init__(self, loader: object, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        # the module's loader is the real one again (inspect and linecache ask it)
        module.__loader__ = self._loader  # type: ignore[assignment]
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader  # type: ignore[assignment]
        if _state["on"]:
            _patch(self._name, module)

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class _Watcher:
    """A meta-path finder that only wraps the loaders of the watched modules."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in _WATCHED or fullname in _patched:
            return None
        for finder in sys.meta_path:
            find = None if finder is self else getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec: ModuleSpec | None = find(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader, fullname)  # type: ignore[assignment]
            return spec
        return None


_watcher = _Watcher()


def enabled() -> bool:
    """Whether auto mode is on in this process.

    Example:
        >>> enabled() in (True, False)
        True
    """
    return bool(_state["on"])


def enable(*, source: str = "api") -> None:
    """Turn auto mode on in this process and, through ``PORTSAFE_AUTO=1``, its children.

    Idempotent. ``socket`` and the known pickers are patched now if already imported,
    else right after their first import. Where the start-up hook is missing (an
    editable install), child processes stay unpatched: this is logged once on the
    ``portsafe.auto`` logger.

    Args:
        source: who turned it on (``"api"``, ``"env"``, ``"pytest"``), for the log.

    Example:
        >>> import socket
        >>> enable(); s = socket.socket(); s.bind(("127.0.0.1", 0))
        >>> from portsafe._core.ranges import ephemeral_port_range
        >>> low, high = ephemeral_port_range()
        >>> not low <= s.getsockname()[1] <= high
        True
        >>> s.close(); disable()
    """
    if _state["on"]:
        return
    _state["on"] = True
    _state["source"] = source
    if source != "env":
        _state["saved_env"] = os.environ.get("PORTSAFE_AUTO")
        os.environ["PORTSAFE_AUTO"] = "1"
    if not os.environ.get(_FAMILY):  # fresh per run; children inherit it
        os.environ[_FAMILY] = f"{os.getpid():x}.{os.urandom(4).hex()}"
        _state["made_family"] = True
    if _watcher not in sys.meta_path:
        sys.meta_path.insert(0, _watcher)
    for name in _WATCHED:
        module = sys.modules.get(name)
        if module is not None:
            _patch(name, module)
    if source != "env" and not _state["said"] and not hook_installed():
        _state["said"] = True
        import logging

        logging.getLogger("portsafe.auto").warning(
            "auto mode is on in this process, but the start-up hook %s is not installed "
            "for %s (an editable install leaves it out): child processes started with "
            "PORTSAFE_AUTO=1 will not be patched; 'pip install .' (not -e) installs it",
            PTH_NAME, sys.executable)


def disable() -> None:
    """Turn auto mode off: remove every patch and release every port it holds.

    ``PORTSAFE_AUTO`` gets back the value it had before :func:`enable`.

    Example:
        >>> disable(); enabled()
        False
    """
    if _watcher in sys.meta_path:
        sys.meta_path.remove(_watcher)
    was_on = _state["on"]
    _state["on"] = False
    if "portsafe._auto.pickers" in sys.modules:
        from portsafe._auto.pickers import unpatch_all

        unpatch_all()
    if "portsafe._auto.sockets" in sys.modules:
        from portsafe._auto import sockets as _autosock

        _autosock.uninstall()
        _autosock.reset_stats()
        from portsafe._auto import explicit as _explicit

        _explicit.set_family("")
    _patched.clear()
    if not was_on:
        return
    if _state["made_family"]:
        _state["made_family"] = False
        os.environ.pop(_FAMILY, None)
    if _state["source"] == "env":
        os.environ["PORTSAFE_AUTO"] = "0"  # children of this process: off as well
    elif _state["saved_env"] is None:
        os.environ.pop("PORTSAFE_AUTO", None)
    else:
        os.environ["PORTSAFE_AUTO"] = str(_state["saved_env"])


def stats() -> dict[str, object]:
    """What auto mode did in this process, JSON-ready.

    Returns:
        ``{"reserved": int, "fallbacks": int, "fallback_reasons": list[str],
        "leases_held": int, "probes_leased": int, "refused_by_lease": int,
        "uncovered": list[dict]}``: ports reserved (binds and known pickers), binds that
        fell back to the kernel's pick, their distinct reasons (at most 10), the leases
        held right now (expired ones dropped first), explicit-port probes leased to
        this family, explicit binds refused because another family's probe held the
        port, and the pickers seen and not covered (``what``, ``where`` as
        ``file:line``, ``count``).

    Example:
        >>> sorted(stats())  # doctest: +NORMALIZE_WHITESPACE
        ['fallback_reasons', 'fallbacks', 'leases_held', 'probes_leased',
         'refused_by_lease', 'reserved', 'uncovered']
    """
    if "portsafe._auto.sockets" in sys.modules:
        from portsafe._auto import sockets as _autosock

        return _autosock.stats()
    return {"reserved": 0, "fallbacks": 0, "fallback_reasons": [], "leases_held": 0,
            "probes_leased": 0, "refused_by_lease": 0, "uncovered": []}


def hook_installed() -> bool:
    """Whether the start-up hook (``portsafe-auto.pth``) is in this interpreter's
    site-packages, so that child processes honour ``PORTSAFE_AUTO=1``.

    Example:
        >>> hook_installed() in (True, False)
        True
    """
    import site

    dirs = list(getattr(site, "getsitepackages", list)())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return any(os.path.isfile(os.path.join(path, PTH_NAME)) for path in dirs)


def _from_hook() -> None:
    """Called by ``portsafe-auto.pth`` at start-up when ``PORTSAFE_AUTO`` is set."""
    from portsafe._errors import InvalidSettingError
    from portsafe._settings import auto_mode

    try:
        on = auto_mode()
    except InvalidSettingError as exc:
        if not _state["said"]:  # a venv's lib64 link makes site read the hook twice
            _state["said"] = True
            _say_invalid(f"portsafe: auto mode stays off: {exc}\n")
        return
    if on:
        enable(source="env")


def _say_invalid(message: str) -> None:
    """Say that ``PORTSAFE_AUTO`` is not understood, once per process.

    In a pytest run, portsafe's plugin stops the run with the same message (a usage
    error), so the hook leaves it to the plugin; it says it at exit only if the plugin
    never loaded (``-p no:portsafe``).
    """
    if not _started_as_pytest():
        sys.stderr.write(message)
        return
    import atexit

    def unless_the_plugin_said_it() -> None:
        if "portsafe.pytest_plugin" not in sys.modules:
            sys.stderr.write(message)

    atexit.register(unless_the_plugin_said_it)


def _started_as_pytest() -> bool:
    """Whether this interpreter was started to run pytest: ``python -m pytest`` or a
    ``pytest`` (``py.test``, ``pytest-3``) script, read from the command line.

    Example:
        >>> _started_as_pytest() in (True, False)
        True
    """
    if sys.argv[:1] != ["-m"]:  # a script, or -c: the program's name is argv[0]
        program = os.path.basename(sys.argv[0]).lower() if sys.argv else ""
        program = program.removesuffix(".exe")
        return program in ("pytest", "py.test") or program.startswith("pytest-")
    args = list(getattr(sys, "orig_argv", ()))[1:]
    for index, arg in enumerate(args):  # the interpreter's options: find -m's module
        if not arg.startswith("-") or arg.startswith("--"):
            continue
        for at, letter in enumerate(arg[1:], start=2):  # -m pytest, -mpytest, -Im pytest
            if letter == "m":
                module = arg[at:] or (args[index + 1] if index + 1 < len(args) else "")
                return module in ("pytest", "py.test")
            if letter in "cWX":  # the rest of this argument is the option's value
                break
    return False
