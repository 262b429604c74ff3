"""Processes as the OS shows them: identity, ancestry, command lines, and ``/proc`` reads.

:func:`read_proc` is the one reader of ``/proc`` files (None where one cannot be read),
and :func:`command_line` the one way to name a process's command.

A port server grants a port to a *process* and takes it back when that process is gone.
Three things make that safe:

* a process is named by pid *and* start time (``/proc/<pid>/stat`` field 22 on Linux),
  so a recycled pid does not keep a dead owner's ports (:func:`process_identity`);
* the claimed pid is checked against the sender the OS names (``SO_PEERCRED``): a
  sender may ask for itself or for one of its ancestors (``python -m portpicker $$``
  asks for its shell), never for an unrelated process such as pid 2 (a kernel thread)
  or the server itself, which never exit and would keep their grants for ever
  (:func:`resolve_owner`);
* an ancestor must be a process of the sender's own user (real and effective uid), unless
  the sender is root: otherwise any user could make a server hold ports for a long-lived
  process of another user's (an ``sshd`` session, a ``tmux`` server, a CI agent, all
  root's) until it exits;
* a sender in a nested pid namespace (a container) is mapped to the process it means.

``/proc`` is read only where the lock system may (``_platform.PROC``: Linux, not
the file backend's test channel, which runs what macOS runs); without it a process has no
start time and no ancestry, so only the sender itself is granted for.

Only the standard library and ``_platform``: the core and the port server build on
this, never the reverse.
"""

from __future__ import annotations

import os

from portsafe import _platform as backend

__all__ = ["command_line", "process_identity", "process_uids", "read_proc", "resolve_owner"]

_MAX_DEPTH = 64  # ancestry walks are bounded: pid namespaces nest at most 32 deep


def read_proc(path: str) -> bytes | None:
    """The whole of a ``/proc`` file (any small kernel file), or None if it cannot be read.

    ``os.read`` without the io stack: ``open()`` costs more than the read, and text mode
    would import a codec, on paths that run once in every process.

    Example:
        >>> read_proc("/nonexistent/file") is None
        True
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, starttime)`` from ``/proc/<pid>/stat``, or None."""
    raw = read_proc(f"/proc/{pid}/stat")
    if raw is None:
        return None
    text = raw.decode("ascii", "replace")
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _status(pid: int, field: str) -> list[int]:
    """The numbers of one line of ``/proc/<pid>/status`` (``NSpid``, ``Uid``), or []."""
    raw = read_proc(f"/proc/{pid}/status") if backend.PROC else None
    for line in (raw or b"").decode("ascii", "replace").splitlines():
        if line.startswith(field):
            try:
                return [int(x) for x in line.split()[1:]]
            except ValueError:
                return []
    return []


def _nspids(pid: int) -> list[int]:
    """The pid of *pid* in each nested pid namespace, outermost first (Linux)."""
    return _status(pid, "NSpid:")


def process_uids(pid: int) -> tuple[int, int] | None:
    """``(real uid, effective uid)`` of *pid*, or None where it cannot be read.

    Example:
        >>> import os
        >>> process_uids(os.getpid()) in ((os.getuid(), os.geteuid()), None)
        True
    """
    uids = _status(pid, "Uid:")
    return (uids[0], uids[1]) if len(uids) >= 2 else None


def process_identity(pid: int) -> tuple[int, int] | None:
    """Return ``(pid, start time)`` of a live process, or None if it is gone.

    The start time (clock ticks since boot on Linux, 0 where the OS does not tell) tells
    a process from a later one that got the same pid. A zombie counts as gone.

    Args:
        pid: A process id in this process's pid namespace.

    Returns:
        The identity, or None.

    Example:
        >>> import os
        >>> process_identity(os.getpid()) is not None
        True
    """
    if pid <= 0:
        return None
    if backend.PROC:
        info = _proc_stat(pid)
        if info is None or info[0] in ("Z", "X"):
            return None
        return pid, info[2]
    try:
        os.kill(pid, 0)
    except PermissionError:
        return pid, 0
    except OSError:
        return None
    return pid, 0


