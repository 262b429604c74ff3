"""Reservations: a port number that no other portsafe user gets while it is held.

Theory of operation
===================

A *reservation* is a claim on a port number, made so that a program which only takes
a number (``--port N``) can be given one without a race. It is not a bound socket: the
port itself stays free for the caller's server to bind, with or without SO_REUSEADDR.
(When you can hand over a socket instead, :func:`portsafe.listen` has no window at all.)

The invariants, each tested in ``tests/core/test_reserve.py`` and ``tests/stress/``:

1. **The lock is the claim (G1).** Port ``p`` is reserved exactly while some process
   holds the one-byte record lock at offset ``p`` of its shard file in the shared lock
   directory (``_locks``). Taking it is atomic (``F_SETLK``); nobody else gets it until
   it is unlocked. Threads of one process are kept apart by the in-process held set.
2. **Candidates avoid the kernel (G2).** Ports come from outside the ephemeral range
   and ``ip_local_reserved_ports``, so neither ``bind(0)`` nor an outgoing
   ``connect()`` anywhere on the machine picks a reserved port behind our back. The
   order is random (shard by shard), never first-fit.
3. **Verified at hand-out (G3).** After the lock is taken, the port is bound for each
   requested (family, type, address) and closed at once (``_probe``). A port some
   non-portsafe program is using is unlocked again and skipped.
4. **The kernel releases (G4).** ``release()``, context exit and garbage collection
   (with a ResourceWarning) unlock; process death, even SIGKILL, unlocks too, because
   record locks die with their process. There is no daemon and no state to clean up.
5. **Bounded (G5).** Each usable candidate is tried at most once per call, so a call
   makes at most as many attempts as there are candidates, then raises NoFreePortError
   naming the range and what was found. A candidate whose lock file is unusable (a FIFO,
   a link, a foreign or flooded file: ``_locks``) is skipped without a lock call, and a
   call raises LockDirError only when no candidate's file is usable.
6. **fork and exec.** A fork child holds none of its parent's reservations (record
   locks are not inherited); its copies of Reservation objects are inert. ``exec()``
   closes the lock files (O_CLOEXEC), which releases the reservations: a port outlives
   its process only through a holder that stays alive (``portsafe run``).
"""

from __future__ import annotations

import os
import socket
import warnings

from portsafe._core import probe as _probe
from portsafe._core import reservation as _reservation
from portsafe._core import walk as _walk
from portsafe._core.ranges import default_candidates, explicit_candidates
from portsafe._core.reservation import Reservation, ReservationGroup, _deferred, _drain_deferred
from portsafe._core.walk import Search, claim_next, first_free
from portsafe._errors import InvalidSettingError
from portsafe._locking import files as _locks
from portsafe._locking.claim import CHANGED, HELD
from portsafe._locking.nametable import NAMESPACE
from portsafe._settings import EXCLUDE, LOCK_DIR, PORTSERVER, RANGE, reservation_settings, shown

TYPE_CHECKING = False  # typing is not imported at run time: importing portsafe stays cheap
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, TypedDict

    from portsafe._core.candidates import CandidateSet
    from portsafe._locking.files import LockTable, Table

    class ReserveOptions(TypedDict, total=False):
        """The keyword options of :func:`reserve_port`, for helpers that pass them on."""

        host: str | None
        family: int
        socktype: int
        ports: Iterable[int] | None
        exclude: Iterable[int]

__all__ = ["Reservation", "ReservationGroup", "reserve_port", "reserve_ports"]

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
_hot: dict[tuple[bytes | None, ...], tuple[str, str, CandidateSet]] = {}
_DEFAULT_SPEC = ("127.0.0.1", socket.AF_INET, socket.SOCK_STREAM, False)
_new = object.__new__


def _settings_now() -> tuple[str, str, CandidateSet]:
    """(lock directory, port server, default candidates): one lookup while unchanged."""
    data = getattr(os.environ, "_data", None)
    if type(data) is dict:
        found = _hot.get((data.get(_RAW[0]), data.get(_RAW[1]), data.get(_RAW[2]),
                          data.get(_RAW[3])))
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
    candidates = explicit_candidates(ports)  # its errors first, as before
    return (*reservation_settings(), candidates)


