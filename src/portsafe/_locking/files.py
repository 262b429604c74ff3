"""The cross-process lock behind a reservation on macOS, the BSDs and Windows: one byte
per port in sharded lock files.

Port ``p`` is locked by a one-byte record lock at offset ``p`` of the lock file of its
shard (``p >> 8``: 256 ports a file) in a shared lock directory (``_lockdir``: how it is
opened, verified, completed and watched; ``_lockdirs``: which one is in use). Why this
shape:

* POSIX record locks (``lockf``/``F_SETLK``) belong to the process: the kernel drops
  them when it dies, even by SIGKILL (G4); a ``fork()`` child does not inherit them
  (so it never silently shares its parent's ports), and ``F_GETLK`` reports the
  holder's pid (``portsafe list``).
* One file descriptor holds any number of ports, so 10,000 reservations cost a few
  dozen fds, not 10,000.
* The kernel keeps a file's locks in a linear list; sharding caps that list at 256
  entries, so the cost of one more lock does not grow with the number held. A file
  whose list someone floods with locks outside its ports' range is detected after a
  streak of misses and skipped, so a flood cannot make a reservation slow.
* The catch of POSIX locks: closing *any* descriptor of a file drops *all* of this
  process's locks on it. So directories are keyed by (device, inode), whatever path
  names them, each shard file is opened once per process, and closed only when this
  process holds nothing in it.
* Threads of one process share the owner, so the kernel would let two threads lock the
  same byte: an in-process set of held ports, under a mutex, arbitrates between them.

Windows uses ``msvcrt.locking`` on the same byte layout (per-handle locks, released
when the process exits); it cannot name holders, so :func:`holders` reports pid 0.
"""

from __future__ import annotations

import errno
import os
import threading

from portsafe._errors import LockDirError
from portsafe._locking.claim import HELD, LOCK_ERROR, compile_plan
from portsafe._locking.claim import SPAN_UNLOCK as _SPAN_UNLOCK
from portsafe._locking.claim import unlock as _unlock_port
from portsafe._locking.fileformat import SHARD_BITS, SHARD_COUNT, shard_name
from portsafe._locking.heldports import HeldPorts
from portsafe._locking.lockdir import LockDir, Shard
from portsafe._locking.lockdirs import LockDirs
from portsafe._locking.recordlock import foreign_locks, query_shard
from portsafe._platform import NAMES
from portsafe._settings import lock_dir

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from portsafe._locking.claim import Claim, Plan
    from portsafe._locking.nametable import NameTable

#: A claim that only locks (no probe binds): what try_acquire is.
_LOCK_ONLY = compile_plan(())

__all__ = ["MISS_LIMIT", "LockTable", "Table", "holders", "table", "unusable_error"]

_SHARD_SIZE = 1 << SHARD_BITS
#: Misses in a row in one shard after which its file is checked for a flood.
MISS_LIMIT = 16


