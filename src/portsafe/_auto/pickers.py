"""Auto mode's patches of the known port pickers that the bind(0) interception misses.

pytest-asyncio's ``unused_*_port`` fixtures, anyio's ``free_*_port`` fixtures and
aiohttp's ``unused_port`` bind port 0 and close: the socket patches already give them
reserved, leased ports (tests prove it). These three need code:

* **portpicker** ``pick_unused_port`` (and ``PickUnusedPort``) without a port server:
  its own search mixes ``bind(0)`` with random explicit ports in 15000-25000, checked
  only at hand-out. Patched: a port reserved free for TCP and UDP on every family, on
  the wildcard address (what portpicker checks), leased. ``return_port`` ends the lease.
  With a port server (``portserver_address=`` or ``PORTSERVER_ADDRESS``) it is left
  alone: the server's grants are already exclusive.
* **ephemeral-port-reserve** ``reserve()`` listens and connects on purpose (to leave a
  TIME_WAIT connection), so the socket patches would release its port at close.
  Patched for ``port=0``: a reserved, leased port and no TIME_WAIT, so the server may
  bind it with or without ``SO_REUSEADDR``.
* **port-for** ``select_random`` (and so ``get_port`` and ``PortStore``) probes random
  explicit ports. Patched: reserved from its candidates (or from portsafe's range when
  it has none), leased.

Each patch falls back to the original function when no reservation can be made.
Only the module attributes are replaced: a name imported with ``from x import f``
before auto mode was enabled keeps the original.
"""

from __future__ import annotations

import os
import socket

from portsafe._auto.sockets import lease_port, release_lease

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import ModuleType

__all__ = ["patch", "unpatch_all"]

# (module, attribute name, original value), to undo
_undo: list[tuple[ModuleType, str, object]] = []


def _replace(module: ModuleType, name: str, new: Callable[..., object]) -> None:
    original = getattr(module, name, None)
    if original is None:
        return
    new.__wrapped__ = original  # type: ignore[attr-defined]
    new.__name__ = getattr(original, "__name__", name)
    new.__doc__ = getattr(original, "__doc__", None)
    _undo.append((module, name, original))
    setattr(module, name, new)


def _patch_portpicker(module: ModuleType) -> None:
    original: Callable[..., int] = module.pick_unused_port
    original_return: Callable[[int], None] = module.return_port

    def pick_unused_port(pid: int | None = None,
                         portserver_address: str | None = None) -> int:
        if portserver_address or "PORTSERVER_ADDRESS" in os.environ:
            return original(pid, portserver_address)
        port = lease_port(host="", family=socket.AF_UNSPEC, socktype=0)
        if port is None:
            return original(pid, portserver_address)
        return port

    def return_port(port: int) -> None:
        if not release_lease(port):
            original_return(port)

    _replace(module, "pick_unused_port", pick_unused_port)
    if getattr(module, "PickUnusedPort", None) is original:
        _replace(module, "PickUnusedPort", pick_unused_port)
    _replace(module, "return_port", return_port)


def _patch_ephemeral_port_reserve(module: ModuleType) -> None:
    original: Callable[..., int] = module.reserve

    def reserve(ip: str = "127.0.0.1", port: int = 0) -> int:
        if int(port) == 0:
            leased = lease_port(host=ip)
            if leased is not None:
                return leased
        return original(ip, port)

    _replace(module, "reserve", reserve)


def _patch_port_for(module: ModuleType) -> None:
    api = getattr(module, "api", None)
    if api is None:
        return
    original: Callable[..., int] = api.select_random

    def select_random(ports: set[int] | None = None,
                      exclude_ports: Iterable[int] | None = None) -> int:
        exclude = set(exclude_ports or ())
        if ports is None:
            leased = lease_port(host="127.0.0.1", exclude=exclude)
        else:
            candidates = set(ports) - exclude
            leased = lease_port(host="127.0.0.1", ports=candidates) if candidates else None
        if leased is None:
            return original(ports, exclude_ports)
        return leased

    _replace(api, "select_random", select_random)
    if getattr(module, "select_random", None) is original:
        _replace(module, "select_random", select_random)
    store = getattr(module, "store", None)
    if store is not None and getattr(store, "select_random", None) is original:
        _replace(store, "select_random", select_random)


_PATCHERS: dict[str, Callable[[ModuleType], None]] = {
    "portpicker": _patch_portpicker,
    "ephemeral_port_reserve": _patch_ephemeral_port_reserve,
    "port_for": _patch_port_for,
}


def patch(name: str, module: ModuleType) -> None:
    """Patch the known picker *name* (a top-level module name) in *module*.

    Example:
        >>> import types
        >>> patch("not_a_picker", types.ModuleType("not_a_picker"))
    """
    patcher = _PATCHERS.get(name)
    if patcher is not None:
        patcher(module)


def unpatch_all() -> None:
    """Put every original function back.

    Example:
        >>> unpatch_all()
    """
    while _undo:
        module, name, original = _undo.pop()
        setattr(module, name, original)
