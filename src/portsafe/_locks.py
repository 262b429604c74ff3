"""The cross-process lock behind a reservation: one byte per port in sharded lock files.

Port ``p`` is locked by a one-byte record lock at offset ``p`` of the lock file of its
shard (``p >> 8``: 256 ports a file) in a shared lock directory. Why this shape:

* POSIX record locks (``lockf``/``F_SETLK``) belong to the process: the kernel drops
  them when it dies, even by SIGKILL (G4); a ``fork()`` child does not inherit them
  (so it never silently shares its parent's ports), and ``F_GETLK`` reports the
  holder's pid (``portsafe list``).
* One file descriptor holds any number of ports, so 10,000 reservations cost a few
  dozen fds, not 10,000 (abstract unix sockets would cost one fd each).
* The kernel keeps a file's locks in a linear list; sharding caps that list at 256
  entries, so the cost of one more lock does not grow with the number held.
* The catch of POSIX locks: closing *any* descriptor of a file drops *all* of this
  process's locks on it. So each shard file is opened once per process, and closed
  only when this process holds nothing in it.
* Threads of one process share the owner, so the kernel would let two threads lock the
  same byte: an in-process set of held ports, under a mutex, arbitrates between them.

Windows uses ``msvcrt.locking`` on the same byte layout (per-handle locks, released
when the process exits); it cannot name holders, so :func:`holders` reports pid 0.

The directory must not follow ``TMPDIR`` (test runners give each worker its own), so it
is fixed: ``PORTSAFE_LOCK_DIR``, else ``/tmp/portsafe-locks`` (``%ProgramData%`` on
Windows). Because ``/tmp`` is shared by all users, the directory is created
world-writable with the sticky bit, must not be a symlink, and files are opened with
``O_NOFOLLOW`` and checked to be plain, singly linked files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import sys
import threading

from portsafe._errors import LockDirError
from portsafe._settings import lock_dir, lock_dir_is_explicit

__all__ = ["SHARD_BITS", "LockTable", "holders", "lock_dir", "table"]

#: Ports per lock file: a power of two so a port's shard is ``port >> 8``.
SHARD_BITS = 8

_SHARD_SIZE = 1 << SHARD_BITS
_WINDOWS = sys.platform == "win32"
_BUSY = frozenset({errno.EACCES, errno.EAGAIN, getattr(errno, "EDEADLOCK", errno.EDEADLK)})


def shard_name(shard: int) -> str:
    """The file name of a shard, naming the ports it covers (``ports-20224-20479``)."""
    start = shard << SHARD_BITS
    return f"ports-{start:05d}-{start + _SHARD_SIZE - 1:05d}"


def ensure_dir(path: str, *, explicit: bool) -> None:
    """Create the lock directory if needed and check it is safe to share.

    An *explicit* directory (``PORTSAFE_LOCK_DIR``) is trusted to be shared as its owner
    intends; the default one, in world-writable ``/tmp``, must be a real directory that
    is ours or has mode 1777.
    """
    try:
        os.mkdir(path, 0o700 if explicit else 0o1777)
        if not explicit and not _WINDOWS:
            # mkdir's mode is masked by umask; every user's tests must share the directory
            os.chmod(path, 0o1777)  # noqa: S103 - sticky, like /tmp: no one deletes others' files
    except FileExistsError:
        pass
    except OSError as exc:
        raise LockDirError(exc.errno, f"cannot create the portsafe lock directory {path}: "
                           f"{exc.strerror}; set PORTSAFE_LOCK_DIR to a writable "
                           f"directory shared by every test process") from exc
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise LockDirError(exc.errno, f"cannot stat lock directory {path}: {exc.strerror}"
                           ) from exc
    if explicit:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise LockDirError(errno.ENOTDIR, f"PORTSAFE_LOCK_DIR={path} is not a directory")
        return
    if not stat.S_ISDIR(info.st_mode):
        raise LockDirError(errno.ENOTDIR, f"{path} is not a directory (a symlink or file "
                           f"there could redirect portsafe's locks); remove it, or set "
                           f"PORTSAFE_LOCK_DIR")
    if _WINDOWS:
        return
    shared = info.st_mode & 0o1777 == 0o1777
    if not shared and info.st_uid != os.getuid():
        raise LockDirError(errno.EACCES, f"{path} belongs to uid {info.st_uid} with mode "
                           f"{stat.S_IMODE(info.st_mode):o}, so it cannot be shared safely "
                           f"(expected mode 1777, like /tmp); remove it, or set "
                           f"PORTSAFE_LOCK_DIR")


def open_shard_file(directory: str, shard: int) -> int:
    """Open (creating if needed) a shard's lock file, refusing links and odd files."""
    path = os.path.join(directory, shard_name(shard))
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | \
        getattr(os, "O_BINARY", 0)
    for _ in range(3):
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            # O_EXCL, not a plain O_CREAT: with fs.protected_regular, O_CREAT on another
            # user's existing file in a sticky directory fails even when it may be opened.
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            if not _WINDOWS:
                os.fchmod(fd, 0o666)  # every user's tests must be able to lock it
        except OSError as exc:
            raise LockDirError(exc.errno, f"cannot open lock file {path}: {exc.strerror}; "
                               f"remove it, or set PORTSAFE_LOCK_DIR") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise LockDirError(errno.EPERM, f"lock file {path} is not a plain file with one "
                               f"link; remove it, or set PORTSAFE_LOCK_DIR")
        return fd
    raise LockDirError(errno.EAGAIN, f"lock file {path} keeps appearing and vanishing")