def _search(host: str | None, family: int, socktype: int, ports: Iterable[int] | None,
            exclude: Iterable[int]) -> Search:
    if _deferred:
        _drain_deferred()
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
    # The hot path of every test that needs a port: no Search object unless it fails.
    if _deferred:
        _drain_deferred()
    plain = host is None and family is _AF_INET and socktype is _STREAM  # the defaults
    probes = (_default_probes or _set_default_probes()) if plain else \
        _probe.targets(host, family, socktype)
    if ports is None:  # _settings_now(), inlined: every reservation asks
        data = getattr(os.environ, "_data", None)
        hot = _hot.get((data.get(_RAW[0]), data.get(_RAW[1]), data.get(_RAW[2]),
                        data.get(_RAW[3]))) if type(data) is dict else None
        path, server, candidates = hot or _hot_settings(data)
    else:
        candidates, (path, server) = explicit_candidates(ports), reservation_settings()
    if candidates.fallback:
        _warn_fallback(candidates.fallback)
    table = _locks.table()
    if plain and not server and not exclude:  # the default request: the shortest way
        claimed = claim_next(table, path, candidates, probes)  # one call, when it can
        found = claimed if claimed > 0 else first_free(  # LockDirError if changed
            candidates, probes, _NOTHING, table.current(path), -claimed)
        if type(found) is int:
            made = _new(Reservation)  # Reservation(found, *_DEFAULT_SPEC), without __init__
            made.port, made._spec, made._pid = found, _DEFAULT_SPEC, _reservation._pid
            return made
        raise found.failure("free port")  # type: ignore[union-attr]
    directory = table.current(path)  # LockDirError if changed
    excluded = _excluded(exclude) if exclude else _NOTHING
    if server and ports is None:
        from portsafe._core import grants as _pool

        granted = _pool.take(server, probes, excluded, directory.path)
        if granted is not None:
            return Reservation(granted, probes[0][2] if host is None else host, family,
                               socktype, granted=True)
    found = first_free(candidates, probes, excluded, directory)
    if type(found) is int:
        made = _new(Reservation)  # Reservation(found, ...), without __init__
        made.port, made._pid = found, _reservation._pid
        made._spec = (probes[0][2] if host is None else host, family, socktype, False)
        return made
    raise found.failure("free port")  # type: ignore[union-attr]


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
    if host is None and family is _AF_INET and socktype is _STREAM and not contiguous and \
            not exclude and not _deferred:  # the default request: reserve_port's way
        group = _take_default(n, ports)
        if group is not None:
            return group
    search = _search(host, family, socktype, ports, exclude)
    if n > search.candidates.count:  # impossible: say so before locking anything
        raise search.too_many(n, contiguous)
    chosen_host = search.probes[0][2] if host is None else host
    taken = search.take_run(n) if contiguous else search.take(n)
    if len(taken) < n:
        for port in taken:
            search.table.release(port)
        raise search.failure(f"{n} {'contiguous ' if contiguous else ''}free ports", len(taken))
    return _group(taken, (chosen_host, family, socktype, False))


def _take_default(n: int, ports: Iterable[int] | None) -> ReservationGroup | None:
    """``reserve_ports(n)`` of the default kind, the home shard's next *n* candidates
    claimed in one go (:func:`_claim_run`); None where that does not apply (nothing was
    tried: the general way takes over)."""
    probes = _default_probes or _set_default_probes()
    path, server, candidates = _request_settings(ports)
    if server or candidates.fallback or n > candidates.count:
        return None
    table = _locks.table()
    taken: list[int] = []
    code = _claim_run(table, path, candidates, probes, n, taken=taken)
    directory = NAMESPACE if table.passes_descriptors else table._last_dir  # type: ignore[union-attr]
    if code < 0 or directory is None:
        return None
    if len(taken) < n:  # go on with the walk after what claim_run visited, in the
        # directory its first claim checked (one check per call)
        search = Search(candidates, probes, _NOTHING, directory)
        search.attempts = len(taken)
        if code:
            search.passed(code)
        search.take(n, taken=taken, visited=search.attempts)
        if len(taken) < n:
            table.release_all(taken)
            raise search.failure(f"{n} free ports", len(taken))
    return _group(taken, _DEFAULT_SPEC)


