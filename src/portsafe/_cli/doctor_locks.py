"""``portsafe doctor``'s record-lock check: do locks work on the lock directory's file
system? (NFS, FUSE and some container file systems differ.)

Working means *enforced*: a lock call that is accepted but excludes nobody (a file
system whose lock operations are stubs, as some FUSE mounts have) would let two
processes reserve one port. So the check takes a lock in one process and has another
process, through its own open of the file, ask for the same byte: that second call must
be refused. Only then does it ask who holds the byte (``F_GETLK``, which ``portsafe
list`` relies on) and whether the lock goes with its process.
"""

from __future__ import annotations

import os

try:  # imported here, not in the forked child: a child must not take the import lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from portsafe._cli.checks import CheckResult
from portsafe._cli.doctor_lockdir import _lock_dir
from portsafe._locking.recordlock import BUSY, fcntl_lock

__all__ = ["check_record_locks"]

# File systems whose record locks are local to one machine or emulated (NFS with a
# working lockd is coordinated across clients, but only while the lock daemons agree).
_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs",
               "lustre", "afs", "sshfs")


def _mount_of(where: str) -> tuple[str, str]:
    """(mount point, file system type) of the mount holding *where* (Linux)."""
    best = ("", "unknown")
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
            lines = info.read().splitlines()
    except OSError:
        return best
    real = os.path.realpath(where)
    for line in lines:
        left, _sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail:
            continue
        point = fields[4].replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) \
                and len(point) >= len(best[0]):
            best = (point, tail[0])
    return best


def _probe_dir(where: str) -> str | None:
    """A directory on the lock directory's file system where a probe file may go: its
    parent if on the same file system (the shared directory itself is left alone), else
    the directory."""
    def usable(path: str) -> bool:
        return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)

    parent = os.path.dirname(where) or "/"
    try:
        same = os.stat(parent).st_dev == os.stat(where).st_dev
    except OSError:
        same = True  # no directory yet: it will be created in the parent
    if same and usable(parent):
        return parent
    return where if usable(where) else None


def _lockf(fd: int, kind: int, start: int, *, query: bool = False) -> int | None:
    """Set (or, with *query*, test) a one-byte record lock; the holder's pid if any."""
    seen, _, _, pid = fcntl_lock(fd, fcntl.F_GETLK if query else fcntl.F_SETLK, kind, start, 1)
    return None if not query or seen == fcntl.F_UNLCK else pid


_BYTE = 7  # the byte of the probe file that both processes ask for


def _conflicting_lock_granted(fd: int) -> bool | str:
    """Ask for a write lock on :data:`_BYTE` of *fd*: True if granted (then dropped
    again), False if refused as held by another process; else why the call failed."""
    try:
        _lockf(fd, fcntl.F_WRLCK, _BYTE)
    except OSError as exc:
        return False if exc.errno in BUSY else f"a lock call failed: {exc.strerror}"
    _lockf(fd, fcntl.F_UNLCK, _BYTE)
    return True


def _while_held(fd: int, pid: int) -> str | None:
    """None if, while process *pid* holds :data:`_BYTE`, this process's lock call on it
    is refused and ``F_GETLK`` names *pid*; else what went wrong."""
    granted = _conflicting_lock_granted(fd)
    if granted is True:
        return (f"a lock on a byte that process {pid} holds was granted to another process "
                f"too: lock calls are accepted here but not enforced, so two processes "
                f"could reserve the same port")
    if granted is not False:
        return granted
    seen = _lockf(fd, fcntl.F_WRLCK, _BYTE, query=True)
    if seen != pid:
        return (f"a lock held by process {pid} is reported as held by {seen}"
                if seen else f"a lock held by process {pid} is not seen by others")
    return None


def _locks_work(probe: str) -> str | None:
    """None if a lock taken by a child, through its own open of *probe*, makes this
    process's lock call on the same byte fail, is reported with the child's pid, and is
    gone once the child is; else what went wrong."""
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        ready_r, ready_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                own = os.open(probe, os.O_RDWR | os.O_NOFOLLOW)  # its own open file
                _lockf(own, fcntl.F_WRLCK, _BYTE)
                os.write(ready_w, b"y")
            except OSError as exc:
                os.write(ready_w, f"n{exc.strerror}".encode())
                code = 1
            os.read(done_r, 1)
            os._exit(code)
        os.close(ready_w)
        os.close(done_r)
        try:
            said = os.read(ready_r, 4096).decode(errors="replace")
            problem = _while_held(fd, pid) if said.startswith("y") else \
                f"taking a record lock failed: {said[1:] or 'no answer'}"
            if problem is not None:
                return problem
        finally:
            os.write(done_w, b"x")
            os.close(done_w)
            os.close(ready_r)
            os.waitpid(pid, 0)
        if _lockf(fd, fcntl.F_WRLCK, _BYTE, query=True) is not None:
            return "a lock outlived the process that held it"
        granted = _conflicting_lock_granted(fd)
        if granted is False:
            return "a lock outlived the process that held it (a lock call is still refused)"
        return None if granted is True else granted
    finally:
        os.close(fd)
        os.unlink(probe)


def check_record_locks(path: str | None = None) -> CheckResult:
    """Record locks work on the lock directory's file system: a lock taken in a child
    process refuses the parent's lock call on the same byte, is reported with the
    child's pid (``F_GETLK``), and is gone once the child exits.

    Example:
        >>> check_record_locks("/tmp").name
        'lock_dir.record_locks'
    """
    name = "lock_dir.record_locks"
    where = _lock_dir(path)
    if not hasattr(os, "fork") or fcntl is None:  # pragma: no cover - Windows: other locks
        return CheckResult(name, True, "not tested on this OS (no fork)")
    point, fstype = _mount_of(where)
    on = f"{fstype} file system at {point}" if point else "its file system"
    directory = _probe_dir(where)
    if directory is None:
        return CheckResult(name, True, f"not tested: neither {where} nor its parent is "
                           "writable by you")
    probe = os.path.join(directory, f".portsafe-doctor-{os.getpid()}")
    try:
        problem = _locks_work(probe)
    except OSError as exc:
        problem = f"the test failed: {exc.strerror or exc}"
    if problem is not None:
        return CheckResult(name, False, f"record locks do not work on {on}: {problem}",
                           "set PORTSAFE_LOCK_DIR to a directory on a local file system "
                           "(e.g. under /tmp or /run)")
    if fstype.split(".")[0] in _NETWORK_FS or fstype.startswith("fuse"):
        return CheckResult(name, False, f"record locks work here, but {on} is a network or "
                           "user-space file system: processes on other machines, or "
                           "behind another mount of it, may not see them",
                           "set PORTSAFE_LOCK_DIR to a directory on a local file system")
    return CheckResult(name, True, f"record locks work on {on} (a child's lock refuses "
                       "another process's lock on the same byte, names its holder, and "
                       "is dropped when the child exits)")
