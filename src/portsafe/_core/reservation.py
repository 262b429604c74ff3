"""What a reservation is: :class:`Reservation` and :class:`ReservationGroup`, and release.

Made by ``_reserve`` (``reserve_port``, ``reserve_ports``), which holds the theory of
operation. Released by ``release()``, a ``with`` block, or garbage collection (with a
``ResourceWarning``, as files are); process death releases too (G4). A fork child's
copies are inert: ``_pid`` is this process's pid, kept by a fork hook, and a
reservation holds its port only in the process whose pid it holds.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence

from portsafe._errors import public
from portsafe._locking import files as _locks

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import overload

    from typing_extensions import Self

__all__ = ["Reservation", "ReservationGroup", "deferred", "drain_deferred", "held", "held_group"]

# This process's pid, kept by a fork hook rather than asked of the kernel: getpid() is a
# system call, and a reservation and its release made two of them.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: Releases that a garbage-collection finalizer could not do on the spot (see __del__).
deferred: list[int] = []

# This process's LockTable.release, looked up once (the table outlives a fork: it resets).
_release: Callable[[int], object] | None = None


def _table_release() -> Callable[[int], object]:
    global _release
    _release = _locks.table().release
    return _release


class _Releasable:
    """``with`` support for anything with an idempotent ``release()``."""

    __slots__ = ()

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


@public
class Reservation(_Releasable):
    """A port number held for this process until :meth:`release`.

    Returned by :func:`reserve_port`. The port is *not* bound: bind it yourself (or pass
    it to a server) with or without ``SO_REUSEADDR``. Use it as a context manager to
    release on exit; one that is garbage-collected unreleased is released with a
    ``ResourceWarning``, as files are.

    Attributes:
        port: the reserved port number.
        host: the address it was checked free on (``"127.0.0.1"`` by default).
        family: the family asked for (``AF_UNSPEC`` means both).
        socktype: the socket type asked for (``0`` means both).

    Example:
        >>> import portsafe, socket
        >>> with portsafe.reserve_port() as r:
        ...     with socket.create_server(r.address) as server:
        ...         server.getsockname()[1] == r.port
        True
    """

    # _pid: the pid that holds the port, 0 once released (one slot for both facts);
    # _spec: (host, family, socktype, granted), one tuple shared by every reservation of
    # one kind of request (setting three slots fewer per reservation)
    __slots__ = ("_pid", "_spec", "port")

    def __init__(self, port: int, host: str, family: int, socktype: int,
                 granted: bool = False) -> None:
        self.port = port
        self._spec = (host, family, socktype, granted)  # granted: from PORTSERVER_ADDRESS
        self._pid = _pid

    @property
    def host(self) -> str:
        """The address it was checked free on (``"127.0.0.1"`` by default)."""
        return self._spec[0]

    @property
    def family(self) -> int:
        """The family asked for (``AF_UNSPEC`` means both)."""
        return self._spec[1]

    @property
    def socktype(self) -> int:
        """The socket type asked for (``0`` means both)."""
        return self._spec[2]

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, ready for ``bind`` or ``connect``."""
        return (self._spec[0], self.port)

    @property
    def released(self) -> bool:
        """Whether this reservation no longer holds its port (in this process)."""
        return self._pid != _pid

    def release(self) -> None:
        """Give the port back. Idempotent; a no-op in a fork child (it never held it).

        Example:
            >>> import portsafe
            >>> r = portsafe.reserve_port()
            >>> r.release(); r.release(); r.released
            True
        """
        pid = self._pid
        if pid:
            self._pid = 0
            if pid != _pid:
                return
            if self._spec[3]:  # granted by a port server
                from portsafe._core import grants as _pool

                if not _pool.give_back(self.port):
                    _locks.table().release(self.port)
            else:
                (_release or _table_release())(self.port)

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Reservation port={self.port} host={self.host!r} {state}>"

    def __del__(self) -> None:
        if self._pid != _pid:
            return
        self._pid = 0
        with contextlib.suppress(Exception):  # at interpreter shutdown: the kernel releases
            warnings.warn(f"unreleased {self!r}; use 'with reserve_port() as r:' or call "
                          f"r.release()", ResourceWarning, stacklevel=2, source=self)
        # This thread may be inside the lock table (GC runs anywhere): never block here.
        if self._spec[3]:
            from portsafe._core import grants as _pool

            released = _pool.give_back(self.port)
        else:
            released = _locks.table().release_nowait(self.port)
        if not released:
            deferred.append(self.port)


@public
class ReservationGroup(_Releasable, Sequence[Reservation]):
    """Several reservations taken together (all or nothing), released together.

    Returned by :func:`reserve_ports`; a sequence of :class:`Reservation`.

    Example:
        >>> import portsafe
        >>> with portsafe.reserve_ports(2, contiguous=True) as group:
        ...     group.ports[1] - group.ports[0]
        1
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[Reservation]) -> None:
        self._items = tuple(items)

    @property
    def ports(self) -> list[int]:
        """The reserved port numbers, in order."""
        return [item.port for item in self._items]

    def release(self) -> None:
        """Release every reservation in the group (idempotent)."""
        mine = []
        for item in self._items:
            pid = item._pid
            if pid == _pid and not item._spec[3]:  # Reservation.release(), inlined
                item._pid = 0
                mine.append(item.port)
            elif pid:
                item.release()
        if mine:
            _locks.table().release_all(mine)

    if TYPE_CHECKING:
        @overload
        def __getitem__(self, index: int) -> Reservation: ...
        @overload
        def __getitem__(self, index: slice) -> Sequence[Reservation]: ...

    def __getitem__(self, index: int | slice) -> Reservation | Sequence[Reservation]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<ReservationGroup ports={self.ports}>"


def drain_deferred() -> None:
    """Release what garbage collection left in :data:`deferred` (``reserve_*`` call this
    first, when it is not empty).

    Example:
        >>> drain_deferred()
        >>> deferred
        []
    """
    table = _locks.table()
    while deferred:
        table.release(deferred.pop())


_new = object.__new__


def held(port: int, spec: tuple[str, int, int, bool]) -> Reservation:
    """The Reservation of *port*, which this process now holds; *spec* is ``(host, family,
    socktype, granted)``, one tuple shared by every reservation of a kind (made without
    ``__init__``: this is every reservation's hot path).

    Example:
        >>> t = _locks.table()
        >>> t.try_acquire(30005, t.current())
        True
        >>> r = held(30005, ("127.0.0.1", 2, 1, False))
        >>> r.address, r.released
        (('127.0.0.1', 30005), False)
        >>> r.release()
    """
    made = _new(Reservation)
    made.port, made._spec, made._pid = port, spec, _pid
    return made


def held_group(ports: list[int], spec: tuple[str, int, int, bool]) -> ReservationGroup:
    """The ReservationGroup of *ports*, which this process now holds, each of *spec*.

    Example:
        >>> t = _locks.table()
        >>> [t.try_acquire(port, t.current()) for port in (30006, 30007)]
        [True, True]
        >>> group = held_group([30006, 30007], ("127.0.0.1", 2, 1, False))
        >>> group.ports
        [30006, 30007]
        >>> group.release()
    """
    pid = _pid
    items = []
    for port in ports:
        made = _new(Reservation)
        made.port, made._spec, made._pid = port, spec, pid
        items.append(made)
    group = _new(ReservationGroup)
    group._items = tuple(items)
    return group
