"""When one ``fstat`` of the lock directory's descriptor can stand in for a ``stat`` of its path.

Every reservation checks that the lock directory is still the one this process opened
(a holder learns of a deletion or a swap at its next call: ``_locks``). Checked by path,
that is an ``lstat``: a walk of the path and a comparison of (device, inode, mtime). An
``fstat`` of the directory's open descriptor skips the walk, and it sees every change
that the path check sees, *where* all of these hold:

1. **Anything done to the directory itself changes its ctime.** Adding or removing an
   entry (a shard deleted), removing the directory (``rm -rf``; its link count drops to
   0 as well), renaming it away (to put another in its place), ``chmod``/``chown``: each
   sets the directory's ctime to the current time, on the local file systems listed in
   :data:`WATCHED_TYPES` (the type is ``fstatfs``'s, from the C module, else read from
   ``/proc/self/mountinfo``). Network and FUSE file
   systems, overlayfs (a lower directory "removed" is only hidden) and the rest are
   checked by path.
2. **A later change cannot land on the same timestamp.** File timestamps may be coarse
   (a clock tick). The descriptor is trusted only once a path check has confirmed it
   while its ctime was at least :data:`MARGIN_NS` old: any change after that check gets
   a later timestamp.
3. **Nothing but root can make the path name another directory without touching this
   one.** That takes renaming, replacing or remounting a directory *above* it, or
   retargeting a symbolic link in the path. So the path has no symbolic link, and each
   directory above the lock directory sits in a directory that only root can change
   (owned by root, and not writable by others, or sticky with the entry owned by root,
   like ``/tmp``). Root can do anything anyway: docs/design.md ("Threat model").

Elsewhere (macOS, the BSDs, Windows, a lock directory under a directory some user
owns, a symbolic link) every reservation checks by path, as before; so does the
lock-file backend's test-only run on Linux, which runs what macOS runs and reads no
``/proc`` (``_platform.PROC``).
"""

from __future__ import annotations

import os
import stat
import sys

from portsafe import _platform as backend

TYPE_CHECKING = False  # typing is not imported at run time: importing portsafe stays cheap
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MAGIC", "MARGIN_NS", "WATCHED_TYPES", "ancestors_fixed", "fs_type", "unwatchable"]

#: File systems whose directories change ctime on every change of entries, rename and
#: removal, with inode attributes read locally (not from a cache of a server's).
WATCHED_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs"})

#: ``statfs`` ``f_type`` magic numbers (linux/magic.h) by name: the watched types
#: (ext2, ext3 and ext4 share one) and a few common others, for messages.
MAGIC = {0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs",
         0xF2F52010: "f2fs", 0x6969: "nfs", 0x794C7630: "overlay", 0x65735546: "fuse",
         0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x01021997: "9p", 0x9FA0: "proc"}

#: How old the directory's ctime must be, when a path check confirms it, before its
#: descriptor is trusted (far more than any file system's timestamp granularity).
MARGIN_NS = 1_000_000_000

_MOUNTINFO = "/proc/self/mountinfo"
_NO_PROC = ("this process runs the macOS code here (no /proc: the lock-file backend's "
            "test-only run on Linux)")


def fs_type(mountinfo: str, dev: int) -> str | None:
    """The file system type of device *dev* in a ``/proc/self/mountinfo`` text, or None.

    Example:
        >>> line = "29 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"
        >>> fs_type(line, os.makedev(8, 1)), fs_type(line, os.makedev(8, 2))
        ('ext4', None)
    """
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    found = None
    for line in mountinfo.splitlines():
        if wanted not in line:  # most lines: no split
            continue
        # id parent major:minor root mount-point options [optional fields...] - type ...
        fields = line.split()
        if len(fields) > 7 and fields[2] == wanted and "-" in fields[6:-1]:
            found = fields[fields.index("-", 6) + 1]
    return found


def ancestors_fixed(path: str,
                    lstat: Callable[[str], os.stat_result] = os.lstat) -> str | None:
    """None if only root can make *path* name another directory without touching it
    (condition 3 above); else why not.

    *lstat* is ``os.lstat`` (replaceable for tests).

    Example:
        >>> ancestors_fixed("/")
        >>> ancestors_fixed("relative/path")
        'not an absolute path'
    """
    if not os.path.isabs(path) or os.path.normpath(path) != path or path.startswith("//"):
        return "not an absolute path" if not os.path.isabs(path) else "not a normal path"
    parts = [part for part in path.split("/") if part]
    above = lstat("/")
    current = "/"
    for part in parts[:-1]:
        current = os.path.join(current, part)
        info = lstat(current)
        if not stat.S_ISDIR(info.st_mode):
            return f"{current} is not a directory (a symbolic link?)"
        mode = stat.S_IMODE(above.st_mode)
        if above.st_uid != 0:
            return f"{os.path.dirname(current)} is owned by uid {above.st_uid}, not root"
        if mode & 0o022 and not (mode & stat.S_ISVTX and info.st_uid == 0):
            return f"{os.path.dirname(current)} is writable by others (mode {mode:o})"
        above = info
    return None


def unwatchable(path: str, dev: int, *, platform: str = sys.platform,
                read: Callable[[], str] | None = None, fd: int = -1,
                magic: Callable[[int], int] | None = None,
                proc: bool | None = None) -> str | None:
    """None if the lock directory at *path* (on device *dev*) may be checked by its
    descriptor at each reservation; else why it is checked by path.

    The file system's type is that of descriptor *fd* by *magic* (``fstatfs``, from the
    C module: one system call) where both are given, else the type ``/proc/self/
    mountinfo`` gives for *dev*; *read* returns that file's text (replaceable for tests).
    *proc* (default: ``_platform.PROC``) says whether this process may read
    ``/proc`` at all; without it, Linux is treated as macOS is.

    Example:
        >>> unwatchable("/tmp/x", 0, platform="darwin")
        'not Linux (no /proc/self/mountinfo)'
    """
    if not platform.startswith("linux"):
        return "not Linux (no /proc/self/mountinfo)"
    try:
        why = ancestors_fixed(path) or (None if (backend.PROC if proc is None else proc) else
                                        _NO_PROC)
        if why is not None:
            return why
        number = magic(fd) if magic is not None and fd >= 0 else None
        text = "" if number is not None else read() if read is not None else _read_mountinfo()
    except OSError as exc:
        return f"cannot check it ({exc.strerror})"
    if number is not None and number < 0:  # the errno of fstatfs
        return f"cannot check it ({os.strerror(-number)})"
    # (ext2 and ext3 share ext4's number: all three are watched)
    kind = fs_type(text, dev) if number is None else MAGIC.get(number, f"type {number:#x}")
    if kind not in WATCHED_TYPES:
        return f"its file system is {kind or 'unknown'}, not one of {sorted(WATCHED_TYPES)}"
    return None


def _read_mountinfo() -> str:
    # os.read and a bytes decode, as _ranges reads /proc: a text-mode open() costs the
    # first reservation of a process more than the read (this runs there).
    fd = os.open(_MOUNTINFO, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")