class LockTable(HeldPorts):
    """This process's locks: open lock directories and shard files, the held ports.

    One instance per process (:func:`table`); it resets itself in a ``fork()`` child,
    which holds none of its parent's locks. Directories are keyed by (device, inode), so
    every alias of one (``//``, a symlink, a bind mount) shares one set of descriptors,
    and a change of ``PORTSAFE_LOCK_DIR`` mid-process takes effect for new reservations
    while the ones already held stay locked, and are released, where they were made.

    Example:
        >>> lockdir = table().current()
        >>> table().try_acquire(20000, lockdir) in (True, False)
        True
        >>> table().release(20000)  # True once released (False only with wait=False)
        True
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        #: port -> the shard file it is locked in, for every port this process holds
        #: (read-only outside the lock table)
        self.held: dict[int, Shard] = {}
        self._dirs = LockDirs(self.held)
        self._home: Shard | None = None  # the shard used last (its file kept open)
        self._miss_dir: LockDir | None = None
        self._miss_index = self._misses = 0
        self._warned: set[tuple[str, int]] = set()
        self.pid = os.getpid()

    # -- the directory ---------------------------------------------------------------

    def current(self, path: str | None = None) -> LockDir:
        """The lock directory to reserve in now (``PORTSAFE_LOCK_DIR``, or *path*),
        opened once and checked by one ``stat`` of its path at each call.

        Raises:
            LockDirError: unusable, or changed under ports this process holds there.

        Example:
            >>> table().current() is table().current()
            True
        """
        if path is None:
            path = lock_dir()  # the same str object each call while the setting stays
        found = self._dirs.cached(path)
        if found is not None:
            return found
        with self._mutex:
            try:
                return self._dirs.lookup(path)
            finally:
                self._forget_home_if_closed()

    def _resolve(self, where: object) -> LockDir:
        try:
            return self._dirs.resolve(where)
        finally:
            self._forget_home_if_closed()

    def _forget_home_if_closed(self) -> None:
        home = self._home
        if home is not None and home.lockdir.shards.get(home.index) is not home:
            self._home = None

    # -- ports -----------------------------------------------------------------------

    def home(self, where: LockDir | str) -> int | None:
        """The shard to search first: the one used last in *where* (its file is open),
        unless this process already holds half of it (walking past its own ports would
        cost more than opening another file)."""
        home = self._home
        if home is None or home.count >= _SHARD_SIZE // 2 or (
                home.lockdir is not where and home.lockdir.path != where):
            return None
        return home.index

    @property
    def open_fds(self) -> int:
        """How many lock files this process has open."""
        return self._dirs.open_fds

    def try_acquire(self, port: int, where: object = None) -> bool:
        """Lock *port* for this process; False if any process (this one too) holds it,
        or its lock file is unusable (see :meth:`unusable`).

        *where* is :meth:`current`, passed in by callers that already looked it up.
        """
        code = self.try_claim(port, where, _LOCK_ONLY)  # a claim with no binds
        if code & 15 == LOCK_ERROR:
            raise OSError(code >> 8, os.strerror(code >> 8))
        return not code

    def try_claim(self, port: int, where: object, claim: tuple[Claim, Plan]) -> int:
        """Lock *port* and bind-check it, in one call: *claim* is a probe's ``(claim
        function, plan)`` (``_claim``, ``_probe.Probes.claim``). Returns the claim's code:
        0 (``CLAIMED``) when the port is now held, else why not, with nothing held:
        ``HELD`` also when this process holds it or its lock file is unusable
        (``_probe.refusal`` reads the others).

        Example:
            >>> from portsafe._core import probe as _probe
            >>> t = table()
            >>> code = t.try_claim(20000, t.current(), _probe.targets(None, 2, 1).claim)
            >>> code == 0 and t.holds(20000) or code != 0
            True
            >>> _ = t.release(20000)
        """
        with self._mutex:
            if port in self.held:
                return HELD
            home = self._home
            if home is not None and home.index == port >> SHARD_BITS and home.lockdir is where:
                shard = home  # the common case: no lookup
            else:
                found = self._shard_for(port, where)
                if found is None:
                    return HELD
                shard = found
            run, plan = claim
            code = run(shard.fd, port, plan)
            if code:
                if code == HELD:
                    self._missed(shard)
                self._close_if_idle(shard)
                return code
            self.held[port] = shard
            shard.count += 1
            if home is not shard:
                self._home = shard
                if home is not None:
                    self._close_if_idle(home)
            return 0

    def _shard_for(self, port: int, where: object) -> Shard | None:
        """The open shard file of *port* in *where*, opened if need be; None if unusable."""
        lockdir = self._resolve(where)
        index = port >> SHARD_BITS
        found = lockdir.shards.get(index)
        if found is None or lockdir.poisoned:
            if index in lockdir.poisoned:
                return None
            if found is None:
                found = lockdir.open_shard(index)
                if found is None:
                    self._warn(lockdir, index)
                    return None
        return found

    def _missed(self, shard: Shard) -> None:
        if self._miss_dir is shard.lockdir and self._miss_index == shard.index:
            self._misses += 1
        else:
            self._miss_dir, self._miss_index, self._misses = shard.lockdir, shard.index, 1
        if self._misses >= MISS_LIMIT:
            self._misses = 0
            if foreign_locks(shard.fd, shard.index):
                shard.lockdir.poisoned[shard.index] = (
                    "someone holds locks outside its ports' range in it (a flood, which "
                    "would slow every lock call)")
                self._warn(shard.lockdir, shard.index)
                if self._home is shard:
                    self._home = None

    def _warn(self, lockdir: LockDir, index: int) -> None:
        key = (lockdir.generation, index)
        if key not in self._warned:
            self._warned.add(key)
            import warnings

            first, last = index << SHARD_BITS, ((index + 1) << SHARD_BITS) - 1
            warnings.warn(f"portsafe: skipping lock file {lockdir.describe(index)}: "
                          f"{lockdir.poisoned[index]}; ports {first}-{last} are not "
                          f"reserved from it. Remove the lock directory when no portsafe "
                          f"process runs (it is then made again)", RuntimeWarning,
                          stacklevel=4)

    def unusable(self, where: object, shards: object) -> dict[int, str]:
        """Of the shard indexes *shards*, those whose file is skipped, with why."""
        if not isinstance(where, LockDir):
            return {}
        poisoned = where.poisoned
        return {index: poisoned[index] for index in shards  # type: ignore[attr-defined]
                if index in poisoned}

    def _emptied(self, shard: Shard) -> None:
        """*shard* holds none of this process's ports any more."""
        lockdir = shard.lockdir
        if lockdir.broken:
            lockdir.broken.pop(shard.index, None)
        if shard is not self._home:
            self._close_if_idle(shard)
        if lockdir.retired and not lockdir.holding():
            self._dirs.drop(lockdir)
            self._forget_home_if_closed()

    def release(self, port: int, wait: bool = True) -> bool:
        """Unlock *port* if this process holds it (idempotent); True once done.

        With *wait* false (for garbage-collection finalizers) it does not block: a
        finalizer can run while this very thread holds the mutex, and blocking would
        deadlock, so it returns False and the caller defers the release.
        """
        mutex = self._mutex
        if not mutex.acquire(wait):
            return False
        try:
            shard = self.held.pop(port, None)
            if shard is not None:
                failed = _unlock_port(shard.fd, port)
                if failed:
                    raise OSError(failed, os.strerror(failed))
                shard.count -= 1
                if not shard.count and (shard is not self._home or shard.lockdir.broken or
                                        shard.lockdir.retired):  # else nothing to do
                    self._emptied(shard)
        finally:
            mutex.release()
        return True

    def release_all(self, ports: list[int]) -> None:
        """:meth:`release` each of *ports* (idempotent), under one hold of the mutex.

        When they are all the ports this process holds in one shard file (a group's, as a
        rule), one unlock call over their span releases them: a process's record locks
        are its own, so the bytes between them, which it holds no lock on, are not
        touched.

        Example:
            >>> table().release_all([20001, 20002])
        """
        with self._mutex:
            held, home = self.held, self._home
            shard = self._sole_shard(ports) if len(ports) > 1 and _SPAN_UNLOCK else None
            if shard is not None:
                low = min(ports)
                failed = _unlock_port(shard.fd, low, max(ports) - low + 1)
                if failed:
                    raise OSError(failed, os.strerror(failed))
                for port in ports:
                    del held[port]
                shard.count = 0
                if shard is not home or shard.lockdir.broken or shard.lockdir.retired:
                    self._emptied(shard)
                return
            for port in ports:
                shard = held.pop(port, None)
                if shard is not None:
                    failed = _unlock_port(shard.fd, port)
                    if failed:
                        raise OSError(failed, os.strerror(failed))
                    shard.count -= 1
                    if not shard.count and (shard is not home or shard.lockdir.broken or
                                            shard.lockdir.retired):
                        self._emptied(shard)

    def _sole_shard(self, ports: list[int]) -> Shard | None:
        """The shard whose held ports are exactly *ports* (distinct), or None."""
        held = self.held
        shard = held.get(ports[0])
        if shard is None or shard.count != len(ports) or len(set(ports)) != len(ports):
            return None
        for port in ports:
            if held.get(port) is not shard:
                return None
        return shard

    #: Whether a held port is a descriptor that can be passed to another process
    #: (``SCM_RIGHTS``): true of names (``_locking.names``), not of lock files.
    passes_descriptors = False

    def detach(self, port: int) -> int | None:
        """Stop holding *port* here and return the descriptor that holds it, for the
        caller to pass on and close. Only where :attr:`passes_descriptors`."""
        raise NotImplementedError("lock files cannot be passed to another process")

    def adopt(self, port: int, fd: int) -> bool:
        """Hold *port* by *fd*, a descriptor received from another process that holds
        it; False (and *fd* closed) if it does not. Only where :attr:`passes_descriptors`."""
        raise NotImplementedError("lock files cannot be passed to another process")

    def release_nowait(self, port: int) -> bool:
        """:meth:`release` without blocking: False if it must be deferred."""
        return self.release(port, False)

    def _close_if_idle(self, shard: Shard) -> None:
        # Closing drops every lock this process has on the file: only when it holds none.
        if shard.count == 0 and (shard is not self._home or shard.index in
                                 shard.lockdir.poisoned):
            if self._home is shard:
                self._home = None
            lockdir = shard.lockdir
            if lockdir.shards.get(shard.index) is shard:
                del lockdir.shards[shard.index]
                os.close(shard.fd)

    # -- who holds what ---------------------------------------------------------------

    def _query(self, lockdir: LockDir, index: int, only: int | None) -> list[tuple[int, int]]:
        shard = lockdir.shards.get(index)
        if shard is None:
            if index in lockdir.poisoned:
                return []
            shard = lockdir.open_shard(index)
            if shard is None:
                return []
        try:
            return query_shard(shard.fd, index, only)
        finally:
            self._close_if_idle(shard)  # safe: closed only if this process holds none

    def holder(self, port: int) -> int | None:
        """The pid holding *port* in the current lock directory, or None if nobody does."""
        if port in self.held:
            return self.pid
        with self._mutex:
            try:
                lockdir = self._resolve(None)
            except LockDirError:
                return None
            return next((pid for p, pid in self._query(lockdir, port >> SHARD_BITS, port)
                         if p == port), None)

    def holders(self) -> list[tuple[int, int]]:
        """Every (port, pid) locked in the current lock directory, this process's too."""
        path = lock_dir()
        if not os.path.isdir(path):
            return []
        with self._mutex:
            lockdir = self._resolve(path)
            found = [(port, self.pid) for port, shard in self.held.items()
                     if shard.lockdir is lockdir]
            for index in range(SHARD_COUNT):
                found.extend(self._query(lockdir, index, None))
            return sorted(found)

    # -- fork ------------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """Forget the parent's locks: the kernel did not give them to this process."""
        self._mutex = threading.Lock()
        self._dirs.clear(close=False)  # closes our copies only: the parent keeps its locks
        self.held.clear()
        self._home = self._miss_dir = None
        self.pid = os.getpid()

    def before_fork(self) -> None:
        """Take the mutex so that no thread is half-way through a change at fork."""
        self._mutex.acquire()

    def after_fork_in_parent(self) -> None:
        """Give back the mutex taken in :meth:`before_fork`."""
        self._mutex.release()


