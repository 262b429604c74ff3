"""The client side of a port server: ``PORTSERVER_ADDRESS``, and the pool it implies.

Fleets that run Google's portpicker port server (or ``portsafe serve``) name it in
``PORTSERVER_ADDRESS``. :func:`portsafe.reserve_port` then asks it first:

1. The server grants port ``p`` to this process (by pid) until the process exits. The
   protocol has no release, so a released reservation goes back to a per-process pool,
   and later reservations take from the pool before asking again (as portpicker does).
2. The grant must also be safe from local portsafe users, who do not ask the server.
   So the local lock is taken on ``p`` as usual. If someone already holds it, the grant
   is accepted only when the holder is the server itself: ``portsafe serve`` holds each
   grant through the core for its grantee. A port held by anyone else is left alone.
3. The port is probed free, as every reservation is (G3).
4. If the server does not answer, or its grant fails 2 or 3, the local reservation is
   used instead: the server is a help, never a single point of failure.

With a server, the daemonless figures of the core (10,000 reservations, release to the
machine on ``release()``) do not apply: released ports stay granted to this process.
"""

from __future__ import annotations

import os
import threading

from portsafe import _locks, _probe

__all__ = ["give_back", "is_granted", "take"]

_mutex = threading.Lock()
_pool: list[int] = []   # granted to this process, not in use
_server_held: set[int] = set()  # in use, locked by the server on our behalf
_pool_server: dict[int, int | None] = {}  # which server pid granted each port


def _reset_after_fork() -> None:
    global _mutex
    _mutex = threading.Lock()
    _pool.clear()  # grants belong to the parent's pid
    _server_held.clear()
    _pool_server.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _claim(port: int, server_pid: int | None, probes: tuple[_probe.ProbeTarget, ...],
           directory: str) -> bool:
    """Take a granted *port* for use now (steps 2 and 3); False leaves nothing held."""
    table = _locks.table()
    if table.try_acquire(port, directory):
        if _probe.is_free(port, probes) == 0:
            return True
        table.release(port)
        return False
    if server_pid is None or port in _server_held or table.holds(port):
        return False
    if table.holder(port) != server_pid or _probe.is_free(port, probes) != 0:
        return False
    _server_held.add(port)
    return True


def take(address: str, probes: tuple[_probe.ProbeTarget, ...], excluded: frozenset[int],
         directory: str) -> int | None:
    """A port from the pool or from the server at *address*, claimed; None to fall back."""
    from portsafe._server import request_grant

    with _mutex:
        for port in list(_pool):
            if port not in excluded and _claim(port, _pool_server.get(port), probes,
                                               directory):
                _pool.remove(port)
                return port
    grant = request_grant(address, timeout=2.0)
    if grant is None:
        return None
    port, server_pid = grant
    with _mutex:
        _pool_server[port] = server_pid
        if port not in excluded and _claim(port, server_pid, probes, directory):
            return port
        _pool.append(port)  # granted to us all the same: maybe usable later
    return None


def give_back(port: int) -> bool:
    """Return a granted port to the pool, releasing its local lock if it has one.

    Safe in a garbage-collection finalizer: it never blocks (set and list updates are
    atomic), and returns False if the local lock's release had to be deferred.
    """
    _server_held.discard(port)
    if port not in _pool:
        _pool.append(port)
    return _locks.table().release_nowait(port)


def is_granted(port: int) -> bool:
    """Whether *port* came from the port server (so release returns it to the pool)."""
    return port in _pool_server
