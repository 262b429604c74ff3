"""The lock directories a process has open, and the one a reservation uses now.

:class:`LockDirs` keeps this process's open lock directories (``_lockdir``), keyed by
(device, inode) so that every alias of one shares its descriptors, and answers which
directory ``PORTSAFE_LOCK_DIR`` names now: opened once, then checked by one ``stat`` of
its path per reservation. A directory deleted or replaced under ports this process holds
is an error that names them. The lock table (``_locking.files.LockTable``) owns one, and
the ports held in it.
"""

from __future__ import annotations

import errno
import os

from portsafe._errors import LockDirError
from portsafe._locking.lockdir import REPLACED_MARKER, LockDir, Shard, open_lockdir
from portsafe._settings import lock_dir, lock_dir_is_explicit

__all__ = ["LockDirs"]

_IDLE_DIRS = 4  # directories kept open with nothing held in them (reopening costs)


class LockDirs:
    """This process's open lock directories, and the one to reserve in now.

    *held* is the lock table's port -> shard map, read to name the ports a changed
    directory leaves unprotected. Every method but :meth:`cached` runs under the lock
    table's mutex.

    Example:
        >>> import tempfile
        >>> dirs = LockDirs({})
        >>> path = tempfile.mkdtemp() + "/locks"
        >>> dirs.lookup(path) is dirs.lookup(path) is dirs.cached(path)
        True
        >>> dirs.clear(close=True)
    """

    def __init__(self, held: dict[int, Shard]) -> None:
        self.held = held
        self._dirs: dict[tuple[int, int], LockDir] = {}
        self._paths: dict[str, tuple[LockDir, object]] = {}  # path -> (dir, os.stat/lstat)
        self._last_path: str | None = None  # the hot path's one-entry cache of _paths
        self._last_dir: LockDir | None = None
        self._last_look: object = None

    def cached(self, path: str) -> LockDir | None:
        """The directory :meth:`lookup` last gave for *path* (the same str object), if
        one ``stat`` shows it unchanged; else None (then :meth:`lookup` decides).

        Runs without the mutex: once per reservation, so a holder learns of a deletion
        at its next call.
        """
        lockdir = self._last_dir
        if path is self._last_path and lockdir is not None:
            try:
                info = self._last_look(path)  # type: ignore[operator]
            except OSError:
                return None
            if info.st_ctime_ns == lockdir.ctime and info.st_ino == lockdir.ino and \
                    info.st_dev == lockdir.dev and not lockdir.broken:
                return lockdir  # LockDir.changed(), inlined: once per reservation
        return None

    def lookup(self, path: str) -> LockDir:
        """The directory at *path*, opened once and rechecked; it becomes :meth:`cached`'s.

        Raises:
            LockDirError: unusable, or changed under ports this process holds there.
        """
        made = self._lookup(path)
        self._last_path, self._last_dir, self._last_look = path, made, self._paths[path][1]
        return made

    def resolve(self, where: object) -> LockDir:
        """*where* itself if it is a :class:`LockDir`, else :meth:`lookup` of the path it
        names (``PORTSAFE_LOCK_DIR`` if none)."""
        if isinstance(where, LockDir):
            return where
        return self._lookup(where if isinstance(where, str) and where else lock_dir())

    def __len__(self) -> int:
        """How many directories are open."""
        return len(self._dirs)

    @property
    def open_fds(self) -> int:
        """How many lock files are open, in every directory."""
        return sum(len(lockdir.shards) for lockdir in self._dirs.values())

    def clear(self, *, close: bool) -> None:
        """Forget every directory: close it (*close*), or in a fork child only close the
        inherited descriptors, never unlocking anything (:meth:`LockDir.forget`)."""
        for lockdir in self._dirs.values():
            if close:
                lockdir.close()
            else:
                lockdir.forget()
        self._dirs.clear()
        self._paths.clear()
        self._last_path = self._last_dir = None

    def _lookup(self, path: str) -> LockDir:
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
            self.drop(lockdir)
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
                self.drop(lockdir)
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

    def drop(self, lockdir: LockDir) -> None:
        """Forget *lockdir* and close it (only when this process holds nothing there)."""
        for path, (other, _) in list(self._paths.items()):
            if other is lockdir:
                del self._paths[path]
        if self._last_dir is lockdir:
            self._last_path = self._last_dir = None
        if self._dirs.get((lockdir.dev, lockdir.ino)) is lockdir:
            del self._dirs[(lockdir.dev, lockdir.ino)]
        lockdir.close()

    def _trim(self, keep: LockDir) -> None:
        idle = [d for d in self._dirs.values() if not d.holding() and d is not keep]
        for lockdir in idle[:max(0, len(idle) - _IDLE_DIRS)]:
            self.drop(lockdir)
