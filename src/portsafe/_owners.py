"""Whose request is it? Process identity, pid namespaces and ancestry, for the port server.

A port server grants a port to a *process* and takes it back when that process is gone.
Three things make that safe:

* a process is named by pid *and* start time (``/proc/<pid>/stat`` field 22 on Linux),
  so a recycled pid does not keep a dead owner's ports (:func:`process_identity`);
* the claimed pid is checked against the sender the OS names (``SO_PEERCRED``): a
  sender may ask for itself or for one of its ancestors (``python -m portpicker $$``
  asks for its shell), never for an unrelated process such as pid 2 (a kernel thread)
  or the server itself, which never exit and would keep their grants for ever
  (:func:`resolve_owner`);
* a sender in a nested pid namespace (a container) is mapped to the process it means.

Only the standard library: the core and the port server build on this, never the
reverse.
"""

from __future__ import annotations

import os

__all__ = ["command_line", "process_identity", "resolve_owner"]

_MAX_DEPTH = 64  # ancestry walks are bounded: pid namespaces nest at most 32 deep


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, starttime)`` from ``/proc/<pid>/stat``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _nspids(pid: int) -> list[int]:
    """The pid of *pid* in each nested pid namespace, outermost first (Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


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
    if os.path.isdir("/proc/self"):
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
    for _ in range(_MAX_DEPTH):
        info = _proc_stat(pid)
        if info is None or info[1] <= 0:
            return False
        pid = info[1]
        if pid == claimed:
            return True
    return False


def resolve_owner(claimed: int, peer_pid: int | None) -> int | None:
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

    Args:
        claimed: The pid the client sent.
        peer_pid: The pid the OS says sent it, or None if unknown.

    Returns:
        The pid to hold the grant for, or None to refuse.

    Example:
        >>> import os
        >>> resolve_owner(os.getpid(), os.getpid()) == os.getpid()
        True
        >>> resolve_owner(os.getppid(), os.getpid()) == os.getppid()  # an ancestor
        True
        >>> resolve_owner(-5, None) is None
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
        return _owner_in_nested_namespace(claimed, peer_pid, len(peer_ns))
    if claimed == 1:
        return None
    return claimed if _is_ancestor(claimed, peer_pid) and process_identity(claimed) else None


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


def command_line(pid: int) -> str:
    """The command line of *pid*, for log lines and ``portsafe list`` (``?`` if unknown).

    Example:
        >>> import os
        >>> command_line(os.getpid()) != ""
        True
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return "?"
    return " ".join(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p) or "?"
