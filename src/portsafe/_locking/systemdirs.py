"""The system's own directories, which are never a lock directory.

A lock directory receives 257 files (``_lockformat``) and is shared with every user. As
``PORTSAFE_LOCK_DIR``, ``/`` or ``/tmp`` itself would put them among the system's files
(as root, ``/`` was accepted and filled), and ``/tmp`` or ``/var/tmp`` would share the
directory with every program's files. So ``/``, the directories of the file-system
hierarchy standard (``/etc``, ``/usr``, ``/var``, ``/tmp``, ``/lib*``...), macOS's own
(``/private/tmp``, ``/Users``...) and Windows' (a drive's root, ``%SystemRoot%``,
``%ProgramData%``...) are refused, by the path as given and as it resolves. A directory
*in* one of them (``/tmp/portsafe-locks``, the default) is fine.
"""

from __future__ import annotations

import errno
import ntpath
import os
import posixpath
import sys

from portsafe._errors import LockDirError
from portsafe._locking.fileformat import SHARD_COUNT

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["refuse_system_directory", "system_directory"]

#: Top-level directories of the file-system hierarchy standard, and macOS's and the
#: BSDs' own (any top-level ``lib*`` is one too).
_TOP = frozenset({
    "bin", "boot", "dev", "etc", "home", "media", "mnt", "opt", "proc", "root", "run",
    "sbin", "snap", "srv", "sys", "tmp", "usr", "var",
    "Applications", "Library", "System", "Users", "Volumes", "cores", "private", "compat",
    "rescue", "nix",
})
#: Shared or system directories one level or two further down.
_NESTED = frozenset({
    "/dev/shm", "/var/tmp",  # noqa: S108 - names to refuse, not files to use
    "/dev/mqueue", "/run/lock", "/run/shm", "/run/user",
    "/var/lock", "/var/run", "/var/lib", "/var/cache", "/var/log", "/var/spool", "/var/mail",
    "/var/opt", "/var/db", "/var/empty", "/var/folders", "/usr/local", "/usr/bin",
    "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/share",
    "/usr/include", "/usr/src", "/usr/local/bin", "/usr/local/sbin", "/usr/local/lib",
    "/usr/local/share", "/usr/local/etc", "/private/tmp", "/private/var",
    "/private/etc", "/private/var/tmp", "/private/var/folders",
})
#: Where a lock directory of one's own may go, for the advice: shared, sticky ones.
_SHARED = frozenset({"/tmp", "/var/tmp", "/dev/shm",  # noqa: S108 - names, not files to use
                     "/private/tmp", "/private/var/tmp"})
#: Windows: the variables naming its own directories.
_WINDOWS_VARS = ("SystemRoot", "windir", "ProgramData", "ALLUSERSPROFILE", "ProgramFiles",
                 "ProgramFiles(x86)", "ProgramW6432", "PUBLIC", "SystemDrive")


def system_directory(path: str, *, platform: str = sys.platform,
                     realpath: Callable[[str], str] | None = None,
                     environ: Mapping[str, str] | None = None) -> str | None:
    """The system directory that *path* is (as given, or as *realpath* resolves it), or
    None if it is none of them.

    Example:
        >>> system_directory("/tmp", platform="linux", realpath=str)
        '/tmp'
        >>> system_directory("/tmp/portsafe-locks", platform="linux", realpath=str) is None
        True
        >>> system_directory("C:\\\\", platform="win32", realpath=str, environ={})
        'C:\\\\'
    """
    windows = platform == "win32"
    flavour = ntpath if windows else posixpath
    resolve = realpath if realpath is not None else os.path.realpath
    seen = []
    for spelling in (path, resolve(path)):
        normal = flavour.normpath(spelling)
        if normal not in seen:
            seen.append(normal)
    for normal in seen:
        found = _windows(normal, environ if environ is not None else os.environ) if windows \
            else _posix(normal)
        if found is not None:
            return found
    return None


def _posix(path: str) -> str | None:
    parts = [part for part in path.split("/") if part]
    canonical = "/" + "/".join(parts)  # normpath keeps a leading "//"
    if not parts:
        return canonical
    if len(parts) == 1 and (parts[0] in _TOP or parts[0].startswith("lib")):
        return canonical
    return canonical if canonical in _NESTED else None


def _windows(path: str, environ: Mapping[str, str]) -> str | None:
    rest = ntpath.splitdrive(path)[1]
    if rest in ("", "\\", "/"):
        return path
    key = ntpath.normcase(path)
    for name in _WINDOWS_VARS:
        value = environ.get(name)
        if value and ntpath.normcase(ntpath.normpath(value)) == key:
            return path
    return path if ntpath.normcase(rest) in ("\\users", "\\windows") else None


def refuse_system_directory(path: str, info: os.stat_result | None = None) -> None:
    """Raise :class:`LockDirError` if *path* is a system directory, as spelled or as it
    resolves; given *info* instead (the ``stat`` of the directory opened at *path*), if
    that is ``/`` itself, under whatever name (a bind mount of it, say).

    Example:
        >>> refuse_system_directory("/tmp/portsafe-locks")
        >>> try:
        ...     refuse_system_directory("/")
        ... except LockDirError as exc:
        ...     print(exc.errno == errno.EINVAL, "PORTSAFE_LOCK_DIR" in str(exc))
        True True
    """
    if info is None:
        found = system_directory(path)
    else:
        root = os.stat("/")
        found = "/" if (info.st_dev, info.st_ino) == (root.st_dev, root.st_ino) else None
    if found is None:
        return
    from portsafe._settings import default_lock_dir

    mine = os.path.join(found, "portsafe-locks") if found in _SHARED else default_lock_dir()
    named = path if found == path else f"{path} (that is {found})"
    raise LockDirError(errno.EINVAL, f"{named} is one of the system's own directories: a "
                       f"lock directory gets {SHARD_COUNT + 1} files of portsafe's and is "
                       f"shared with every user, so it must be a directory of its own. Set "
                       f"PORTSAFE_LOCK_DIR to one such as {mine}, or unset it to use the "
                       f"default ({default_lock_dir()})")