def _claim_run(table: Table, path: str, candidates: CandidateSet, probes: _probe.Probes,
              n: int, *, taken: list[int]) -> int:
    """``reserve_ports``' hot path: ``_walk.claim_next`` for up to *n* ports in one hold of
    the mutex, the lock directory checked by descriptor in the first claim only (one
    check per call, as :meth:`LockTable.current` makes).

    Appends the ports claimed to *taken*, in walk order, and stops at the first candidate
    that is not free (the walk moves past it). Returns -1 when that does not apply and
    nothing was tried (the general way takes over), else the code
    of the candidate that stopped the run, 0 if none did: ``len(taken) + (code != 0)``
    candidates of the walk were visited, for ``Search.take(n, taken=, visited=)`` to go
    on after them (G5: no candidate is tried twice in a call).

    Example:
        >>> t, cands = _locks.table(), explicit_candidates(range(30000, 30010))
        >>> got = []
        >>> code = _claim_run(t, _locks.lock_dir(), cands, _probe.targets(None, 2, 1), 2,
        ...                   taken=got)
        >>> code == -1 and not got or code >= 0
        True
        >>> t.release_all(got)
    """
    cursor = _walk._cursor
    if cursor is None or cursor[1] is not candidates:
        return -1
    if cursor[0] is NAMESPACE:
        return _claim_names(table, cursor, probes, n, taken)
    if TYPE_CHECKING:
        assert isinstance(table, LockTable)
    return _claim_files(table, path, cursor, probes, n, taken=taken)


def _claim_files(table: LockTable, path: str, cursor: list[Any], probes: _probe.Probes,
                 n: int, *, taken: list[int]) -> int:
    """:func:`_claim_run` with lock files: the first claim checks the directory too."""
    directory = table._last_dir
    if cursor[0] is not directory or path is not table._last_path or directory is None:
        return -1
    ctime = directory.watch_ctime
    home = table._home
    if not ctime or directory.broken or home is None or home.lockdir is not directory or \
            home.index != cursor[2]:  # the walk is of the home shard's candidates
        return -1
    items: list[int] = cursor[3]
    stride: int = cursor[4]
    index: int = cursor[5]
    count = len(items)
    held = table.held
    run, plan = probes.claim
    code = 0
    with table._mutex:
        if table._home is not home:  # another thread moved it (its file may be closed)
            return -1
        fd = home.fd
        for _ in range(min(n, count)):
            port = items[index]
            if port in held:
                break  # not tried: the general way decides
            code = run(fd, port, plan, directory.fd, ctime) if not taken else \
                run(fd, port, plan)
            if code:
                if code == HELD:
                    table._missed(home)  # the flood check's counters: under the mutex
                break
            held[port] = home
            home.count += 1
            taken.append(port)
            index = (index + stride) % count
    if code == CHANGED or (not taken and not code):
        return -1  # nothing tried (CHANGED comes only from the first claim)
    cursor[5] = (index + stride) % count if code else index
    return code


def _claim_names(table: Table, cursor: list[Any], probes: _probe.Probes, n: int,
                 taken: list[int]) -> int:
    """:func:`_claim_run` with names: up to *n* of the walk's next candidates, one claim
    each, stopping at the first that is not free (its code is returned)."""
    items: list[int] = cursor[3]
    stride: int = cursor[4]
    index: int = cursor[5]
    count = len(items)
    try_claim, claim = table.try_claim, probes.claim
    code = 0
    try:
        for _ in range(min(n, count)):
            port = items[index]
            code = try_claim(port, NAMESPACE, claim)
            if code:
                break
            taken.append(port)
            index = (index + stride) % count
    except BaseException:
        table.release_all(taken)
        del taken[:]
        raise
    cursor[5] = (index + stride) % count if code else index
    return code


def _group(taken: list[int], spec: tuple[str, int, int, bool]) -> ReservationGroup:
    pid = _reservation._pid
    items = []
    for port in taken:  # Reservation(port, *spec), without __init__
        made = _new(Reservation)
        made.port, made._spec, made._pid = port, spec, pid
        items.append(made)
    group = _new(ReservationGroup)
    group._items = tuple(items)
    return group