# -- the per-OS primitive ---------------------------------------------------------------

if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int, port: int) -> bool:
        os.lseek(fd, port, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int, port: int) -> None:
        os.lseek(fd, port, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int, port: int) -> bool:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise
        return True

    def _unlock(fd: int, port: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, port)


def flock_layout(platform: str) -> tuple[str, int, int, int]:
    """``struct flock`` as (format, index of l_type, l_start, l_pid) for F_GETLK."""
    if platform.startswith("linux"):
        return "hhqqi4x", 0, 2, 4
    if platform.startswith("freebsd"):
        return "qqihhi", 3, 0, 2
    return "qqihh", 3, 0, 2  # macOS and the other BSDs


class _Shard:
    """One open lock file: its fd and how many of its ports this process holds."""

    __slots__ = ("count", "directory", "fd", "index")

    def __init__(self, directory: str, index: int, fd: int) -> None:
        self.directory = directory
        self.index = index
        self.fd = fd
        self.count = 0


class LockTable:
    """This process's locks: open shard files, the held ports, and the home shard.

    One instance per process (:func:`table`); it resets itself in a ``fork()`` child,
    which holds none of its parent's locks. Files are keyed by (directory, shard), so a
    change of ``PORTSAFE_LOCK_DIR`` mid-process takes effect for new reservations while
    the ones already held stay locked, and are released, in the directory they were
    made in.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        #: port -> the shard file it is locked in, for every port this process holds
        #: (read-only outside this class)
        self.held: dict[int, _Shard] = {}
        self._shards: dict[tuple[str, int], _Shard] = {}
        self._checked: set[str] = set()  # directories found safe to use
        self._home: _Shard | None = None
        self.pid = os.getpid()

    def home(self, directory: str) -> int | None:
        """The shard to search first: the one used last in *directory* (its file is open),
        unless this process already holds half of it (walking past its own ports would
        cost more than opening another file)."""
        home = self._home
        if home is None or home.directory != directory or home.count >= _SHARD_SIZE // 2:
            return None
        return home.index

    def holds(self, port: int) -> bool:
        """Whether this process holds *port*."""
        return port in self.held

    @property
    def held_count(self) -> int:
        """How many ports this process holds."""
        return len(self.held)

    @property
    def open_fds(self) -> int:
        """How many lock files this process has open."""
        return len(self._shards)

    def try_acquire(self, port: int, directory: str | None = None) -> bool:
        """Lock *port* for this process; False if any process (this one too) holds it.

        *directory* is :func:`lock_dir`, passed in by callers that already looked it up.
        """
        with self._mutex:
            if port in self.held:
                return False
            home = self._home
            if home is not None and home.index == port >> SHARD_BITS and (
                    directory is None or home.directory == directory):
                shard = home  # the common case: no key to build, no lookup
            else:
                key = (directory or lock_dir(), port >> SHARD_BITS)
                found = self._shards.get(key)
                if found is None:
                    found = self._shards[key] = _Shard(*key, self._open(*key))
                shard = found
            if not _try_lock(shard.fd, port):
                self._close_if_idle(shard)
                return False
            self.held[port] = shard
            shard.count += 1
            if home is not shard:
                self._home = shard
                if home is not None:
                    self._close_if_idle(home)
            return True

    def _release_locked(self, port: int) -> None:
        shard = self.held.pop(port, None)
        if shard is not None:
            _unlock(shard.fd, port)
            shard.count -= 1
            if shard.count == 0:
                self._close_if_idle(shard)

    def release(self, port: int) -> None:
        """Unlock *port* if this process holds it (idempotent)."""
        with self._mutex:
            self._release_locked(port)

    def release_nowait(self, port: int) -> bool:
        """Release without blocking (for garbage-collection finalizers).

        A finalizer can run while this very thread holds the mutex; blocking would
        deadlock, so it reports False and the caller defers the release.
        """
        if not self._mutex.acquire(blocking=False):
            return False
        try:
            self._release_locked(port)
        finally:
            self._mutex.release()
        return True

    def _open(self, directory: str, shard: int) -> int:
        if directory not in self._checked:
            ensure_dir(directory, explicit=lock_dir_is_explicit())
            self._checked.add(directory)
        return open_shard_file(directory, shard)

    def _close_if_idle(self, shard: _Shard) -> None:
        # Closing drops every lock this process has on the file: only when it holds none.
        if shard.count == 0 and shard is not self._home:
            os.close(shard.fd)
            del self._shards[(shard.directory, shard.index)]

    def holder(self, port: int) -> int | None:
        """The pid holding *port* in the current lock directory, or None if nobody does."""
        directory, shard = lock_dir(), port >> SHARD_BITS
        if port in self.held:
            return self.pid
        with self._mutex:
            cached = self._shards.get((directory, shard))
            if cached is not None:
                return next((pid for p, pid in _query_shard(cached.fd, shard, port) if p == port),
                            None)
            try:
                fd = open_shard_file(directory, shard)
            except LockDirError:
                return None
            try:  # safe to close: this process holds nothing in this file
                return next((pid for p, pid in _query_shard(fd, shard, port) if p == port),
                            None)
            finally:
                os.close(fd)

    def holders(self) -> list[tuple[int, int]]:
        """Every (port, pid) locked in the current lock directory, this process's too."""
        directory = lock_dir()
        with self._mutex:
            found = [(port, self.pid) for port, shard in self.held.items()
                     if shard.directory == directory]
            try:
                names = os.listdir(directory)
            except OSError:
                return sorted(found)
            for name in names:
                shard = _shard_of(name)
                if shard is None:
                    continue
                cached = self._shards.get((directory, shard))
                if cached is not None:
                    found.extend(_query_shard(cached.fd, shard))
                    continue
                # Safe to close afterwards: this process holds nothing in this file.
                try:
                    fd = open_shard_file(directory, shard)
                except LockDirError:
                    continue
                try:
                    found.extend(_query_shard(fd, shard))
                finally:
                    os.close(fd)
            return sorted(found)

    def after_fork_in_child(self) -> None:
        """Forget the parent's locks: the kernel did not give them to this process."""
        self._mutex = threading.Lock()
        for shard in self._shards.values():
            with contextlib.suppress(OSError):
                os.close(shard.fd)  # drops this process's locks only, and it has none
        self._shards.clear()
        self.held.clear()
        self._home = None
        self.pid = os.getpid()

    def before_fork(self) -> None:
        """Take the mutex so that no thread is half-way through a change at fork."""
        self._mutex.acquire()

    def after_fork_in_parent(self) -> None:
        """Give back the mutex taken in :meth:`before_fork`."""
        self._mutex.release()


