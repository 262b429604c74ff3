"""The shared lock directory: opened once per process, verified, completed, watched.

Lock files are the reservations of macOS, the BSDs and Windows. A reservation is only as
good as the directory its lock lives in: a lock in a
file that was deleted, or in a directory that another user swapped, excludes nobody. This module
opens that directory once per process and keeps it honest:

1. **Opened, never followed.** The directory is opened with ``O_DIRECTORY|O_NOFOLLOW``
   and verified on its descriptor (a directory every user may write, or another user's,
   must be sticky, like ``/tmp``; ``/`` and the system's own directories, ``/tmp`` or
   ``/usr`` say, are refused: ``_systemdirs``); every file in it is opened *relative to
   that descriptor*, without following links, and created only with ``O_EXCL``. So no
   user can make another user's process create or open files anywhere else, whatever
   they rename or link.
2. **Complete and versioned.** A directory in format 1 holds every one of its 256 shard
   files and a marker, ``portsafe-format`` (format number and a random generation),
   written last. A directory without a marker (new, or made by a version that wrote
   none) is completed in place under an exclusive ``flock``: same file names, same byte
   layout, so processes of both keep excluding each other. A higher format is refused.
   Because the marker is written after every shard, a directory whose mtime is newer
   than the marker's ctime has been changed since: only then are its files checked one
   by one, and a shard file newer than the marker (deleted and made again, maybe while
   someone held locks in the old one) is skipped, never trusted.
3. **Held while used.** Each user holds a shared ``flock`` on the directory for as long
   as it has it open. Age-based tmp cleaners skip a directory locked so; a repair, which
   needs the exclusive lock, can only happen when nobody uses it.
4. **Watched.** The caller compares the path's ``stat`` (ctime, which no user can set,
   unlike the mtime) with what it opened at every reservation (:meth:`LockDir.changed`):
   one system call. When it changed, each open lock file and the marker must still be
   the files opened (:meth:`LockDir.recheck`).

macOS and the BSDs have all four; Windows has only 4 (paths are opened by name).
docs/design.md ("Threat model") says what each gap leaves open.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys

from portsafe._errors import LockDirError
from portsafe._locking.fileformat import (
    FEATURES,
    FLAGS_FILE,
    MARKER,
    NOFOLLOW,
    Marker,
    complete,
    flock,
    open_in,
    read_marker,
    shard_name,
    stat_dir,
)
from portsafe._locking.systemdirs import refuse_system_directory

__all__ = ["REPLACED_FILE", "REPLACED_MARKER", "LockDir", "Shard", "open_lockdir"]

_FLAGS_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)

#: Why a shard is broken (``LockDir.broken``): its own file was deleted or replaced ...
REPLACED_FILE = "it was deleted or replaced while this process had it open"
#: ... or the directory's format marker was, which retires the whole directory.
REPLACED_MARKER = ("the directory's format marker was replaced, rewritten or deleted while "
                   "this process used it (lock files may have been replaced with it)")


class Shard:
    """One open lock file: its descriptor and how many of its ports this process holds."""

    __slots__ = ("count", "fd", "index", "ino", "lockdir")

    def __init__(self, lockdir: LockDir, index: int, fd: int, ino: int) -> None:
        self.lockdir = lockdir
        self.index = index
        self.fd = fd
        self.ino = ino
        self.count = 0


class LockDir:
    """One open lock directory (per process, whatever alias named it).

    Attributes (read-only outside the lock table):
        path: the path it was opened by; ``fd`` its descriptor (-1 without ``openat``).
        dev, ino: its identity, the key of the lock table; ``ctime``: its last seen ctime.
        marker: the format marker as read; ``generation``: its generation.
        shards: open shard files by index.
        poisoned: shard index -> why its file is not used; ``broken``: index -> why ports
            this process holds there may be given to others (raised at each reservation).
        retired: no longer at its path, or its marker replaced (closed, and opened again
            if still at its path, once the ports held here are released).
        via_link: opened through a symbolic link (so checked with ``stat``, not ``lstat``).
    """

    __slots__ = ("broken", "ctime", "dev", "fd", "generation", "ino", "marker",
                 "marker_ctime", "path", "poisoned", "retired", "shards", "via_link")

    def __init__(self, path: str, fd: int, info: os.stat_result, marker: Marker) -> None:
        self.path = path
        self.fd = fd
        self.dev, self.ino, self.ctime = info.st_dev, info.st_ino, info.st_ctime_ns
        self.marker = marker
        self.generation = marker.generation
        self.marker_ctime = marker.ctime
        self.shards: dict[int, Shard] = {}
        self.poisoned: dict[int, str] = {}
        self.broken: dict[int, str] = {}
        self.retired = False  # replaced at its path while ports were held here
        self.via_link = False

    def holding(self) -> bool:
        """Whether this process holds a port here (off the hot path: a walk of the open
        files, which stay open while any of their ports is held)."""
        return any(shard.count for shard in self.shards.values())

    def changed(self, info: os.stat_result) -> bool:
        """Whether *info* (a fresh ``stat`` of a path naming this directory) differs.

        The ctime, not the mtime: every change of the directory's entries moves both, but
        its owner can set the mtime back (``utime``), and nobody but root the ctime.
        """
        return info.st_ctime_ns != self.ctime or info.st_ino != self.ino or \
            info.st_dev != self.dev

    def same_directory(self, info: os.stat_result) -> bool:
        """Whether *info* is this very directory (same device and inode)."""
        return info.st_ino == self.ino and info.st_dev == self.dev

    def open_shard(self, index: int) -> Shard | None:
        """Open shard *index*'s file (never creating it); None if it is unusable.

        An unusable file (missing, a link, FIFO, directory, another user's private file,
        or newer than the marker) is recorded in :attr:`poisoned`, which says why.
        """
        name = shard_name(index)
        try:
            fd = open_in(self.fd, self.path, name, FLAGS_FILE)
        except OSError as exc:
            missing = exc.errno == errno.ENOENT
            self.poisoned[index] = "it is missing (deleted after the directory was made)" \
                if missing else f"it cannot be opened ({exc.strerror})"
            return None
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "it is not a plain file"
        elif info.st_nlink != 1:
            problem = f"it has {info.st_nlink} hard links"
        elif self.fd >= 0 and info.st_mode & 0o666 != 0o666:
            # every user must be able to lock it, or they would not see the same locks
            problem = f"it has mode {stat.S_IMODE(info.st_mode):o}, not 666 (a foreign file?)"
        elif info.st_ctime_ns > self.marker_ctime and self.fd >= 0:
            problem = ("it was made or changed after the directory was completed (deleted "
                       "and made again? locks in the old file would be invisible)")
        if problem is not None:
            os.close(fd)
            self.poisoned[index] = problem
            return None
        shard = self.shards[index] = Shard(self, index, fd, info.st_ino)
        return shard

    def recheck(self, info: os.stat_result) -> None:
        """After the directory's ctime changed: check that each open shard file, and the
        format marker, are still the ones opened; mark the shards that are not (broken
        if ports are held).

        A shard file is compared by inode number (it is open here, so its number cannot
        be reused). The marker is compared by inode number and ctime: the directory's
        owner can replace it, and its own owner rewrite it in place, with the same
        generation, after replacing lock files, so that new processes trust those. Then
        no file here is vouched for: the directory is retired, every held port broken.
        """
        replaced = not self._marker_unchanged()
        if replaced:
            self.retired = True
        for index, shard in list(self.shards.items()):
            if replaced:
                reason = REPLACED_MARKER
            else:
                try:
                    now = self._lstat(shard_name(index))
                    if now.st_ino == shard.ino:
                        continue
                except OSError:
                    pass
                reason = REPLACED_FILE
            self.poisoned[index] = reason
            if shard.count:
                self.broken[index] = reason
            else:
                os.close(shard.fd)
                del self.shards[index]
        self.ctime = info.st_ctime_ns

    def _lstat(self, name: str) -> os.stat_result:
        if self.fd >= 0:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        return os.lstat(os.path.join(self.path, name))

    def _marker_unchanged(self) -> bool:
        try:
            return self.marker.same_file(self._lstat(MARKER))
        except OSError:
            return False

    def describe(self, index: int) -> str:
        """``'<dir>/ports-...-...'``: a shard's full name, for messages."""
        return os.path.join(self.path, shard_name(index))

    def close(self) -> None:
        """Close every descriptor (only when this process holds nothing here)."""
        for shard in self.shards.values():
            os.close(shard.fd)
        self.shards.clear()
        if self.fd >= 0:
            os.close(self.fd)  # drops our shared flock
            self.fd = -1

    def forget(self) -> None:
        """In a fork child: close the inherited descriptors, never unlocking anything.

        (The shared flock belongs to the open file description, which the parent keeps.)
        """
        for shard in self.shards.values():
            _close_quietly(shard.fd)
        if self.fd >= 0:
            _close_quietly(self.fd)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# -- opening ---------------------------------------------------------------------------


