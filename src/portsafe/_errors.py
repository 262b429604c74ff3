"""The exception hierarchy: one base, each subclass also a builtin people already catch."""

from __future__ import annotations

import errno
import sys

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, TypeVar

    from portsafe._net.who import Holder

    _Class = TypeVar("_Class", bound=type)

__all__ = [
    "AddressInUseError",
    "AddressNotAvailableError",
    "InvalidSettingError",
    "KeeperError",
    "KeeperNotRunningError",
    "LockDirError",
    "LockUnavailableError",
    "NoFreePortError",
    "PortNotReadyError",
    "PortsafeError",
    "public",
]


def public(cls: _Class) -> _Class:
    """Name *cls* by its public path, ``portsafe.<name>``, in reprs, tracebacks and pickles.

    Every class that ``portsafe`` exports is defined with this decorator, so the name is
    right from the moment the class exists. doctest's finder skips a class whose
    ``__module__`` is not the module it searches, so the class is also listed in its
    defining module's ``__test__``, where the finder looks regardless.

    Example:
        >>> NoFreePortError.__module__
        'portsafe'
        >>> __test__["NoFreePortError"] is NoFreePortError
        True
    """
    module = sys.modules[cls.__module__]
    vars(module).setdefault("__test__", {})[cls.__name__] = cls
    cls.__module__ = "portsafe"
    return cls



@public
class PortsafeError(Exception):
    """Base class of every error portsafe raises on purpose.

    Catch this to handle any portsafe failure; each subclass also derives from the
    builtin exception that code already catches for the same situation (``OSError``,
    ``ValueError``, ``TimeoutError``).

    Example:
        >>> import portsafe
        >>> try:
        ...     portsafe.reserve_port(ports=[])
        ... except portsafe.PortsafeError as exc:
        ...     print(type(exc).__name__)
        InvalidSettingError
    """

@public
class NoFreePortError(PortsafeError, OSError):
    """Raised when no candidate port could be reserved.

    Every candidate was tried once (so the number of attempts is bounded by the number
    of candidates), and each was either held by another portsafe user or in use by a
    socket on this machine. ``errno`` is ``EADDRINUSE``; ``attempts`` says how many
    candidates were tried and ``candidates`` how many there were.

    Example:
        >>> import portsafe
        >>> try:
        ...     portsafe.reserve_ports(3, ports=range(20000, 20002))
        ... except portsafe.NoFreePortError as exc:
        ...     print(exc.candidates)
        2
    """
    def __init__(self, message: str, *, attempts: int = 0, candidates: int = 0) -> None:
        super().__init__(errno.EADDRINUSE, message)
        self.attempts = attempts
        self.candidates = candidates

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_no_free_port, (self.strerror, self.attempts, self.candidates))


def _rebuild_no_free_port(message: str, attempts: int, candidates: int) -> NoFreePortError:
    return NoFreePortError(message, attempts=attempts, candidates=candidates)


@public
class LockUnavailableError(PortsafeError, OSError):
    """Raised when reservations cannot be held here at all; the message says why and
    what to do.

    On Linux a reservation is an abstract unix-socket name held by a descriptor: this is
    raised when the names cannot be bound (a sandbox such as a snap's AppArmor profile
    or a seccomp filter refuses them: portsafe does not fall back to lock files, which
    its neighbours would not see), and when this process has no descriptor left for one
    more (its hard ``RLIMIT_NOFILE`` is reached; nothing of the failed call stays held).
    Elsewhere its subclass :class:`LockDirError` says what is wrong with the lock
    directory.

    Example:
        >>> import portsafe
        >>> issubclass(portsafe.LockDirError, portsafe.LockUnavailableError)
        True
    """

@public
class LockDirError(LockUnavailableError):
    """Raised when the shared lock directory cannot be used safely (macOS, the BSDs and
    Windows; Linux uses no lock directory).

    The directory (``PORTSAFE_LOCK_DIR``, default ``/tmp/portsafe-locks``) must be a real
    directory (not a symlink, unless ``PORTSAFE_LOCK_DIR`` names one that you or root
    own) that is owned by you or root or is sticky, like ``/tmp``, and in which you can
    create files if it is new. It is raised too when the directory is in a format this
    version cannot read (a newer portsafe made it), when it was deleted and made again
    while processes that used the old one still run (the message names their pids), when
    lock files under ports this process holds were deleted or replaced (the message
    names the ports: they are no longer exclusive), and when every candidate's lock file
    is unusable. The message says what was found and how to fix it.

    Example:
        >>> import portsafe
        >>> issubclass(portsafe.LockDirError, OSError)
        True
    """

