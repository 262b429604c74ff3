"""This process's held names (Linux): one descriptor per held port, and its limits.

:class:`NameTable` is the lock table on Linux (``_locks.table()`` returns it there). A
port is held while this process keeps a socket bound to the port's name
(``_locking.names``): the kernel refuses that name to every other socket of the network
namespace, whichever process or user asks, and frees it when the descriptor closes,
``kill -9`` included. So the table's whole state is ``held`` (port -> descriptor), and a
release is one ``close()``.

Descriptors, the price of names:

* **The limit.** Each held port costs a descriptor. When a claim fails for lack of one
  (``EMFILE``), or the first held name lands at descriptor :data:`~names.LOW_FDS` or
  above, the soft ``RLIMIT_NOFILE`` is raised to the hard limit, as Go's runtime does,
  and that is logged once at debug level (``portsafe`` logger). Child processes inherit
  the raised soft limit. Past the hard limit, :class:`LockUnavailableError` names the
  limit and what to do, and nothing is left held by the call that failed.
* **select().** Held names must not push the process's own sockets past descriptor
  1023, where ``select()`` stops working: a name claimed at or above ``LOW_FDS`` (256)
  is moved to the lowest free descriptor from :data:`HIGH` (1024) where the limit allows,
  so names take at most 256 of the descriptors below 1024.
* **fork.** A child forked from Python holds none of its parent's ports: the table
  closes its copies of the descriptors in the child (``os.register_at_fork``), so the
  parent's ``release()`` frees a port at once. A fork made from C (not through Python)
  keeps the copies until that child execs or exits: a delay of the release, never a
  second holder. ``exec`` closes them (close-on-exec).
* **Two copies of portsafe in one process** (a harness that clears ``sys.modules``) each
  have a table; the kernel refuses a name bound by the other's socket, so each sees the
  other's ports as held by someone else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading

from portsafe._errors import LockUnavailableError
from portsafe._locking import names
from portsafe._locking.claim import LOCK_ERROR, NO_SOCKET
from portsafe._locking.heldports import HeldPorts
from portsafe._settings import LOCK_DIR, getenv

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from portsafe._locking.claim import Plan
    from portsafe._locking.names import NameClaim

__all__ = ["HIGH", "NAMESPACE", "NameTable", "Namespace", "lease_budget"]

#: Where held names move to, from :data:`~names.LOW_FDS` up, when the limit allows.
HIGH = 1024
_NO_FDS = (errno.EMFILE, errno.ENFILE)
_close = os.close


class Namespace:
    """Where a name-held reservation lives: the network namespace (one per process).

    Stands where the file backend has a lock directory, for the code that asks where it
    reserves (the walk, the port-server client).
    """

    __slots__ = ()
    path = "the network namespace"

    def __repr__(self) -> str:
        return "<portsafe names: the network namespace>"


NAMESPACE = Namespace()


class NameTable(HeldPorts):
    """This process's held names: port -> the descriptor of the socket bound to its name.

    Example:
        >>> from portsafe._locking import files as _locks
        >>> t = _locks.table()
        >>> t.try_acquire(30002) == t.holds(30002)
        True
        >>> t.release(30002)
        True
    """

    #: A held port is a descriptor, which can be passed to another process.
    passes_descriptors = True

    def __init__(self) -> None:
        #: port -> the descriptor holding its name, for every port this process holds
        #: (read-only outside this class)
        self.held: dict[int, int] = {}
        self._mutex = threading.Lock()  # held across a claim and a release: see fork
        #: the base that names claimed at or above ``LOW_FDS`` move to (0: they stay),
        #: set when the first such name is claimed
        self.high = 0
        self._looked = False
        self._path: str | None = None  # the lock-directory setting last seen (ignored)
        self._warned = False
        self.pid = os.getpid()

    # -- where -------------------------------------------------------------------------

    def current(self, path: str | None = None) -> Namespace:
        """Where reservations are held now: the network namespace. *path*, the lock
        directory setting, is ignored (lock directories are the file backend's): the
        first time ``PORTSAFE_LOCK_DIR`` is seen set, a ``RuntimeWarning`` says so."""
        if path is not self._path and path is not None:
            self._path = path
            if not self._warned and getenv(LOCK_DIR):
                self._warned = True
                import warnings

                warnings.warn(f"portsafe: {LOCK_DIR} is ignored on Linux: reservations are "
                              f"held by names in the network namespace, which every process "
                              f"that could use the same ports sees (containers sharing a "
                              f"network namespace need nothing); unset it", RuntimeWarning,
                              stacklevel=3)
        return NAMESPACE

    def home(self, where: object) -> int | None:
        """No home shard: names have no files to keep open."""
        return None

    # -- ports -------------------------------------------------------------------------

    @property
    def open_fds(self) -> int:
        """How many descriptors hold names: one per held port."""
        return len(self.held)

    def try_acquire(self, port: int, where: object = None) -> bool:
        """Hold *port*'s name, without a bind check; False if any socket holds it."""
        code = self.try_claim(port, where, _NAME_ONLY)
        if code & 15 == LOCK_ERROR:
            raise OSError(code >> 8, os.strerror(code >> 8))
        return not code

    def try_claim(self, port: int, where: object, claim: tuple[NameClaim, Plan]) -> int:
        """Hold *port*'s name and bind-check the port in one call (*claim*: a probe's
        ``(claim function, plan)``, ``_probe.Probes.claim``). Returns 0 when the port is
        now held, else the claim's code (``_probe.refusal`` reads it), with nothing held.

        Example:
            >>> from portsafe._locking import files as _locks
            >>> from portsafe._core import probe as _probe
            >>> t = _locks.table()
            >>> t.try_claim(30003, None, _probe.targets(None, 2, 1).claim) in (0, 1)
            True
            >>> _ = t.release(30003)
        """
        run, plan = claim
        with self._mutex:
            code = run(port, plan, self.high)
            if not code & 15:
                fd = code >> 8
                self.held[port] = fd
                if fd >= names.LOW_FDS and not self._looked:
                    self._limits(port, fd)
                return 0
        kind = code & 15
        if kind == LOCK_ERROR or (kind == NO_SOCKET and code >> 8 in _NO_FDS):
            number = code >> 8
            if number not in _NO_FDS:
                raise LockUnavailableError(
                    number, f"cannot bind the abstract unix-socket name that holds port "
                    f"{port} ({os.strerror(number)}): on Linux portsafe holds every "
                    f"reservation by such a name, and something here refuses them (a "
                    f"sandbox: a snap's AppArmor profile, a seccomp filter). Run outside "
                    f"the sandbox, or allow abstract unix sockets; portsafe does not fall "
                    f"back to lock files, which its neighbours would not see")
            if self._raise_limit():
                return self.try_claim(port, where, claim)
            raise self._limit_error(number)
        return code

    def _limits(self, port: int, fd: int) -> None:
        """The first name at or above ``LOW_FDS``: raise the soft limit if need be and
        move names from here on to ``HIGH`` (this one too). Under the mutex."""
        self._looked = True
        soft = _soft_limit()
        if soft <= HIGH + names.LOW_FDS and self._raise_limit():
            soft = _soft_limit()
        self.high = HIGH if soft > HIGH + names.LOW_FDS else 0
        if fd < self.high:
            import fcntl

            try:
                moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, self.high)
            except OSError:
                return
            self.held[port] = moved
            _close(fd)

    def _raise_limit(self) -> bool:
        """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; False if it already is."""
        try:
            import resource
        except ImportError:  # pragma: no cover - not on Linux
            return False
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20  # as Go: the kernel refuses more than nr_open anyway
        if soft != resource.RLIM_INFINITY and soft >= hard:
            return False
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            try:  # nr_open may be below the hard limit
                with open("/proc/sys/fs/nr_open", "rb") as file:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (int(file.read()), hard))
            except (OSError, ValueError):
                return False
        import logging

        logging.getLogger("portsafe").debug(
            "portsafe: raised the soft limit of open files (RLIMIT_NOFILE) from %s to %s: "
            "each held reservation is one descriptor; child processes inherit the new "
            "limit", soft, _soft_limit())
        return True

    def _limit_error(self, number: int) -> LockUnavailableError:
        if number == errno.ENFILE:
            return LockUnavailableError(
                number, f"the system's table of open files is full (ENFILE) while this "
                f"process holds {len(self.held)} reservations, one descriptor each: raise "
                f"fs.file-max, or release reservations")
        return LockUnavailableError(
            number, f"this process holds {len(self.held)} reservations, one descriptor "
            f"each, and has reached its hard limit of open files (RLIMIT_NOFILE "
            f"{_soft_limit()}): release reservations you no longer need, or raise the "
            f"hard limit (ulimit -Hn as root, LimitNOFILE= for a systemd service, "
            f"--ulimit nofile= for docker)")

    def release(self, port: int, wait: bool = True) -> bool:
        """Close *port*'s name if this process holds it (idempotent); True once done.

        With *wait* false (for garbage-collection finalizers) it does not block on the
        mutex: it returns False and the caller defers the release.
        """
        mutex = self._mutex
        if not mutex.acquire(wait):
            return False
        try:
            fd = self.held.pop(port, None)
            if fd is not None:
                _close(fd)
        finally:
            mutex.release()
        return True

    def release_nowait(self, port: int) -> bool:
        """:meth:`release` without blocking: False if it must be deferred."""
        return self.release(port, False)

    def release_all(self, ports: list[int]) -> None:
        """:meth:`release` each of *ports* (idempotent), under one hold of the mutex.

        Example:
            >>> from portsafe._locking import files as _locks
            >>> _locks.table().release_all([30004, 30005])
        """
        with self._mutex:
            pop = self.held.pop
            for port in ports:
                fd = pop(port, None)
                if fd is not None:
                    _close(fd)

    def unusable(self, where: object, shards: object) -> dict[int, str]:
        """Nothing is ever skipped: there are no lock files."""
        return {}

    # -- hand-over -------------------------------------------------------------------

    def detach(self, port: int) -> int | None:
        """Stop holding *port* here and return the descriptor that holds its name, for
        the caller to pass on (``SCM_RIGHTS``) and then close; None if not held.

        Example:
            >>> from portsafe._locking import files as _locks
            >>> _locks.table().detach(30006) is None
            True
        """
        with self._mutex:
            return self.held.pop(port, None)

    def adopt(self, port: int, fd: int) -> bool:
        """Hold *port* by *fd*, a descriptor received from a process that held it.
        False (and *fd* closed) unless *fd* is a socket bound to *port*'s name.

        Example:
            >>> import socket
            >>> from portsafe._locking import files as _locks
            >>> sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            >>> _locks.table().adopt(30007, sock.detach())  # not bound to its name
            False
        """
        import socket

        try:
            with socket.socket(fileno=os.dup(fd)) as probe:
                bound = probe.family == socket.AF_UNIX and \
                    probe.getsockname() == names.name(port)
        except OSError:
            bound = False
        if bound:
            os.set_inheritable(fd, False)
            with self._mutex:
                if port not in self.held:
                    self.held[port] = fd
                    return True
        _close(fd)
        return False

    # -- who holds what -------------------------------------------------------------

    def holder(self, port: int) -> int | None:
        """The pid holding *port*, or None if nobody does (0: one that cannot be seen)."""
        if port in self.held:
            return self.pid
        from portsafe._locking import holders

        found = holders.holders(port)
        return None if not found else found[0].pid or 0

    def holders(self) -> list[tuple[int, int]]:
        """Every (port, pid) held by a name in this network namespace, sorted; pid 0
        where it cannot be read (another user's process, as a non-root user)."""
        from portsafe._locking import holders

        return sorted((found.port, found.pid or 0) for found in holders.holders())

    # -- fork ------------------------------------------------------------------------

    def before_fork(self) -> None:
        """Take the mutex so that no claim or release is half-way at fork."""
        self._mutex.acquire()

    def after_fork_in_parent(self) -> None:
        """Give back the mutex taken in :meth:`before_fork`."""
        self._mutex.release()

    def after_fork_in_child(self) -> None:
        """Close the copies of the parent's names: the child holds none of its ports."""
        self._mutex = threading.Lock()
        for fd in self.held.values():
            with contextlib.suppress(OSError):
                _close(fd)
        self.held.clear()
        self.pid = os.getpid()
        self.high, self._looked = 0, False  # the child may lower its limit before it reserves


def lease_budget() -> int:
    """How many reservations a process should keep on lease at most (auto mode's,
    ``find_unused_port``'s): a quarter of its soft ``RLIMIT_NOFILE``, at least 16, since
    each held name is a descriptor.

    Example:
        >>> lease_budget() >= 16
        True
    """
    if not hasattr(os, "sysconf"):  # pragma: no cover - Windows: no descriptor per lease
        return 1 << 30
    return max(16, _soft_limit() // 4)


def _soft_limit() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


_NAME_ONLY = names.compile_claim(())