class _RetryError(Exception):
    """The path stopped naming the directory while we opened it: open it again."""


def open_lockdir(path: str, *, explicit: bool) -> LockDir:
    """Open, verify, complete if needed and lock the lock directory at *path*.

    *explicit* (``PORTSAFE_LOCK_DIR`` set) allows *path* to be a symlink owned by this
    user or root; the default directory must be the directory itself. ``/`` and the
    system's own directories (``_systemdirs``) are refused, however they are named.

    Raises:
        LockDirError: the directory cannot be used safely; the message says why and
            what to do.

    Example:
        >>> import tempfile
        >>> lockdir = open_lockdir(tempfile.mkdtemp() + "/locks", explicit=True)
        >>> len(lockdir.generation)
        16
        >>> lockdir.close()
    """
    refuse_system_directory(path)  # before anything is made there
    for _ in range(5):
        fd, follow, created = _open_dir(path, explicit)
        try:
            return _prepare(path, fd, follow, created)
        except _RetryError:
            _close_quietly(fd)
        except BaseException:
            _close_quietly(fd)
            raise
    raise LockDirError(errno.EAGAIN, f"the lock directory {path} keeps being replaced while "
                       f"portsafe opens it; find out what removes it, or set "
                       f"PORTSAFE_LOCK_DIR")


