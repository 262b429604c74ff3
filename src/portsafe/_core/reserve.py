"""Reservations: a port number that no other portsafe user gets while it is held.

Theory of operation
===================

A *reservation* is a claim on a port number, made so that a program which only takes
a number (``--port N``) can be given one without a race. It is not a bound socket: the
port itself stays free for the caller's server to bind, with or without SO_REUSEADDR.
(When you can hand over a socket instead, :func:`portsafe.listen` has no window at all.)

The invariants, each tested in ``tests/core/test_reserve.py`` and ``tests/stress/``:

1. **The lock is the claim (G1).** Port ``p`` is reserved exactly while some process
   holds its lock: on Linux a socket bound to ``p``'s abstract name
   (``_locking/names.py``), which the kernel gives one socket of the network namespace;
   elsewhere the one-byte record lock at offset ``p`` of its shard file in the shared
   lock directory (``_locking/files.py``). Taking either is atomic; nobody else gets it
   until it is released.
2. **Candidates avoid the kernel (G2).** Ports come from outside the ephemeral range
   and ``ip_local_reserved_ports``, so neither ``bind(0)`` nor an outgoing
   ``connect()`` anywhere on the machine picks a reserved port behind our back. The
   order is random (shard by shard), never first-fit.
3. **Verified at hand-out (G3).** With the lock taken, the port is bound for each
   requested (family, type, address) and closed at once (``_probe``), in the same call
   (``_locking/claim.py``). A port some non-portsafe program is using is let go again
   and skipped.
4. **The kernel releases (G4).** ``release()``, context exit and garbage collection
   (with a ResourceWarning) release; process death, even SIGKILL, releases too, because
   a name dies with its last descriptor and a record lock with its process. There is no
   daemon and no state to clean up.
5. **Bounded (G5).** Each usable candidate is tried at most once per call, so a call
   makes at most as many attempts as there are candidates, then raises NoFreePortError
   naming the range and what was found. Where lock files are used, a candidate whose
   file is unusable (a FIFO, a link, a foreign or flooded file) is skipped without a
   lock call, and a call raises LockDirError only when no candidate's file is usable.
6. **fork and exec.** A fork child holds none of its parent's reservations (it closes
   its copies of the names; record locks are not inherited); its copies of Reservation
   objects are inert. ``exec()`` releases them (close-on-exec): a port outlives its
   process only through a holder that stays alive (``portsafe run``).
"""

from __future__ import annotations

import os
import socket
import warnings

from portsafe._core import probe as _probe
from portsafe._core.ranges import default_candidates, explicit_candidates
from portsafe._core.reservation import (
    Reservation,
    ReservationGroup,
    deferred,
    drain_deferred,
    held,
    held_group,
)
from portsafe._core.walk import Search, take
from portsafe._errors import InvalidSettingError
from portsafe._locking import files as _locks
from portsafe._settings import EXCLUDE, LOCK_DIR, PORTSERVER, RANGE, reservation_settings, shown

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import TypedDict

    from portsafe._core.candidates import CandidateSet

    class ReserveOptions(TypedDict, total=False):
        """The keyword options of :func:`reserve_port`, for helpers that pass them on."""

        host: str | None
        family: int
        socktype: int
        ports: Iterable[int] | None
        exclude: Iterable[int]

__all__ = ["reserve_port", "reserve_ports"]

_NOTHING: frozenset[int] = frozenset()
_AF_INET, _STREAM = socket.AF_INET, socket.SOCK_STREAM
_default_probes: _probe.Probes | None = None  # what the default arguments bind (constant)


def _excluded(exclude: Iterable[int]) -> frozenset[int]:
    if not exclude:
        return _NOTHING
    if isinstance(exclude, (str, bytes)) or not hasattr(exclude, "__iter__"):
        raise TypeError(f"exclude must be an iterable of ints, not {shown(exclude)}")
    ports = frozenset(exclude)
    for port in ports:
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"exclude must contain ints, not {shown(port)}")
    return ports


