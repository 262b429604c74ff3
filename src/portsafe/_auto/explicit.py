"""Auto mode's explicit-port binds: a scanner's probe leases the port to its family.

A scanner tries ``bind(("127.0.0.1", p))`` for p = 8000, 8001, ... and returns the first
port that binds, closing its socket: a *probe*. Whether a bind is a probe is known only
at close, so every explicit bind of an AF_INET/AF_INET6 TCP/UDP socket in auto mode
(Linux, where reservations are names) does one reservation attempt first:

1. Bind this family's marker name of P, ``\\0portsafe1-probe:<P>:<family>``. Taken
   already: this family (this process, its children, a daemon it started) leases P, so
   the bind goes to the kernel.
2. Bind P's probe name, ``\\0portsafe1-probe:<P>``. Taken already: another family holds a
   probe lease on P, so the bind fails with ``EADDRINUSE`` and the scanner moves on.
3. Take P's reservation (the lock table's name of P). Taken already: a plain reservation
   (``reserve_port()``, a fixture, the CLI) holds P for the server now binding it, so
   the markers are dropped and the bind goes to the kernel, as without auto mode.

The three names held together are the *probe lease*; the markers come first, so that
whoever finds P's reservation taken finds the markers of a lease already bound. The
lease is dropped when the socket listens, connects or sends (the bound socket protects
P from then on) or when its bind fails. A socket closed unused keeps it, long enough for
the scanner's server to bind P, but no longer than the holder says: at the close the
probe name is replaced by a *period name*, ``\0portsafe1-probe:<P>:t<N>`` with N the
wall-clock time divided by :data:`LEASE_SECONDS` (bound before the probe name is
closed), and step 2 looks for the period names of now and the period before. So a
closed probe's lease refuses other families for LEASE_SECONDS to twice that, then is
ignored even while the holder, which expires leases lazily, still has it: another
family's fixed-port server then finds a reservation without markers and binds as it
would without auto mode. The family is a
token in ``PORTSAFE_AUTO_FAMILY`` (``portsafe._auto.switch``): fresh per run and per
xdist worker, inherited through the environment.

Connect probes (``connect_ex(("127.0.0.1", p)) != 0`` means free) are not covered: a
refused connect is also every readiness poll, and leasing polled ports would refuse the
servers being waited for. A refused loopback ``connect_ex`` is remembered (port and
calling line, at most :data:`_MAX_REFUSED`), and only when this process then binds that
port explicitly is the line named as a connect probe.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys
import threading
import time
import weakref

from portsafe._locking.files import table
from portsafe._locking.names import name

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from types import FrameType

__all__ = ["BOUND", "FAMILY_VARIABLE", "LEASE_SECONDS", "bind", "closed", "family",
           "forget_in_child", "refused", "release_all", "reset", "set_family", "stats",
           "uncovered", "unnamed", "used"]

#: How long a port stays leased to its family after an unused explicit bind closed: at
#: least this, at most twice this (see the module's text).
LEASE_SECONDS = 2.0
_MAX_REFUSED = 256
_MAX_WHERE = 50
_AF_UNIX, _SOCK_DGRAM = _socket.AF_UNIX, _socket.SOCK_DGRAM
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_family: list[str] = [""]
_mutex = threading.Lock()
# port -> (markers, sockets bound to it now (ids), expiry once none is left, or None)
_leases: dict[int, tuple[list[_socket.socket], set[int], float | None]] = {}
# id(socket) -> the leased port it is bound to, or (no names here) where it was bound
_bound: dict[int, int | str] = {}
#: Whether any socket is bound explicitly now (the socket patches ask before calling in).
BOUND = _bound
_refs: dict[int, weakref.ref[socket.socket]] = {}  # id(socket) -> its weak reference
# sockets collected while the mutex was held: handled by the next call
_collected: list[tuple[int, weakref.ref[socket.socket]]] = []
_refused: dict[int, str] = {}  # port -> file:line of a refused loopback connect_ex
_counts = {"probes_leased": 0, "refused_by_lease": 0}
_uncovered: dict[tuple[str, str], int] = {}
_said: set[tuple[str, str]] = set()
_monotonic = time.monotonic
_clock = time.time  # the periods of closed leases: one clock for every process


#: The environment variable that carries the family token to child processes.
FAMILY_VARIABLE = "PORTSAFE_AUTO_FAMILY"


def family() -> str:
    """This process's family: ``PORTSAFE_AUTO_FAMILY``, with the xdist worker's name
    appended in a worker (xdist names it only after start-up, so this is read at the
    first explicit bind and written back for the worker's children).

    Example:
        >>> isinstance(family(), str)
        True
    """
    token = _family[0]
    if token:
        return token
    token = os.environ.get(FAMILY_VARIABLE, "") or f"{os.getpid():x}.{os.urandom(4).hex()}"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker and not token.endswith(f"/{worker}"):
        token = f"{token}/{worker}"
    os.environ[FAMILY_VARIABLE] = token
    _family[0] = token
    return token


def set_family(token: str) -> None:
    """Use *token* as this process's family ('' reads it again at the next bind)."""
    _family[0] = token


def _marker(port: int, token: str | None) -> bytes:
    base = name(port).replace(b"portsafe1:", b"portsafe1-probe:", 1)
    return base if token is None else base + b":" + token.encode()


def _hold(address: bytes) -> _socket.socket | None:
    """A socket bound to *address*, or None if another socket holds it."""
    sock = _socket.socket(_AF_UNIX, _SOCK_DGRAM)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    return sock


def _expire(now: float) -> None:
    for port in [port for port, (_, users, until) in _leases.items()
                 if not users and until is not None and until <= now]:
        _drop(port)


def _drop(port: int) -> None:
    lease = _leases.pop(port, None)
    if lease is None:
        return
    table().release(port)
    for sock in lease[0]:
        sock.close()


def bind(sock: socket.socket, address: tuple[object, ...],
         c_bind: Callable[..., None]) -> None:
    """Bind *sock* to its explicit port as a probe lease allows (see the module's text).

    Raises:
        OSError: ``EADDRINUSE`` when another family leases the port, else the kernel's.
    """
    port = address[1]
    assert isinstance(port, int)
    _note_connect_probe(port)
    key = id(sock)
    with _mutex:
        _drain()
        if _leases:
            _expire(_monotonic())
        lease = _leases.get(port)
        if lease is not None:  # this process leases it: its own server, or a re-probe
            c_bind(sock, address)
            lease[1].add(key)
            _watch(sock, key, port)
            return
        try:
            taken = _take(port)
        except Exception as exc:  # noqa: BLE001 - names refused (a sandbox): the kernel, named
            _note_uncovered("explicit bind not covered", _caller(),
                            f"reservations failed ({exc}); pass port 0 and read the port back")
            taken = None
        if taken is _BUSY:
            _counts["refused_by_lease"] += 1
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        if taken is None:
            c_bind(sock, address)
            return
        try:
            c_bind(sock, address)
        except BaseException:
            _leases[port] = (taken, set(), None)
            _drop(port)
            raise
        _leases[port] = (taken, {key}, None)
        _watch(sock, key, port)


def _watch(sock: socket.socket, key: int, port: int) -> None:
    """Track *sock* on *port*; a socket collected without close() counts as closed."""
    _bound[key] = port

    def gone(ref: weakref.ref[socket.socket]) -> None:
        if _refs.get(key) is not ref:
            return
        if _mutex.acquire(False):  # the collector may have interrupted this module
            try:
                del _refs[key]
                _unused(key)
            finally:
                _mutex.release()
        else:
            _collected.append((key, ref))

    _refs[key] = weakref.ref(sock, gone)


_BUSY: list[_socket.socket] = []


def _take(port: int) -> list[_socket.socket] | None:
    """The lease's markers (P's reservation held too), :data:`_BUSY` when another
    family leases P, None when the bind goes to the kernel unleased."""
    if table().holds(port):
        return None  # this process reserved it: its own server
    own = _hold(_marker(port, family()))
    if own is None:
        return None  # this family leases it
    probe = _hold(_marker(port, None))
    if probe is None or _closed_lease(port):
        own.close()
        if probe is not None:
            probe.close()
        return _BUSY
    try:
        if table().try_acquire(port):
            return [own, probe]
    except BaseException:
        own.close()
        probe.close()
        raise
    own.close()
    probe.close()
    return None


def _bucket(port: int, period: int) -> bytes:
    return _marker(port, None) + b":t" + str(period).encode()


def _closed_lease(port: int) -> bool:
    """Whether another family's probe closed unused on *port* in this period or the one
    before (its lease is honoured from LEASE_SECONDS to twice that, then ignored)."""
    period = int(_clock() // LEASE_SECONDS)
    for address in (_bucket(port, period), _bucket(port, period - 1)):
        sock = _hold(address)
        if sock is None:
            return True
        sock.close()
    return False


def used(sock: socket.socket) -> None:
    """*sock* listened, connected or sent: drop its port's lease (the socket holds it)."""
    port = _bound.pop(id(sock), None)
    _refs.pop(id(sock), None)
    if not isinstance(port, int):
        return
    with _mutex:
        lease = _leases.get(port)
        if lease is not None and id(sock) in lease[1]:
            _drop(port)


def closed(sock: socket.socket) -> None:
    """*sock* closed unused: its port's lease runs out in a few seconds."""
    key = id(sock)
    _refs.pop(key, None)
    if isinstance(_bound.get(key), str):
        _note_uncovered("explicit probe not covered (bound, then closed unused; no "
                        "names on this platform)", str(_bound.pop(key)),
                        "bind port 0 and read the port back, or use portsafe.reserve_port()")
        return
    with _mutex:
        _unused(key)


def _unused(key: int) -> None:
    """The socket *key* is gone unused: start its lease's last seconds. Under the mutex."""
    _drain()
    port = _bound.pop(key, None)
    if isinstance(port, int):
        lease = _leases.get(port)
        if lease is None or key not in lease[1]:
            return
        lease[1].discard(key)
        if not lease[1]:
            _counts["probes_leased"] += 1
            markers = lease[0]
            # the period's name first, then the probe name goes: never neither bound
            until = _hold(_bucket(port, int(_clock() // LEASE_SECONDS)))
            if until is not None and len(markers) == 2:
                markers[1].close()
                markers[1] = until
            elif until is not None:
                until.close()
            _leases[port] = (markers, lease[1], _monotonic() + 2 * LEASE_SECONDS)


def _drain() -> None:
    """The sockets collected while the mutex was held. Under the mutex."""
    while _collected:
        key, ref = _collected.pop()
        if _refs.get(key) is ref:
            del _refs[key]
            _unused(key)


def unnamed(sock: socket.socket, port: int) -> None:
    """Where names are not the lock system: remember where *sock* bound *port*, so that
    closing it unused names the line as an explicit probe auto mode does not cover."""
    _note_connect_probe(port)
    if len(_bound) < _MAX_REFUSED:
        _bound[id(sock)] = _caller()


def refused(port: int) -> None:
    """A loopback ``connect_ex`` to *port* was refused: remember where, in case this
    process binds *port* next (a connect probe)."""
    if port in _refused or len(_refused) >= _MAX_REFUSED:
        return
    _refused[port] = _caller()


def _note_connect_probe(port: int) -> None:
    where = _refused.pop(port, None) if _refused else None
    if where is not None:
        _note_uncovered("connect probe (connect_ex refused, then bound)", where,
                        "bind port 0 and read the port back, or use portsafe.reserve_port()")


def uncovered(kind: str, where: str, instead: str) -> None:
    """Count a picker auto mode saw and could not cover (see :func:`stats`)."""
    _note_uncovered(kind, where, instead)


def _note_uncovered(kind: str, where: str, instead: str) -> None:
    try:
        here = os.getcwd() + os.sep
    except OSError:
        here = ""
    if here and where.startswith(here):
        where = where[len(here):]
    key = (f"{kind}: {instead}", where)
    if key not in _uncovered and len(_uncovered) >= _MAX_WHERE:
        return
    _uncovered[key] = _uncovered.get(key, 0) + 1
    if key not in _said:
        _said.add(key)
        import logging

        logging.getLogger("portsafe.auto").warning(
            "auto mode saw a port picker it does not cover at %s: %s; %s", where, kind,
            instead)


def _caller() -> str:
    """``file:line`` of the first frame outside portsafe and the socket module."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(_PACKAGE) or path.endswith(("socket.py", "selectors.py"))):
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def stats() -> dict[str, object]:
    """This process's explicit-port figures, JSON-ready.

    Example:
        >>> sorted(stats())
        ['probes_leased', 'refused_by_lease', 'uncovered']
    """
    return {**_counts, "uncovered": [
        {"what": what, "where": where, "count": count}
        for (what, where), count in _uncovered.items()]}


def reset() -> None:
    """Zero the figures."""
    _counts["probes_leased"] = _counts["refused_by_lease"] = 0
    _uncovered.clear()
    _refused.clear()


def release_all() -> None:
    """Drop every lease this process holds."""
    with _mutex:
        for port in list(_leases):
            _drop(port)
        _bound.clear()
        _refs.clear()
        _collected.clear()


def forget_in_child() -> None:
    """After fork: the child holds none of the parent's leases (it closes its copies of
    the markers, so a daemon does not keep them bound)."""
    global _mutex
    _mutex = threading.Lock()
    for markers, _, _ in _leases.values():
        for sock in markers:
            sock.close()
    _leases.clear()
    _bound.clear()
    _refs.clear()
    _collected.clear()
    reset()
