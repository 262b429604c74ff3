"""The lock table's first half: which lock directory a reservation uses, checked per call.

:class:`DirectoryTable` keeps this process's open lock directories (``_lockdir``), keyed
by (device, inode) so that every alias of one shares its descriptors, and answers
:meth:`DirectoryTable.current`, once per reservation: the directory that
``PORTSAFE_LOCK_DIR`` names now, opened once, and checked by one system call (an ``fstat``
of its descriptor where ``_dirwatch`` shows it sees every change, else an ``lstat`` of
its path). A directory deleted or replaced under ports this process holds is an error
that names them. :class:`~portsafe._locking.files.LockTable` adds the ports: it is this class
with the held ports, their locks and their release.
"""

from __future__ import annotations

import errno
import os
import threading
from time import time_ns as _time_ns

from portsafe._errors import LockDirError
from portsafe._locking import dirwatch as _dirwatch
from portsafe._locking.claim import dir_ctime as _dir_ctime
from portsafe._locking.claim import fs_magic as _fs_magic
from portsafe._locking.lockdir import REPLACED_MARKER, LockDir, Shard, open_lockdir
from portsafe._settings import lock_dir, lock_dir_is_explicit

__all__ = ["DirectoryTable"]

_IDLE_DIRS = 4  # directories kept open with nothing held in them (reopening costs)
_fstat = os.fstat


