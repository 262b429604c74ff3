"""``portsafe run -- COMMAND``: hold port(s) for a command's whole life.

The tokens ``{port}`` and ``{portK}`` are replaced in the command's arguments, the
ports are exported as ``PORTSAFE_PORT``/``PORTSAFE_PORTS``, and signals sent to
``portsafe run`` are passed on to the command, whose exit code becomes ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess

from portsafe._cli.exits import (
    EXIT_CANNOT_EXECUTE,
    EXIT_COMMAND_NOT_FOUND,
    UsageError,
    error,
    plural,
)
from portsafe._cli.reserve import reserve_kwargs

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from types import FrameType

__all__ = ["run_forwarding_signals", "run_verb", "substitute"]

_TOKEN = re.compile(r"\{port(\d*)\}")
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM",
              "SIGWINCH")
_KEYBOARD = ("SIGINT", "SIGQUIT")  # also sent by the terminal to the child's group


def substitute(arg: str, ports: Sequence[int]) -> str:
    """Replace the tokens ``{port}`` and ``{portK}`` in one argument; nothing else.

    Args:
        arg: A command-line argument.
        ports: The reserved ports; ``{port}`` is the first, ``{portK}`` the K-th from 0.

    Returns:
        The argument with the tokens replaced (JSON and other braces untouched).

    Raises:
        ValueError: A ``{portK}`` token names a port that was not reserved.

    Example:
        >>> substitute('{"port": {port}, "x": {}}', [8123])
        '{"port": 8123, "x": {}}'
    """

    def swap(match: re.Match[str]) -> str:
        index = int(match.group(1)) if match.group(1) else 0
        if index >= len(ports):
            were = "was" if len(ports) == 1 else "were"
            raise ValueError(f"{match.group(0)} in {arg!r} names port {index}, but only "
                             f"{plural(len(ports), 'port')} {were} reserved: pass "
                             f"-n {index + 1}")
        return str(ports[index])

    return _TOKEN.sub(swap, arg)


def _in_terminal_foreground() -> bool:
    """True if our process group is the terminal's foreground group: then a keyboard
    signal (Ctrl-C, Ctrl-\\) already reached the child, which shares the group."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            return os.tcgetpgrp(fd) == os.getpgrp()
    return False


def run_verb(args: argparse.Namespace) -> int:
    """``portsafe run``: reserve, run the command holding the ports, pass its exit on.

    Example:
        >>> import argparse  # see tests/cli/test_cli.py::TestRun
    """
    import portsafe

    command = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("run needs a command: portsafe run [options] -- COMMAND [ARGS...]")
    with portsafe.reserve_ports(args.n, **reserve_kwargs(args)) as group:  # type: ignore[arg-type]
        ports = list(group.ports)
        try:
            argv = [substitute(arg, ports) for arg in command]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        env = dict(os.environ, PORTSAFE_PORT=str(ports[0]),
                   PORTSAFE_PORTS=" ".join(map(str, ports)))
        try:
            code = run_forwarding_signals(lambda: subprocess.Popen(argv, env=env))
        except FileNotFoundError:
            error(f"command not found: {argv[0]}")
            return EXIT_COMMAND_NOT_FOUND
        except PermissionError:
            error(f"cannot execute {argv[0]}: permission denied")
            return EXIT_CANNOT_EXECUTE
        except OSError as exc:
            error(f"cannot execute {argv[0]}: {exc}")
            return EXIT_CANNOT_EXECUTE
    return code if code >= 0 else 128 - code


def run_forwarding_signals(start: Callable[[], subprocess.Popen[bytes]]) -> int:
    """Start the child with *start* and wait for it, passing signals on to it.

    Returns the child's ``returncode`` (negative: killed by that signal).

    Example:
        >>> import subprocess, sys
        >>> run_forwarding_signals(lambda: subprocess.Popen([sys.executable, "-c", "exit(3)"]))
        3

    The handlers go in *before* the child starts: a signal that arrives while it is
    being spawned is queued and delivered once it exists, instead of meeting this
    process's inherited disposition (often "ignore" for SIGHUP under CI runners).
    """
    children: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if name in _KEYBOARD and _in_terminal_foreground():
            return
        if not children:
            pending.append(signum)
        elif children[0].returncode is None:
            with contextlib.suppress(OSError):  # it exited meanwhile
                children[0].send_signal(signum)

    previous: dict[int, object] = {}
    for name in _FORWARDED:
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, forward)
    try:
        child = start()
        children.append(child)
        for signum in pending:
            with contextlib.suppress(OSError):
                child.send_signal(signum)
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