# The default request's settings (lock directory, port server, candidates), by the raw
# values of the variables they come from: one lookup per call instead of two.
_RAW = tuple(name.encode() for name in (LOCK_DIR, PORTSERVER, RANGE, EXCLUDE))
_RAW0, _RAW1, _RAW2, _RAW3 = _RAW  # one global each: no indexing per call
_hot: dict[tuple[bytes | None, ...], tuple[str, str, CandidateSet]] = {}
_DEFAULT_SPEC = ("127.0.0.1", socket.AF_INET, socket.SOCK_STREAM, False)


def _settings_now() -> tuple[str, str, CandidateSet]:
    """(lock directory, port server, default candidates): one lookup while unchanged."""
    data = getattr(os.environ, "_data", None)
    if type(data) is dict:
        found = _hot.get((data.get(_RAW0), data.get(_RAW1), data.get(_RAW2),
                          data.get(_RAW3)))
        if found is not None:
            return found
    return _hot_settings(data)


def _hot_settings(data: object) -> tuple[str, str, CandidateSet]:
    """The default request's settings now (cached by raw value where environ is bytes)."""
    made = (*reservation_settings(), default_candidates())
    if type(data) is dict and os.name == "posix":
        if len(_hot) >= 64:  # a test suite may set a new directory per test
            _hot.clear()
        _hot[tuple(data.get(key) for key in _RAW)] = made
    return made


def _set_default_probes() -> _probe.Probes:
    global _default_probes
    _default_probes = _probe.targets(None, _AF_INET, _STREAM)
    return _default_probes


def _request_settings(ports: Iterable[int] | None) -> tuple[str, str, CandidateSet]:
    """(lock directory, port server, candidates) for a request with *ports*."""
    if ports is None:
        return _settings_now()
    candidates = explicit_candidates(ports)  # its errors before the settings'
    return (*reservation_settings(), candidates)


def _search(host: str | None, family: int, socktype: int, ports: Iterable[int] | None,
            exclude: Iterable[int]) -> Search:
    if deferred:
        drain_deferred()
    if host is None and family is _AF_INET and socktype is _STREAM:  # the defaults
        probes = _default_probes or _set_default_probes()
    else:
        probes = _probe.targets(host, family, socktype)
    path, _, candidates = _request_settings(ports)
    if candidates.fallback:
        _warn_fallback(candidates.fallback)
    return Search(candidates, probes, _excluded(exclude) if exclude else _NOTHING,
                  _locks.table().current(path))


_warned: set[str] = set()


