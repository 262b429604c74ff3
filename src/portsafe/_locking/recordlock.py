"""The record-lock primitive, per OS, and the questions asked of a lock file.

POSIX: ``lockf`` (``F_SETLK``) on one byte per port; ``F_GETLK`` names a holder's pid.
Windows: ``msvcrt.locking`` on the same bytes; it cannot name holders (pid 0).
"""

from __future__ import annotations

import errno
import os
import struct
import sys

from portsafe._locking.fileformat import SHARD_BITS

__all__ = ["BUSY", "EXCLUSIVE", "LOCKF", "UNLOCK", "fcntl_lock", "flock_layout", "foreign_locks",
           "query_shard", "query_shard_windows", "try_lock", "unlock"]

_WINDOWS = sys.platform == "win32"
#: The errnos of a lock taken by someone else.
BUSY = _BUSY = frozenset({errno.EACCES, errno.EAGAIN,
                          getattr(errno, "EDEADLOCK", errno.EDEADLK)})


# -- the per-OS primitive ---------------------------------------------------------------

#: ``fcntl.lockf`` where record locks are POSIX ones (for callers that inline
#: :func:`try_lock` and :func:`unlock`: ``LOCKF(fd, EXCLUSIVE, 1, port)``, ``LOCKF(fd,
#: UNLOCK, 1, port)``), else None.
LOCKF = None
EXCLUSIVE = UNLOCK = 0

if sys.platform == "win32":
    import msvcrt

    def try_lock(fd: int, port: int) -> bool:
        os.lseek(fd, port, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def unlock(fd: int, port: int) -> None:
        os.lseek(fd, port, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    LOCKF = fcntl.lockf
    EXCLUSIVE, UNLOCK = fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN

    def try_lock(fd: int, port: int) -> bool:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise
        return True

    def unlock(fd: int, port: int) -> None:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, port)


def flock_layout(platform: str) -> tuple[str, int, int, int]:
    """``struct flock`` of *platform* as (``struct`` format, index of l_type, of l_start,
    of l_pid); l_len follows l_start, and l_whence is left 0 (``SEEK_SET``).

    Example:
        >>> flock_layout("darwin")
        ('qqihh', 3, 0, 2)
    """
    if platform.startswith("linux"):
        return "hhqqi4x", 0, 2, 4
    if platform.startswith("freebsd"):
        return "qqihhi", 3, 0, 2
    return "qqihh", 3, 0, 2  # macOS and the other BSDs


def fcntl_lock(fd: int, command: int, kind: int, start: int, length: int,
               ) -> tuple[int, int, int, int]:
    """``fcntl(fd, command, struct flock)`` on bytes [start, start+length) (0: to the
    end) with l_type *kind*: the answer's (l_type, l_start, l_len, l_pid). POSIX only.

    Raises:
        OSError: as ``fcntl`` does (``F_SETLK`` on a byte held elsewhere: :data:`BUSY`).

    Example:
        >>> import fcntl, tempfile
        >>> with tempfile.TemporaryFile() as file:
        ...     fcntl_lock(file.fileno(), fcntl.F_GETLK, fcntl.F_WRLCK, 7, 1)[0] == fcntl.F_UNLCK
        True
    """
    layout, type_at, start_at, pid_at = flock_layout(sys.platform)
    fields = [0] * len(layout.replace("4x", ""))
    fields[type_at] = kind
    fields[start_at] = start
    fields[start_at + 1] = length
    answer = struct.unpack(layout, fcntl.fcntl(fd, command, struct.pack(layout, *fields)))
    return answer[type_at], answer[start_at], answer[start_at + 1], answer[pid_at]


def foreign_locks(fd: int, shard: int) -> bool:
    """Whether a lock lies outside the byte range of *shard*'s ports in its file.

    portsafe locks only the bytes of its ports, so such a lock is a flood (it lengthens
    the kernel's lock list, which every lock call walks) or another program's.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as file:
        ...     foreign_locks(file.fileno(), 80)
        False
    """
    if _WINDOWS:
        return False
    start, end = shard << SHARD_BITS, (shard + 1) << SHARD_BITS
    return bool(_conflict(fd, 0, start) or _conflict(fd, end, 0))


def _conflict(fd: int, start: int, length: int) -> tuple[int, int, int] | None:
    """F_GETLK on [start, start+length) (0: to the end): (start, length, pid) or None."""
    if length == 0 and start == 0:
        return None
    kind, lock_start, lock_len, pid = fcntl_lock(fd, fcntl.F_GETLK, fcntl.F_WRLCK, start, length)
    return None if kind == fcntl.F_UNLCK else (lock_start, lock_len, pid)


def query_shard(fd: int, shard: int, only: int | None = None) -> list[tuple[int, int]]:
    """The (port, pid) locks other processes hold in one shard file (or on port *only*)."""
    if _WINDOWS:
        return query_shard_windows(fd, shard, only)
    found: list[tuple[int, int]] = []
    # F_GETLK answers with *a* conflicting lock, not the lowest: split around each answer.
    pending = [(shard << SHARD_BITS, (shard + 1) << SHARD_BITS) if only is None
               else (only, only + 1)]
    while pending:
        start, end = pending.pop()
        kind, at, lock_len, pid = fcntl_lock(fd, fcntl.F_GETLK, fcntl.F_WRLCK, start,
                                             end - start)
        if kind == fcntl.F_UNLCK:
            continue
        lock_start = max(start, at)
        lock_end = end if lock_len == 0 else min(end, at + lock_len)
        found.extend((port, pid) for port in range(lock_start, lock_end))
        if start < lock_start:
            pending.append((start, lock_start))
        if lock_end < end:
            pending.append((lock_end, end))
    return found


def query_shard_windows(fd: int, shard: int, only: int | None) -> list[tuple[int, int]]:
    """:func:`query_shard` where locks cannot name their holder (Windows): a lock tried
    on each byte, pid 0 for every one held."""
    found: list[tuple[int, int]] = []
    ports = range(max(shard << SHARD_BITS, 1), (shard + 1) << SHARD_BITS) if only is None \
        else (only,)
    for port in ports:
        if try_lock(fd, port):
            unlock(fd, port)
        else:
            found.append((port, 0))  # Windows cannot say who holds a byte-range lock
    return found