def _is_ancestor(claimed: int, pid: int) -> bool:
    """Whether *claimed* is a parent, grandparent, ... of *pid* (Linux ``/proc``)."""
    if not backend.PROC:
        return False
    for _ in range(_MAX_DEPTH):
        info = _proc_stat(pid)
        if info is None or info[1] <= 0:
            return False
        pid = info[1]
        if pid == claimed:
            return True
    return False


def resolve_owner(claimed: int, peer_pid: int | None, peer_uid: int | None) -> int | None:
    """Decide which process a request is for, from the claimed pid and the real sender.

    * no peer credentials: trust the claim, as portpicker does (a live pid other than 1
      and other than this server's own);
    * claim equals the sender: the sender;
    * the sender is in a nested pid namespace (a container; its own pid, or a parent's,
      means nothing here): the sender's ancestor that has the claimed pid in the sender's
      namespace (pid 1 there is the container's init), else the sender itself;
    * same namespace: a live ancestor of the sender other than pid 1 (a script asking
      for its shell, ``python -m portpicker $$``). Anything else is refused: an
      unrelated process (pid 2, this server) may never exit, and its grants would never
      come back. Where there is no ``/proc`` (macOS), ancestry cannot be read, so only
      the sender itself is accepted.

    An ancestor (either way) is accepted only if it is a process of *peer_uid*: its
    real and effective uid are both *peer_uid*. Root (uid 0) may ask for anyone's; a
    sender whose uid is unknown, or an ancestor whose uids cannot be read, is refused.

    Args:
        claimed: The pid the client sent.
        peer_pid: The pid the OS says sent it, or None if unknown.
        peer_uid: The uid the OS says sent it (``SO_PEERCRED``), or None if unknown.

    Returns:
        The pid to hold the grant for, or None to refuse.

    Example:
        >>> import os
        >>> resolve_owner(os.getpid(), os.getpid(), os.geteuid()) == os.getpid()
        True
        >>> resolve_owner(os.getppid(), os.getpid(), 0) == os.getppid()  # root's: any ancestor
        True
        >>> resolve_owner(-5, None, None) is None
        True
    """
    if claimed <= 0:
        return None
    if peer_pid is None:
        trusted = claimed not in (1, os.getpid()) and process_identity(claimed)
        return claimed if trusted else None
    if peer_pid == claimed:
        return claimed
    depth = len(_nspids(os.getpid()))
    peer_ns = _nspids(peer_pid)
    if depth and len(peer_ns) > depth:
        owner = _owner_in_nested_namespace(claimed, peer_pid, len(peer_ns))
        return owner if owner == peer_pid or _same_user(owner, peer_uid) else peer_pid
    mine = claimed != 1 and _is_ancestor(claimed, peer_pid) and _same_user(claimed, peer_uid)
    return claimed if mine and process_identity(claimed) else None


def _same_user(pid: int, uid: int | None) -> bool:
    """Whether a request of *uid* may be granted for *pid*: root's for anyone, another
    user's only for a process of that user (real and effective uid)."""
    if uid == 0:
        return True
    return uid is not None and process_uids(pid) == (uid, uid)


def _owner_in_nested_namespace(claimed: int, peer_pid: int, depth: int) -> int:
    """The sender's ancestor whose pid in the sender's namespace is *claimed*, else the
    sender."""
    pid = peer_pid
    for _ in range(_MAX_DEPTH):
        ns = _nspids(pid)
        if len(ns) != depth:
            break
        if ns[-1] == claimed:
            return pid
        stat_ = _proc_stat(pid)
        if stat_ is None or stat_[1] <= 1:
            break
        pid = stat_[1]
    return peer_pid


def command_line(pid: int, unknown: str = "?") -> str:
    """The command line of *pid*, arguments joined by spaces; *unknown* if it cannot be read.

    A kernel thread has no arguments: its name in brackets stands in (``[kthreadd]``),
    as ``ps`` shows it.

    Example:
        >>> import os
        >>> command_line(os.getpid()) != ""
        True
        >>> command_line(-1, unknown="")
        ''
    """
    raw = read_proc(f"/proc/{pid}/cmdline") if pid > 0 else None
    if raw is None:
        return unknown
    args = [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]
    if args:
        return " ".join(args)
    comm = read_proc(f"/proc/{pid}/comm")
    return f"[{comm.decode('utf-8', 'replace').strip()}]" if comm else unknown