@public
class InvalidSettingError(PortsafeError, ValueError):
    """Raised when an argument or an environment setting has a value portsafe cannot use.

    Covers ``PORTSAFE_RANGE``, ``PORTSAFE_EXCLUDE`` and ``PORTSAFE_LOCK_DIR`` as well as
    arguments such as an empty ``ports=`` range or a port outside 1..65535. The message
    names the value given and what is allowed. (Wrong *types* raise ``TypeError``.)

    Example:
        >>> import portsafe
        >>> try:
        ...     portsafe.reserve_port(ports=[70000])
        ... except ValueError as exc:
        ...     print(exc)
        ports: port 70000 is outside 1..65535
    """

@public
class AddressNotAvailableError(PortsafeError, OSError):
    """Raised when the address to reserve for cannot be bound at all on this machine.

    For example ``family=socket.AF_INET6`` on a host without IPv6, or a ``host`` that is
    not an address of this machine. No port would help, so portsafe stops at once
    instead of trying every candidate; ``errno`` is the one the OS gave.

    Example:
        >>> import portsafe
        >>> try:
        ...     portsafe.reserve_port(host="192.0.2.1")  # TEST-NET: not this machine's
        ... except portsafe.AddressNotAvailableError as exc:
        ...     print(exc.errno == __import__("errno").EADDRNOTAVAIL)
        True
    """

class KeeperError(PortsafeError, OSError):
    """Raised when the lease keeper cannot be reached, started or trusted.

    ``portsafe reserve`` then exits 4 with this message (nothing would hold the port);
    ``portsafe run`` and ``--lease 0`` need no keeper.

    Example:
        >>> str(KeeperError("the keeper is gone"))
        'the keeper is gone'
    """


class KeeperNotRunningError(KeeperError):
    """Raised by the keeper client with ``start=False`` when no keeper is running.

    Example:
        >>> issubclass(KeeperNotRunningError, KeeperError)
        True
    """



@public
class AddressInUseError(PortsafeError, OSError):
    """Raised in place of a bare ``EADDRINUSE`` to say who holds the port.

    Made by :func:`portsafe.explain_address_in_use`. ``errno`` is ``EADDRINUSE``, so code
    that checks ``exc.errno`` keeps working; ``port`` is the port and ``holders`` the
    list of :class:`portsafe.Holder` found (possibly empty).

    Example:
        >>> import errno, portsafe
        >>> exc = portsafe.AddressInUseError("port 1 is busy", port=1)
        >>> exc.errno == errno.EADDRINUSE
        True
    """

    def __init__(self, message: str, *, port: int, holders: Iterable[Holder] = ()) -> None:
        super().__init__(errno.EADDRINUSE, message)
        self.port = port
        self.holders = list(holders)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_address_in_use, (self.strerror, self.port, self.holders))


def _rebuild_address_in_use(message: str, port: int, holders: list[Holder]) -> AddressInUseError:
    return AddressInUseError(message, port=port, holders=holders)


@public
class PortNotReadyError(PortsafeError, TimeoutError):
    """Raised by :func:`portsafe.wait_for_port` when nothing accepted connections in time.

    Also raised, without waiting out the timeout, when the watched ``process`` exits
    first. Attributes: ``host`` and ``port`` waited for, ``waited`` (seconds),
    ``seen`` (a dict counting what the attempts saw, e.g. ``{"connection refused":
    52}``) and ``returncode`` (the process's exit code, or ``None`` if it was still
    running or none was given). ``errno`` is ``ETIMEDOUT``.

    Example:
        >>> import portsafe
        >>> with portsafe.listen() as sock:
        ...     port = sock.getsockname()[1]
        >>> try:  # the socket is closed: nothing listens there any more
        ...     portsafe.wait_for_port(port, timeout=0.05)
        ... except portsafe.PortNotReadyError as exc:
        ...     print(exc.seen)  # doctest: +SKIP
        {'connection refused': 7}
    """

    def __init__(
        self,
        message: str,
        *,
        host: str,
        port: int,
        waited: float,
        seen: Mapping[str, int] | None = None,
        returncode: int | None = None,
    ) -> None:
        super().__init__(errno.ETIMEDOUT, message)
        self.host = host
        self.port = port
        self.waited = waited
        self.seen = dict(seen or {})
        self.returncode = returncode

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[object, ...]:
        attributes = {
            "host": self.host,
            "port": self.port,
            "waited": self.waited,
            "seen": self.seen,
            "returncode": self.returncode,
        }
        return (_rebuild_port_not_ready, (self.strerror, attributes))


def _rebuild_port_not_ready(message: str, attributes: dict[str, Any]) -> PortNotReadyError:
    return PortNotReadyError(message, **attributes)
