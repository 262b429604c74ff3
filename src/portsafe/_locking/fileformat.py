"""The on-disk format of a lock directory, and how a directory is brought to it.

Format 1 (this version): every one of the 256 shard files ``ports-NNNNN-MMMMM`` (one byte
per port, the record lock at offset ``port``: exactly 0.1.0's names and layout) and a
marker, ``portsafe-format``::

    portsafe lock directory
    format 1
    generation 0123456789abcdef

The marker is written last, in place (never renamed), so its ctime is the directory's
last legitimate change: a directory whose mtime is newer has been changed since, and
only then is it repaired, if nobody uses it (:func:`complete`). A directory without a
marker is format 0 (portsafe 0.1.0 made its shard files as needed): it is completed in
place (:func:`complete`), and 0.1.0 processes keep using the same files, so the two
versions keep excluding each other. A marker with another format number is refused
loudly (:func:`parse_marker`): the versions would not see each other's locks.

Users hold a shared ``flock`` on the directory while they have it open; completing or
repairing needs the exclusive one, so it never happens under anyone's feet.

The marker as a process read it (:class:`Marker`) is its generation *and* the marker
file's identity (inode number, ctime): the directory's owner can replace the marker, or
its own owner rewrite it in place, with the same generation text, and only the identity
tells (``_lockdir`` checks it when the directory changes).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

from portsafe._errors import LockDirError

__all__ = ["FEATURES", "FLAGS_FILE", "FORMAT", "MARKER", "NOFOLLOW", "SHARD_BITS",
           "SHARD_COUNT", "Marker", "complete", "features", "flock", "open_in",
           "parse_marker", "read_marker", "shard_name", "stat_dir"]

#: Ports per lock file: a power of two so a port's shard is ``port >> 8``.
SHARD_BITS = 8
#: Shard files in a complete directory (ports 0-65535).
SHARD_COUNT = 1 << (16 - SHARD_BITS)
#: The lock-directory format this version writes and reads (0.1.0's, without a marker, is 0).
FORMAT = 1
#: The marker's file name (no shard name has this shape: 0.1.0 ignores it).
MARKER = "portsafe-format"

_SHARD_SIZE = 1 << SHARD_BITS
_HEAD = b"portsafe lock directory"
_FAST = b"%s\nformat %d\ngeneration " % (_HEAD, FORMAT)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
#: How a shard file is opened: never following a link, never blocking on a FIFO.
FLAGS_FILE = os.O_RDWR | NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | \
    getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_WAIT = 5.0  # seconds to wait for another process's upgrade of the directory


def features(platform: str, *, dir_fd: bool = True) -> frozenset[str]:
    """Which of the hardening mechanisms *platform* has.

    ``openat``: files are opened relative to the verified directory's descriptor;
    ``flock``: users hold a shared ``flock`` on it (tmp cleaners, repairs).

    Example:
        >>> sorted(features("darwin"))
        ['flock', 'openat']
        >>> sorted(features("win32"))
        []
    """
    if platform == "win32":
        return frozenset()
    return frozenset({"flock", "openat"} if dir_fd else {"flock"})


FEATURES = features(sys.platform, dir_fd=os.open in os.supports_dir_fd)


class Marker:
    """The format marker as read: its generation, and the file's identity then.

    Attributes:
        generation: the 16 hex digits written by whoever completed the directory.
        ctime, ino: the marker file's ctime (ns) and inode number when read.
        uid: its owner (who, besides the directory's owner and root, can replace it).

    Example:
        >>> Marker("0011223344556677", 0x2d, 0x1c, 0).token
        '0011223344556677.1c.2d'
    """

    __slots__ = ("ctime", "generation", "ino", "uid")

    def __init__(self, generation: str, ctime: int, ino: int, uid: int) -> None:
        self.generation, self.ctime, self.ino, self.uid = generation, ctime, ino, uid

    @property
    def token(self) -> str:
        """``<generation>.<ino hex>.<ctime hex>``: the marker as read, in one string.
        Two processes that read the same marker file, unchanged, have the same token."""
        return f"{self.generation}.{self.ino:x}.{self.ctime:x}"

    def same_file(self, info: os.stat_result) -> bool:
        """Whether *info* (an ``lstat`` of the marker's name) is this marker, unchanged
        (any write, truncation, ``chmod`` or new link moves a file's ctime)."""
        return info.st_ino == self.ino and info.st_ctime_ns == self.ctime


def shard_name(shard: int) -> str:
    """The file name of a shard, naming the ports it covers.

    Example:
        >>> shard_name(79)
        'ports-20224-20479'
    """
    start = shard << SHARD_BITS
    return f"ports-{start:05d}-{start + _SHARD_SIZE - 1:05d}"


def open_in(dirfd: int, dirpath: str, name: str, flags: int, mode: int = 0o666) -> int:
    if dirfd >= 0:
        return os.open(name, flags, mode, dir_fd=dirfd)
    return os.open(os.path.join(dirpath, name), flags, mode)


def stat_dir(fd: int, path: str) -> os.stat_result:
    """The directory's stat: by descriptor where there is one."""
    return os.fstat(fd) if fd >= 0 else os.stat(path)


def flock(fd: int, path: str, *, exclusive: bool, wait: float = _WAIT) -> bool:
    """Take (or convert to) a shared or exclusive flock, polling up to *wait* seconds.

    False if an exclusive lock could not be had in time (a failed conversion holds no
    lock at all). A file system without flock (some NFS setups) counts as held: the
    lock only keeps tmp cleaners and repairs away, never decides who gets a port.
    """
    import fcntl

    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + wait
    pause = 0.0005
    while True:
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                if exclusive:
                    return False
                raise LockDirError(errno.EBUSY, f"another process has held an exclusive "
                                   f"lock on the lock directory {path} for {wait:g} s (a "
                                   f"hung portsafe upgrade, or another user denying "
                                   f"service); see /proc/locks, or set PORTSAFE_LOCK_DIR"
                                   ) from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
            continue
        except OSError:
            return True  # ENOLCK, EOPNOTSUPP...: no flock here (docs/design.md)
        return True


def read_marker(fd: int, path: str) -> Marker | None:
    """The marker (generation, and the file's identity as read); None if it is absent
    (format 0) or not complete yet."""
    try:
        mfd = open_in(fd, path, MARKER, os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
                       | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockDirError(exc.errno, f"cannot read the lock directory's format marker "
                           f"{os.path.join(path, MARKER)}: {exc.strerror}; remove it when "
                           f"no portsafe process "
                           f"runs, or set PORTSAFE_LOCK_DIR") from None
    try:
        info = os.fstat(mfd)
        data = os.read(mfd, 4096) if stat.S_ISREG(info.st_mode) else b"-"
    finally:
        os.close(mfd)
    if not data.endswith(b"\n"):
        return None  # being written (one write() of a whole marker), or truncated
    return Marker(parse_marker(data, os.path.join(path, MARKER)), info.st_ctime_ns,
                  info.st_ino, info.st_uid)


def parse_marker(data: bytes, where: str) -> str:
    """The generation recorded in a format marker's bytes; refuses other formats.

    Raises:
        LockDirError: a newer format (this portsafe would not see its locks), or not a
            marker at all.

    Example:
        >>> parse_marker(b"portsafe lock directory\\nformat 1\\ngeneration 00112233445566"
        ...              b"77\\n", "m")
        '0011223344556677'
    """
    if data.startswith(_FAST) and len(data) == len(_FAST) + 17 and data[-1:] == b"\n":
        return data[len(_FAST):-1].decode("utf-8", "replace")  # what _write_marker writes
    lines = data.split(b"\n")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b" ")
        fields[name] = value
    version = fields.get(b"format", b"")
    if lines[0] != _HEAD or not version.isdigit():
        raise LockDirError(errno.EINVAL, f"{where} is not a portsafe format marker; remove "
                           f"it when no portsafe process runs, or set PORTSAFE_LOCK_DIR")
    if int(version) != FORMAT:
        raise LockDirError(errno.EPROTO, f"{where} says lock-directory format "
                           f"{int(version)}, but this portsafe reads format {FORMAT} only: "
                           f"the two versions would not see each other's locks. Use one "
                           f"portsafe version on this machine, or give each its own "
                           f"PORTSAFE_LOCK_DIR")
    generation = fields.get(b"generation", b"").decode("utf-8", "replace")
    if len(generation) != 16:
        raise LockDirError(errno.EINVAL, f"{where} has no valid generation; remove it when "
                           f"no portsafe process runs, or set PORTSAFE_LOCK_DIR")
    return generation


def complete(fd: int, path: str, repair: bool) -> Marker:
    """Make every missing shard file and (re)write the marker, under an exclusive flock;
    the marker afterwards.

    An upgrade (no marker) waits for others doing the same. A repair (the directory
    changed since its marker) happens only if nobody uses the directory right now:
    users may hold locks in deleted files, so those shards stay unusable (skipped)
    until every user is gone.
    """
    locking = "flock" in FEATURES and fd >= 0
    got = not locking or flock(fd, path, exclusive=True, wait=0.0)
    deadline, pause = time.monotonic() + _WAIT, 0.0005
    while not got:
        marker = read_marker(fd, path)
        if repair or marker is not None:  # in use, or completed by another process
            flock(fd, path, exclusive=False)
            marker = read_marker(fd, path) or marker
            if marker is not None:
                return marker
        if time.monotonic() >= deadline:
            flock(fd, path, exclusive=False)
            raise LockDirError(errno.EBUSY, f"the lock directory {path} has no format "
                               f"marker while processes that use it still run: someone "
                               f"deletes files there. Let them finish (or stop them), then "
                               f"retry")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
        got = flock(fd, path, exclusive=True, wait=0.0)
    try:
        marker = read_marker(fd, path)
        if marker is not None and stat_dir(fd, path).st_mtime_ns <= marker.ctime:
            return marker  # another process did it while we waited
        for index in range(SHARD_COUNT):
            _make_shard(fd, path, index)
        _write_marker(fd, path, os.urandom(8).hex())
        made = read_marker(fd, path)
        if made is None:
            raise LockDirError(errno.ENOENT, f"the format marker in {path} vanished as it "
                               f"was written; find out what deletes files there")
        _wait_past(made.ctime)
        return made
    finally:
        if locking:
            flock(fd, path, exclusive=False)


#: The coarsest clock tick a file system stamps times with (Linux: CONFIG_HZ >= 100).
_TICK_NS = 10_000_000


def _wait_past(marker_ctime: int) -> None:
    """Return once the clock is a tick past *marker_ctime*, still under the exclusive
    flock: a lock file deleted and made again later must look newer than the marker
    (``_lockdir`` skips it then), but ctimes come from a coarse clock, and one made
    again within the marker's own tick would look as old as the files made with it.
    Once per completed directory: at most 10 ms."""
    while (left := marker_ctime + _TICK_NS - time.time_ns()) > 0:
        time.sleep(left / 1e9)


def _make_shard(fd: int, path: str, index: int) -> None:
    name = shard_name(index)
    try:
        made = open_in(fd, path, name, FLAGS_FILE | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    except OSError as exc:
        raise LockDirError(exc.errno, f"cannot create lock file {name} in {path}: "
                           f"{exc.strerror}; set PORTSAFE_LOCK_DIR to a directory you can "
                           f"write, on a local disk or tmpfs") from None
    try:
        if sys.platform != "win32":
            os.fchmod(made, 0o666)  # every user's tests must be able to lock it
    finally:
        os.close(made)


def _write_marker(fd: int, path: str, generation: str) -> None:
    # Written in place after every shard exists, never renamed: its ctime then follows
    # the directory's last change, which is what _prepare compares.
    try:
        if fd >= 0:
            os.unlink(MARKER, dir_fd=fd)
        else:
            os.unlink(os.path.join(path, MARKER))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LockDirError(exc.errno, f"cannot replace the format marker in {path}: "
                           f"{exc.strerror}; its owner must remove it (or the directory) "
                           f"when no portsafe process runs") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        mfd = open_in(fd, path, MARKER, flags, 0o644)
    except OSError as exc:
        raise LockDirError(exc.errno, f"cannot write the format marker in {path}: "
                           f"{exc.strerror}; set PORTSAFE_LOCK_DIR to a directory you can "
                           f"write") from None
    try:
        if sys.platform != "win32":
            os.fchmod(mfd, 0o644)
        os.write(mfd, b"%s\nformat %d\ngeneration %s\n" % (_HEAD, FORMAT, generation.encode()))
    finally:
        os.close(mfd)
