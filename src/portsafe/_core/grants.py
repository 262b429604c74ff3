"""The client side of a port server: ``PORTSERVER_ADDRESS``, and the pool it implies.

Fleets that run Google's portpicker port server (or ``portsafe serve``) name it in
``PORTSERVER_ADDRESS``. :func:`portsafe.reserve_port` then asks it first:

1. The server grants port ``p`` to this process (by pid) until the process exits. The
   protocol has no release, so a released reservation goes back to a per-process pool,
   and later reservations take from the pool before asking again (as portpicker does).
2. Only a server run by root or by this user is asked for grants at all (its uid comes
   from ``SO_PEERCRED``). Any local user can bind an abstract name such as
   ``@unittest-portserver``; a server of someone else is ignored, with a warning.
3. This process always holds the port itself (its name on Linux, its lock elsewhere),
   as for any other reservation, so G1 never depends on the server staying alive.
   ``portsafe serve`` holds each grant until its grantee takes it over (``take <port>``,
   asked only when the holder is that very server): with names the server sends the
   descriptor that holds the name, which this process adopts, so the name is held
   throughout; with lock files the server lets go and this process locks the port. A
   port held by anyone else is left alone.
4. The port is probed free, as every reservation is (G3).
5. If the server does not answer, or its grant fails 3 or 4, the local reservation is
   used instead: the server is a help, never a single point of failure.

With a server, the daemonless figures of the core (10,000 reservations, release to the
machine on ``release()``) do not apply: released ports stay granted to this process.

Layering: this module uses the core's bottom layer (``_locks``, ``_probe``) and the
port server's client (``_server_client``); it never imports ``_reserve``, which imports it.
"""

from __future__ import annotations

import os
import threading
import warnings

from portsafe._core import probe as _probe
from portsafe._core.serverclient import request_descriptor, request_grant, request_handover
from portsafe._locking import files as _locks

__all__ = ["give_back", "is_granted", "take", "trusted"]

_mutex = threading.Lock()
_pool: list[int] = []   # granted to this process, not in use
_pool_server: dict[int, int | None] = {}  # which server pid granted each port
_warned: set[str] = set()


def _reset_after_fork() -> None:
    global _mutex
    _mutex = threading.Lock()
    _pool.clear()  # grants belong to the parent's pid
    _pool_server.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def trusted(uid: int | None) -> bool:
    """Whether a server running as *uid* may be asked for grants: root, or this user.

    None (the OS does not say) is trusted as portpicker trusts every server: the grant
    is used only if this process can lock it itself, so G1 holds either way.

    Example:
        >>> import os
        >>> trusted(0), trusted(os.getuid()), trusted(None)
        (True, True, True)
    """
    return uid is None or uid in (0, os.getuid())


def _claim(port: int, address: str, server_pid: int | None,
           probes: tuple[_probe.ProbeTarget, ...], directory: str) -> bool:
    """Hold and probe a granted *port* for use now; False leaves nothing held."""
    table = _locks.table()
    if not table.try_acquire(port, directory):
        if server_pid is None or table.holds(port) or table.holder(port) != server_pid:
            return False  # in use here, or held by someone other than its server
        if not _take_over(port, address, server_pid, directory):
            return False
    try:
        busy = _probe.is_free(port, probes)
    except BaseException:
        table.release(port)
        raise
    if busy:
        table.release(port)
        return False
    return True


def _take_over(port: int, address: str, server_pid: int, directory: str) -> bool:
    """Take the hold on *port* over from the server (pid *server_pid*) that granted it."""
    table = _locks.table()
    if not table.passes_descriptors:
        return request_handover(address, port) and table.try_acquire(port, directory)
    handed = request_descriptor(address, port)
    if handed is None:
        return False
    fd, pid, uid = handed
    if pid not in (server_pid, None) or not trusted(uid):  # another server answers now
        os.close(fd)
        return False
    return table.adopt(port, fd)  # closes fd if it does not hold the port's name


def _warn_untrusted(address: str, pid: int | None, uid: int | None) -> None:
    if address in _warned:
        return
    _warned.add(address)
    warnings.warn(
        f"PORTSERVER_ADDRESS={address!r} is answered by pid {pid} of uid {uid}, which is "
        f"neither root nor you (uid {os.getuid()}): its grants are ignored and ports are "
        f"reserved locally. Another user may be squatting the name; start your own "
        f"server under another name (portsafe serve --address @NAME)",
        RuntimeWarning, stacklevel=4)


def take(address: str, probes: tuple[_probe.ProbeTarget, ...], excluded: frozenset[int],
         directory: str) -> int | None:
    """A port from the pool or from the server at *address*, locked by this process and
    probed free; None to fall back to a local reservation."""
    with _mutex:
        for port in list(_pool):
            if port not in excluded and _claim(port, address, _pool_server.get(port),
                                               probes, directory):
                _pool.remove(port)
                return port
    grant = request_grant(address, timeout=2.0)
    if grant is None:
        return None
    port, server_pid, server_uid = grant
    if not trusted(server_uid):
        _warn_untrusted(address, server_pid, server_uid)
        return None
    with _mutex:
        _pool_server[port] = server_pid
        if port not in excluded and _claim(port, address, server_pid, probes, directory):
            return port
        _pool.append(port)  # granted to us all the same: maybe usable later
    return None


def give_back(port: int) -> bool:
    """Return a granted port to the pool, releasing this process's lock on it.

    Safe in a garbage-collection finalizer: it never blocks (list updates are atomic),
    and returns False if the lock's release had to be deferred.
    """
    if port not in _pool:
        _pool.append(port)
    return _locks.table().release_nowait(port)


def is_granted(port: int) -> bool:
    """Whether *port* came from the port server (so release returns it to the pool)."""
    return port in _pool_server
