"""Known pickers in pytest: pytest-asyncio's port fixtures, replaced by reservations.

pytest-asyncio defines ``unused_tcp_port`` and ``unused_udp_port`` (function scope) and
``unused_tcp_port_factory`` and ``unused_udp_port_factory`` (session scope, zero-argument
callables) by binding port 0 and closing: the race. In auto mode the plugin registers
:func:`asyncio_port_fixtures`, whose fixtures of the same names and scopes hand out
reservations instead.

Auto mode's bind(0) interception alone would already give pytest-asyncio's fixtures a
reserved port, held by a lease after the picker closes its socket. These replacements
stay because they hold longer and more exactly: a function-scoped port until the test's
teardown (however long the test runs), a factory's ports until the session ends (as
the issue's "session-scoped factories keep holding their ports" asks), and none of them
counts against the per-process lease cap that evicts the oldest lease first.
"""

from __future__ import annotations

import socket
import types
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from portsafe.testing import PortFactory

__all__ = ["PICKER_FIXTURES", "asyncio_port_fixtures", "ports_handed_out"]

#: The fixtures :func:`asyncio_port_fixtures` replaces, by name, with their scopes.
PICKER_FIXTURES: dict[str, str] = {
    "unused_tcp_port": "function",
    "unused_udp_port": "function",
    "unused_tcp_port_factory": "session",
    "unused_udp_port_factory": "session",
}

_count = [0]  # ports handed out by the replacements in this process


def ports_handed_out() -> int:
    """How many ports the replacement fixtures reserved in this process so far.

    The pytest terminal summary adds them to auto mode's own count.

    Example:
        >>> ports_handed_out() >= 0
        True
    """
    return _count[0]


class _CountingFactory:
    """A zero-argument port factory of one socket type, counting what it hands out."""

    def __init__(self, factory: PortFactory, socktype: int) -> None:
        self._factory = factory
        self._socktype = socktype

    def __call__(self) -> int:
        port = self._factory(socktype=self._socktype)
        _count[0] += 1
        return port


def _new_factory() -> PortFactory:
    from portsafe.testing import PortFactory  # lazily: keep plugin import cheap

    return PortFactory()


def _unused_tcp_port() -> Iterator[int]:
    """A reserved TCP port on 127.0.0.1, released at teardown (portsafe)."""
    with _new_factory() as factory:
        yield _CountingFactory(factory, socket.SOCK_STREAM)()


def _unused_udp_port() -> Iterator[int]:
    """A reserved UDP port on 127.0.0.1, released at teardown (portsafe)."""
    with _new_factory() as factory:
        yield _CountingFactory(factory, socket.SOCK_DGRAM)()


def _unused_tcp_port_factory() -> Iterator[Callable[[], int]]:
    """A factory of distinct reserved TCP ports, held until the session ends (portsafe)."""
    with _new_factory() as factory:
        yield _CountingFactory(factory, socket.SOCK_STREAM)


def _unused_udp_port_factory() -> Iterator[Callable[[], int]]:
    """A factory of distinct reserved UDP ports, held until the session ends (portsafe)."""
    with _new_factory() as factory:
        yield _CountingFactory(factory, socket.SOCK_DGRAM)


def asyncio_port_fixtures() -> types.ModuleType:
    """A plugin replacing pytest-asyncio's port fixtures, same names and scopes.

    The factories hold every port they gave until the session ends, which is also how
    pytest-asyncio's avoid returning a number twice.

    Returns:
        A module object to register with ``config.pluginmanager.register``; the plugin
        does so when auto mode is on (``--portsafe-auto`` and its aliases).

    Example:
        >>> sorted(n for n in vars(asyncio_port_fixtures()) if n.startswith("unused"))
        ['unused_tcp_port', 'unused_tcp_port_factory', 'unused_udp_port', 'unused_udp_port_factory']
    """
    # Plain functions turned into fixtures here, not at module level, so that they exist
    # only in runs that opted in; a module (not a class) avoids pytest's deprecation of
    # session-scoped fixtures defined as instance methods.
    module = types.ModuleType("portsafe.pytest_plugin.asyncio_ports", asyncio_port_fixtures.__doc__)
    functions = {
        "unused_tcp_port": _unused_tcp_port,
        "unused_udp_port": _unused_udp_port,
        "unused_tcp_port_factory": _unused_tcp_port_factory,
        "unused_udp_port_factory": _unused_udp_port_factory,
    }
    for name, function in functions.items():
        scope = PICKER_FIXTURES[name]
        setattr(module, name, pytest.fixture(function, scope=scope, name=name))  # type: ignore[call-overload]
    return module