def unusable_error(lockdir: LockDir, unusable: dict[int, str]) -> LockDirError:
    """The error when every candidate's lock file is skipped (:meth:`LockTable.unusable`
    names them, with why): nothing usable is left.

    Example:
        >>> unusable_error(table().current(), {80: "it is missing"}).errno == errno.EPERM
        True
    """
    shown = "; ".join(f"{shard_name(index)}: {why}" for index, why in sorted(unusable.items())[:3])
    more = f" (and {len(unusable) - 3} more)" if len(unusable) > 3 else ""
    return LockDirError(errno.EPERM, f"no usable lock file for these ports in {lockdir.path}: "
                        f"{shown}{more}. Remove the lock directory when no portsafe process "
                        f"runs (it is then made again), or set PORTSAFE_LOCK_DIR")


if TYPE_CHECKING:
    #: What :func:`table` returns: this platform's lock table.
    Table = LockTable | NameTable

def _make_table() -> Table:
    """This process's lock table, made once, at import: a
    :class:`~portsafe._locking.nametable.NameTable` on Linux (ports held by names), a
    :class:`LockTable` elsewhere (lock files). Made at import rather than on first use,
    so that no thread can be half-way through making it when another forks (a child
    would then wait for ever on the lock that guarded it)."""
    made: Table
    if NAMES:
        from portsafe._locking.nametable import NameTable

        made = NameTable()
    else:
        made = LockTable()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=made.before_fork, after_in_parent=made.after_fork_in_parent,
                            after_in_child=made.after_fork_in_child)
    return made


def table() -> Table:
    """This process's lock table: names on Linux, lock files elsewhere.

    Example:
        >>> table() is table()
        True
    """
    return _table


def holders() -> list[tuple[int, int]]:
    """Every (port, pid) reserved through portsafe on this machine, sorted by port.

    The pid is as the kernel reports it: 0 where the holder lives in another pid
    namespace (a container) or the OS cannot tell (Windows).

    Example:
        >>> import portsafe
        >>> with portsafe.reserve_port() as r:
        ...     (r.port, os.getpid()) in holders()
        True
    """
    return table().holders()


_table: Table = _make_table()