def _open_dir(path: str, explicit: bool) -> tuple[int, bool, bool]:
    created = False
    if "openat" not in FEATURES:  # Windows: checked and used by name (-1: no descriptor)
        if not os.path.isdir(path):
            created = _make_dir(path)
        if not os.path.isdir(path):
            raise LockDirError(errno.ENOTDIR, f"{path} is not a directory; remove it, or "
                               f"set PORTSAFE_LOCK_DIR")
        return -1, True, created
    for _ in range(3):
        try:
            return os.open(path, _FLAGS_DIR | NOFOLLOW), False, created
        except FileNotFoundError:  # noqa: PERF203 - a retry loop, usually run once
            created = _make_dir(path)
        except OSError as exc:
            # O_DIRECTORY|O_NOFOLLOW on a link gives ENOTDIR on Linux, ELOOP elsewhere
            link = exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EMLINK) and _is_link(path)
            if exc.errno == errno.ENOTDIR and not link:
                raise LockDirError(errno.ENOTDIR, f"{path} is not a directory; remove it, "
                                   f"or set PORTSAFE_LOCK_DIR") from None
            if not link:
                raise LockDirError(exc.errno, f"cannot open the lock directory {path}: "
                                   f"{exc.strerror}; set PORTSAFE_LOCK_DIR to a directory "
                                   f"shared by every test process") from None
            return _open_link(path, explicit), True, created
    raise LockDirError(errno.EAGAIN, f"the lock directory {path} keeps vanishing")


def _is_link(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _open_link(path: str, explicit: bool) -> int:
    info = os.lstat(path)
    if not explicit:
        raise LockDirError(errno.ELOOP, f"{path} is a symbolic link, not a directory (a "
                           f"link there could redirect portsafe's locks); remove it, or "
                           f"set PORTSAFE_LOCK_DIR")
    if info.st_uid not in (0, os.getuid()):
        raise LockDirError(errno.EPERM, f"PORTSAFE_LOCK_DIR={path} is a symbolic link owned "
                           f"by uid {info.st_uid}, who could redirect it; use the "
                           f"directory's real path")
    try:
        return os.open(path, _FLAGS_DIR)
    except OSError as exc:
        raise LockDirError(exc.errno, f"cannot open the lock directory {path}: "
                           f"{exc.strerror}; set PORTSAFE_LOCK_DIR") from None


def _make_dir(path: str) -> bool:
    try:
        os.mkdir(path, 0o1777)
    except FileExistsError:
        return False
    except OSError as exc:
        raise LockDirError(exc.errno, f"cannot create the portsafe lock directory {path}: "
                           f"{exc.strerror}; set PORTSAFE_LOCK_DIR to a writable directory "
                           f"shared by every test process") from None
    return True


def _prepare(path: str, fd: int, follow: bool, created: bool) -> LockDir:
    info = stat_dir(fd, path)
    mode = stat.S_IMODE(info.st_mode)
    if fd >= 0 and info.st_uid not in (0, os.getuid()) and not mode & stat.S_ISVTX:
        raise LockDirError(errno.EACCES, f"{path} belongs to uid {info.st_uid} with mode "
                           f"{mode:o}: another user's directory that is not sticky (mode "
                           f"1777) could have its lock files swapped under you; "
                           f"remove it, ask its owner to chmod 1777 it, or set "
                           f"PORTSAFE_LOCK_DIR to a directory of your own")
    if created and info.st_uid == os.getuid() and mode != 0o1777 and sys.platform != "win32":
        # mkdir's mode is masked by umask; every user's tests must share the directory
        os.fchmod(fd, 0o1777)
        mode = 0o1777
    if fd >= 0 and mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise LockDirError(errno.EACCES, f"{path} has mode {mode:o}: every user may write "
                           f"it and it is not sticky, so any user could delete or replace "
                           f"the lock files in it under the processes holding ports there; "
                           f"make it sticky (chmod 1777 {path}), or set PORTSAFE_LOCK_DIR to "
                           f"another directory")
    if fd >= 0:
        refuse_system_directory(path, info)  # "/" under another name (a bind mount)
    if "flock" in FEATURES and fd >= 0:
        flock(fd, path, exclusive=False)
    marker = read_marker(fd, path)
    if marker is None or info.st_mtime_ns > marker.ctime:  # format 0, or changed since
        marker = complete(fd, path, repair=marker is not None)
        info = stat_dir(fd, path)
    lockdir = LockDir(path, fd, info, marker)
    now = os.stat(path) if follow else os.lstat(path)
    if not lockdir.same_directory(now):
        lockdir.fd = -1  # the caller closes fd
        lockdir.close()
        raise _RetryError
    lockdir.ctime = now.st_ctime_ns
    lockdir.via_link = follow
    return lockdir