def _warn_fallback(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def reserve_port(*, host: str | None = None, family: int = socket.AF_INET,
                 socktype: int = socket.SOCK_STREAM, ports: Iterable[int] | None = None,
                 exclude: Iterable[int] = ()) -> Reservation:
    """Reserve a port that no other portsafe user on this machine gets until released.

    The port is chosen at random from outside the OS's ephemeral range (so the kernel
    never hands it to ``bind(0)`` or an outgoing connection), skipping reserved ports,
    the services database and common development-server ports, ``PORTSAFE_EXCLUDE`` and
    *exclude*. It is checked free at hand-out by binding it on every requested family,
    socket type and address (without SO_REUSEADDR) and closing at once.

    Args:
        host: where it must be free: ``None`` (default) or ``"localhost"`` for the
            loopback address of each family, ``""`` for the wildcard address, or an
            address of this machine.
        family: ``socket.AF_INET`` (default), ``AF_INET6``, or ``AF_UNSPEC`` for the same
            number free on both (IPv6 only where the host has it).
        socktype: ``socket.SOCK_STREAM`` (TCP, default), ``SOCK_DGRAM`` (UDP), or ``0``
            for the same number free for both.
        ports: candidate ports to choose from instead of the default set (asking
            explicitly, so these may be in the ephemeral range); ``PORTSAFE_EXCLUDE``
            still applies. ``PORTSAFE_RANGE`` replaces the default range otherwise.
        exclude: ports never to return.

    Returns:
        A :class:`Reservation`; release it with ``release()`` or a ``with`` block.

    Raises:
        NoFreePortError: every candidate was tried once and none was free.
        AddressNotAvailableError: the host/family cannot be bound here at all.
        InvalidSettingError: an unknown family/socktype, an empty or out-of-range
            ``ports``, or a bad ``PORTSAFE_RANGE``/``PORTSAFE_EXCLUDE``.
        TypeError: an argument of the wrong type.
        LockDirError: the shared lock directory is unusable (the message says why).

    Example:
        >>> import portsafe, socket
        >>> with portsafe.reserve_port(family=socket.AF_UNSPEC, socktype=0) as r:
        ...     print(r.port)  # free on 127.0.0.1 and ::1, for TCP and UDP  # doctest: +SKIP
        21734
    """
    # The hot path of every test that needs a port.
    if deferred:
        drain_deferred()
    plain = host is None and family is _AF_INET and socktype is _STREAM  # the defaults
    probes = (_default_probes or _set_default_probes()) if plain else \
        _probe.targets(host, family, socktype)
    if ports is None:  # _settings_now(), inlined: every reservation asks
        data = getattr(os.environ, "_data", None)
        hot = _hot.get((data.get(_RAW0), data.get(_RAW1), data.get(_RAW2),
                        data.get(_RAW3))) if type(data) is dict else None
        path, server, candidates = hot or _hot_settings(data)
    else:
        candidates, (path, server) = explicit_candidates(ports), reservation_settings()
    if candidates.fallback:
        _warn_fallback(candidates.fallback)
    table = _locks.table()
    directory = table.current(path)  # LockDirError if changed
    excluded = _excluded(exclude) if exclude else _NOTHING
    if server and ports is None:
        from portsafe._core import grants as _pool

        granted = _pool.take(server, probes, excluded, directory.path)
        if granted is not None:
            return Reservation(granted, probes[0][2] if host is None else host, family,
                               socktype, granted=True)
    taken, search = take(1, candidates, probes, excluded, directory, table)
    if taken:
        return held(taken[0], _DEFAULT_SPEC if plain else
                    (probes[0][2] if host is None else host, family, socktype, False))
    assert search is not None  # take() makes one when it found too few
    raise search.failure("free port")


def reserve_ports(n: int, *, contiguous: bool = False, host: str | None = None,
                  family: int = socket.AF_INET, socktype: int = socket.SOCK_STREAM,
                  ports: Iterable[int] | None = None,
                  exclude: Iterable[int] = ()) -> ReservationGroup:
    """Reserve *n* distinct ports at once: all of them, or none.

    Args:
        n: how many ports (at least 1).
        contiguous: if true, the ports are ``p, p+1, ..., p+n-1`` (FTP data ports,
            cluster buses).
        host, family, socktype, ports, exclude: as for :func:`reserve_port`.

    Returns:
        A :class:`ReservationGroup`, in ascending order when *contiguous*.

    Raises:
        NoFreePortError: fewer than *n* (contiguous) ports could be reserved; nothing is
            left held.
        InvalidSettingError, TypeError: as for :func:`reserve_port`, or *n* < 1.

    Example:
        >>> import portsafe
        >>> with portsafe.reserve_ports(3) as group:
        ...     len(set(group.ports))
        3
    """
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, not {shown(n)}")
    if n < 1:
        raise InvalidSettingError(f"n must be at least 1, not {shown(n)}")
    search = _search(host, family, socktype, ports, exclude)
    if n > search.candidates.count:  # impossible: say so before locking anything
        raise search.too_many(n, contiguous)
    chosen_host = search.probes[0][2] if host is None else host
    if contiguous:
        taken = search.take_run(n)
    else:
        taken, found = take(n, search.candidates, search.probes, search.excluded,
                            search.directory, search.table)
        search = found or search
    if len(taken) < n:
        search.table.release_all(taken)
        raise search.failure(f"{n} {'contiguous ' if contiguous else ''}free ports", len(taken))
    return held_group(taken, (chosen_host, family, socktype, False))
