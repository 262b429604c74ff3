"""Announcing the users of a lock directory (Linux): who would a new directory betray?

Record locks live in files; a directory that is deleted and made again (``rm -rf``, a tmp
cleaner) starts empty while the old one's users still hold their ports in the deleted
files. They are invisible to the new one, so each user also binds an abstract unix
socket named::

    portsafe-lockdir-1/<16 hex digits of the directory's path>/<marker token>/<pid>

The marker token (``_lockformat.Marker.token``) is the format marker's generation and the
identity of the marker file as this user read it (inode number and ctime): a directory
made again has another generation, and a marker replaced or rewritten in place (which
the directory's owner can do, with the same generation) has another inode or ctime.

Abstract sockets need no file, vanish with their process (even after SIGKILL), are
listed in ``/proc/net/unix`` for every user to read, and are scoped per network
namespace, exactly like the ports they protect. A process that finds a user of another
token at the same path refuses the directory, naming the pids (:func:`stale_users`).

Anyone can bind such a name, so a forged announcement only denies service; nobody can
hide another process's real one. Other systems have no abstract sockets (nor has the
lock-file backend's test-only run on Linux, which runs what they run): there a deletion,
or a marker replaced, is noticed by the old users only, at their next reservation.
"""

from __future__ import annotations

import errno
import os

from portsafe._errors import LockDirError

__all__ = ["announce", "announced", "dir_key", "generation_of", "pids", "stale_users"]

_PREFIX = b"portsafe-lockdir-1/"


def dir_key(fd: int, path: str) -> bytes:
    """16 hex digits naming the directory's path as the kernel sees it (every alias of
    one directory gives the same): stable across processes, no hashlib import.

    Example:
        >>> len(dir_key(-1, "/tmp/portsafe-locks"))
        16
    """
    try:
        real = os.readlink(f"/proc/self/fd/{fd}") if fd >= 0 else path
    except OSError:
        real = path
    # One big-integer operation (the largest 64-bit prime): a collision could only make
    # two directories refuse each other, never hide a user.
    return b"%016x" % (int.from_bytes(os.fsencode(real), "little") % 0xFFFFFFFFFFFFFFC5)


def announce(key: bytes, token: str) -> object:
    """Bind this process's announcement of the directory *key* as it read its marker
    (*token*); the socket (keep it open), or None if taken.

    Example:
        >>> sock = announce(b"0" * 16, "f" * 16 + ".1c.2d")
        >>> (sock is None) or ("f" * 16 + ".1c.2d", os.getpid()) in announced(b"0" * 16, None)
        True
        >>> getattr(sock, "close", lambda: None)()
    """
    import socket

    name = b"\0" + _PREFIX + key + b"/" + token.encode() + b"/%d" % os.getpid()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0))
    try:
        sock.bind(name)
    except OSError:
        sock.close()  # someone squats our name: we are then merely unannounced
        return None
    return sock


def announced(key: bytes, token: str | None,
              table: bytes | None = None) -> list[tuple[str, int]]:
    """(token, pid) of every announced user of the directory *key* in this network
    namespace (of *token* only, if given), from ``/proc/net/unix`` or *table*.

    Example:
        >>> row = b"0: 00000002 00000000 00010000 0002 01 77 @portsafe-lockdir-1/k/g/42\\n"
        >>> announced(b"k", None, row)
        [('g', 42)]
    """
    if table is None:
        table = _read("/proc/net/unix")
    needle = b"@" + _PREFIX + key + b"/"
    found = []
    at = table.find(needle)
    while at >= 0:
        end = table.find(b"\n", at)
        rest = table[at + len(needle):end if end >= 0 else len(table)].split(b"/")
        if len(rest) == 2 and rest[1].strip().isdigit():
            seen = rest[0].decode("utf-8", "replace")
            if token is None or seen == token:
                found.append((seen, int(rest[1])))
        at = table.find(needle, at + 1)
    return found


def _read(path: str) -> bytes:
    """A whole /proc file, without the io stack (this runs once per process)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def pids(users: list[tuple[str, int]]) -> str:
    """`` (pids 1, 2)`` for a message, or ``""``.

    Example:
        >>> pids([("g", 2), ("h", 1)])
        ' (pids 1, 2)'
    """
    return f" (pids {', '.join(str(pid) for pid in sorted({p for _, p in users}))})" \
        if users else ""


def generation_of(token: str) -> str:
    """The generation part of a marker token.

    Example:
        >>> generation_of("0011223344556677.1c.2d")
        '0011223344556677'
    """
    return token.partition(".")[0]


def stale_users(path: str, users: list[tuple[str, int]],
                generation: str | None = None) -> LockDirError:
    """The error for a directory made again, or whose format marker was replaced, while
    users of the old one (or of the old marker) still run. *generation* is the marker's
    as read now: users of the same generation saw another marker file.

    Example:
        >>> print(stale_users("/d", [("g", 7)]).errno == errno.EBUSY)
        True
        >>> "marker" in stale_users("/d", [("g.1.2", 7)], "g").strerror
        True
    """
    if generation is not None and all(generation_of(token) == generation
                                      for token, _ in users):
        return LockDirError(errno.EBUSY, f"the format marker of the lock directory {path} "
                            f"was replaced or rewritten while processes that use the "
                            f"directory still run{pids(users)}: lock files may have been "
                            f"replaced under them too, so portsafe will not reserve here. "
                            f"Let them finish (or stop them), then remove the directory; "
                            f"its owner (or root) tampered with it: set PORTSAFE_LOCK_DIR to "
                            f"a directory only you and root can change")
    return LockDirError(errno.EBUSY, f"the lock directory {path} was deleted and made again "
                        f"while processes that used the old one still run{pids(users)}: "
                        f"they may hold ports this directory knows nothing of, so portsafe "
                        f"will not reserve here. Let them finish (or stop them), then retry; "
                        f"find out what deletes the directory (a tmp cleaner?)")