def _shard_of(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != "ports" or not parts[1].isdigit():
        return None
    start = int(parts[1])
    return start >> SHARD_BITS if start % _SHARD_SIZE == 0 else None


def _query_shard(fd: int, shard: int, only: int | None = None) -> list[tuple[int, int]]:
    """The (port, pid) locks other processes hold in one shard file (or on port *only*)."""
    if _WINDOWS:
        return _query_shard_windows(fd, shard, only)
    layout, type_at, start_at, pid_at = flock_layout(sys.platform)
    field_count = len(layout.replace("4x", ""))
    found: list[tuple[int, int]] = []
    # F_GETLK answers with *a* conflicting lock, not the lowest: split around each answer.
    pending = [(shard << SHARD_BITS, (shard + 1) << SHARD_BITS) if only is None
               else (only, only + 1)]
    while pending:
        start, end = pending.pop()
        fields = [0] * field_count
        fields[type_at] = fcntl.F_WRLCK
        fields[start_at] = start
        fields[start_at + 1] = end - start  # l_len follows l_start in every layout
        answer = struct.unpack(layout, fcntl.fcntl(fd, fcntl.F_GETLK,
                                                   struct.pack(layout, *fields)))
        if answer[type_at] == fcntl.F_UNLCK:
            continue
        lock_start, lock_len = answer[start_at], answer[start_at + 1]
        lock_start = max(start, lock_start)
        lock_end = end if lock_len == 0 else min(end, answer[start_at] + lock_len)
        found.extend((port, answer[pid_at]) for port in range(lock_start, lock_end))
        if start < lock_start:
            pending.append((start, lock_start))
        if lock_end < end:
            pending.append((lock_end, end))
    return found


def _query_shard_windows(fd: int, shard: int, only: int | None) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    ports = range(max(shard << SHARD_BITS, 1), (shard + 1) << SHARD_BITS) if only is None \
        else (only,)
    for port in ports:
        if _try_lock(fd, port):
            _unlock(fd, port)
        else:
            found.append((port, 0))  # Windows cannot say who holds a byte-range lock
    return found


_table: LockTable | None = None
_table_mutex = threading.Lock()


def table() -> LockTable:
    """This process's :class:`LockTable`, made on first use."""
    global _table
    if _table is None:
        with _table_mutex:
            if _table is None:
                made = LockTable()
                if hasattr(os, "register_at_fork"):
                    os.register_at_fork(before=made.before_fork,
                                        after_in_parent=made.after_fork_in_parent,
                                        after_in_child=made.after_fork_in_child)
                _table = made
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