class DirectoryTable:
    """This process's open lock directories, and the one to reserve in now.

    The state both halves of the lock table share is made here: the mutex, the held
    ports (port -> shard) and the home shard, which a dropped directory must forget.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        #: port -> the shard file it is locked in, for every port this process holds
        #: (read-only outside the lock table)
        self.held: dict[int, Shard] = {}
        self._dirs: dict[tuple[int, int], LockDir] = {}
        self._paths: dict[str, tuple[LockDir, object]] = {}  # path -> (dir, os.stat/lstat)
        self._last_path: str | None = None  # the hot path's one-entry cache of _paths
        self._last_dir: LockDir | None = None
        self._last_look: object = None
        self._home: Shard | None = None

    # -- the directory -------------------------------------------------------------

    def current(self, path: str | None = None) -> LockDir:
        """The lock directory to reserve in now (``PORTSAFE_LOCK_DIR``), opened once.

        Called once per reservation: one system call checks that the path still names
        the directory opened, unchanged (a holder learns of a deletion at its next call).
        That is an ``fstat`` of its descriptor where ``_dirwatch`` shows it sees every
        such change, else a ``stat`` of the path.

        Raises:
            LockDirError: unusable, or changed under ports this process holds there.
        """
        if path is None:
            path = lock_dir()  # the same str object each call while the setting stays
        lockdir = self._last_dir
        if path is self._last_path and lockdir is not None:
            ctime = lockdir.watch_ctime
            if ctime:  # checked by descriptor: no walk of the path
                if _dir_ctime(lockdir.fd) == ctime and not lockdir.broken:  # 0 if unlinked
                    return lockdir
                lockdir.watch_ctime = 0  # changed: the path decides below, and for a while
                lockdir.watch_at = 1
            else:
                try:
                    info = self._last_look(path)  # type: ignore[operator]
                except OSError:
                    info = None
                if info is not None and info.st_ctime_ns == lockdir.ctime and \
                        info.st_ino == lockdir.ino and info.st_dev == lockdir.dev and \
                        not lockdir.broken:  # LockDir.changed(), inlined: once per reservation
                    at = lockdir.watch_at
                    if at and at <= _time_ns():
                        self._try_watch(lockdir, path)
                    return lockdir
        with self._mutex:
            made = self._current_locked(path)
            if made.watch_path != path:  # watched (or refused) for another spelling of it
                made.watch_ctime, made.watch_at = 0, 1 if made.fd >= 0 else 0
                made.watch_refused = None
            self._last_path, self._last_dir, self._last_look = path, made, self._paths[path][1]
            return made

    def _try_watch(self, lockdir: LockDir, path: str) -> None:
        """Check *lockdir* by its descriptor from now on, if ``_dirwatch`` allows: after
        an ``fstat`` of it, a check by path confirms it while its ctime is old enough."""
        with self._mutex:
            if lockdir is not self._last_dir or lockdir.watch_ctime or not lockdir.watch_at:
                return
            if lockdir.watch_refused is None or lockdir.watch_path != path:
                # the check is of this path: an alias (a link to it) is judged on its own
                link = lockdir.via_link or self._paths.get(path, (None, None))[1] is not os.lstat
                lockdir.watch_path = path
                lockdir.watch_refused = ("it is reached through a symbolic link" if link
                                         else "it has no descriptor" if lockdir.fd < 0 else
                                         _dirwatch.unwatchable(path, lockdir.dev,
                                                               fd=lockdir.fd,
                                                               magic=_fs_magic)) or ""
            if lockdir.watch_refused:
                lockdir.watch_at = 0
                return
            try:
                before = _fstat(lockdir.fd)
                ctime = before.st_ctime_ns
                if not ctime:  # no ctime kept: 0 means "checked by path" here
                    lockdir.watch_at = 0
                    return
                if _time_ns() - ctime < _dirwatch.MARGIN_NS:
                    lockdir.watch_at = ctime + _dirwatch.MARGIN_NS  # changed lately: later
                    return
                after = self._last_look(path)  # type: ignore[operator]
            except OSError:
                return  # the next check by path says what happened
            if after.st_ino == lockdir.ino and after.st_dev == lockdir.dev and \
                    after.st_ctime_ns == lockdir.ctime and before.st_nlink and \
                    not lockdir.broken:
                lockdir.watch_ctime, lockdir.watch_at = ctime, 0

    def _current_locked(self, path: str) -> LockDir:
        entry = self._paths.get(path)
        if entry is not None:
            lockdir, look = entry
            try:
                info = look(path)  # type: ignore[operator]
            except OSError:
                info = None
            if info is not None and lockdir.same_directory(info):
                if info.st_ctime_ns != lockdir.ctime:
                    lockdir.recheck(info)
                    self._forget_home_if_closed()
                if lockdir.broken:
                    if REPLACED_MARKER in lockdir.broken.values():
                        raise self._held_error(
                            lockdir, set(lockdir.broken), "its format marker was replaced or "
                            "rewritten", "only the directory's owner, the marker's or root "
                            "can do that: use a PORTSAFE_LOCK_DIR that only root and you can "
                            "change")
                    raise self._held_error(lockdir, set(lockdir.broken),
                                           "lock files were deleted or replaced")
                if not lockdir.retired or lockdir.holding():
                    return lockdir
                # its marker was replaced, and nothing is held here: open it afresh
            elif lockdir.holding():
                raise self._held_error(lockdir, None, "the directory was removed" if info is None
                                       else "the directory was replaced by another")
            self._drop(lockdir)
        made = open_lockdir(path, explicit=lock_dir_is_explicit())
        key = (made.dev, made.ino)
        lockdir = self._dirs.get(key, made)
        if lockdir is not made and lockdir.marker.token != made.marker.token:
            # Not an alias: a deleted directory's inode number, reused, or the directory
            # with its marker replaced. Retire the old one (its ports stay held in it
            # until released; then it is closed).
            del self._dirs[key]
            if lockdir.holding():
                lockdir.retired = True
            else:
                self._drop(lockdir)
            lockdir = made
        if lockdir is made:
            self._dirs[key] = made
            self._trim(made)
        else:  # an alias of a directory already open: ours holds the locks, keep it
            made.close()
        self._paths[path] = (lockdir, os.stat if made.via_link else os.lstat)
        return lockdir

    def _held_error(self, lockdir: LockDir, shards: set[int] | None, what: str,
                    then: str = "find out what deletes files there (a tmp cleaner?)",
                    ) -> LockDirError:
        ports = sorted(port for port, shard in self.held.items() if shard.lockdir is lockdir
                       and (shards is None or shard.index in shards))
        shown = ", ".join(map(str, ports[:10])) + (", ..." if len(ports) > 10 else "")
        return LockDirError(errno.ESTALE, f"in the lock directory {lockdir.path}, {what} while "
                            f"this process holds ports {shown} there: other processes may "
                            f"now be given them. Release them (they are no longer exclusive) "
                            f"and {then}")

    def _drop(self, lockdir: LockDir) -> None:
        for path, (other, _) in list(self._paths.items()):
            if other is lockdir:
                del self._paths[path]
        if self._last_dir is lockdir:
            self._last_path = self._last_dir = None
        if self._dirs.get((lockdir.dev, lockdir.ino)) is lockdir:
            del self._dirs[(lockdir.dev, lockdir.ino)]
        if self._home is not None and self._home.lockdir is lockdir:
            self._home = None
        lockdir.close()

    def _trim(self, keep: LockDir) -> None:
        idle = [d for d in self._dirs.values() if not d.holding() and d is not keep]
        for lockdir in idle[:max(0, len(idle) - _IDLE_DIRS)]:
            self._drop(lockdir)

    def _forget_home_if_closed(self) -> None:
        home = self._home
        if home is not None and home.lockdir.shards.get(home.index) is not home:
            self._home = None

    def _resolve(self, where: object) -> LockDir:
        if isinstance(where, LockDir):
            return where
        return self._current_locked(where if isinstance(where, str) and where else lock_dir())
