"""Who holds a port: the OS's socket table joined with its process table.

On Linux the kernel lists every socket of the current network namespace in
``/proc/net/{tcp,tcp6,udp,udp6}`` (local address, state, owner's uid, inode), and each
process's open sockets appear as ``/proc/<pid>/fd/* -> socket:[<inode>]``. Joining the
two names the process behind a port. Processes we may not inspect (other users', without
privileges) still show up, with ``pid=None``; an explanation names their uid. Other OSes
have no such files (nor has portsafe's own test run of their code on Linux,
``backend.PROC``): the answer there is an empty list, never an exception, so callers can
always ask.

A port's *reservation* is another thing than its sockets: on Linux, the port's name
bound by the process that reserved it (``_locking.holders`` reads who). An explanation of
``EADDRINUSE`` names the reservation too, where it is not the socket's own process: a
program that binds ports without reserving them took a port reserved for another.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct

from portsafe._errors import AddressInUseError, InvalidSettingError, public
from portsafe._system import command_line, read_proc

TYPE_CHECKING = False  # see portsafe/__init__.py

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["Holder", "explain_address_in_use", "who_holds"]

# Kernel TCP states (include/net/tcp_states.h), named as netstat/ss name them.
_TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
# A UDP socket is either connected (ESTABLISHED) or not (TCP_CLOSE, which ss calls UNCONN).
_UDP_STATES = {1: "ESTABLISHED", 7: "UNCONN"}

_TABLES = (
    ("tcp", socket.AF_INET, socket.SOCK_STREAM),
    ("tcp6", socket.AF_INET6, socket.SOCK_STREAM),
    ("udp", socket.AF_INET, socket.SOCK_DGRAM),
    ("udp6", socket.AF_INET6, socket.SOCK_DGRAM),
)
_PROC = "/proc"
_MAX_COMMAND = 120


@public
@dataclasses.dataclass(frozen=True)
class Holder:
    """One socket bound to a port, and the process that has it open (if known).

    A socket shared by several processes (a listener inherited by a server's workers)
    appears once per process. ``pid`` and ``command`` are ``None`` when the process
    cannot be inspected (another user's, without privileges) or when no process has the
    socket open any more (``TIME_WAIT``).

    Attributes:
        pid: The process id, or ``None`` if unknown.
        command: The process's command line, arguments joined by spaces, or ``None``.
        state: The socket state as ``ss`` names it: ``"LISTEN"``, ``"ESTABLISHED"``,
            ``"TIME_WAIT"``, ... and ``"UNCONN"`` for an unconnected UDP socket.
        host: The local address (``"127.0.0.1"``, ``"::"``, ``"::ffff:127.0.0.1"``).
        port: The local port.
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        socktype: ``socket.SOCK_STREAM`` or ``socket.SOCK_DGRAM``.

    Example:
        >>> import os, portsafe
        >>> with portsafe.listen() as sock:
        ...     holders = portsafe.who_holds(sock.getsockname()[1])
        >>> [(h.pid == os.getpid(), h.state) for h in holders]  # doctest: +SKIP
        [(True, 'LISTEN')]
    """

    pid: int | None
    command: str | None
    state: str
    host: str
    port: int
    family: socket.AddressFamily
    socktype: socket.SocketKind

    def describe(self) -> str:
        """Return a short human description, e.g. ``pid 4242 (python -m http.server)``.

        Returns:
            The pid and command when known, else a note that the process is unknown.

        Example:
            >>> import socket
            >>> Holder(42, "sleep 9", "LISTEN", "127.0.0.1", 80, socket.AF_INET,
            ...        socket.SOCK_STREAM).describe()
            'pid 42 (sleep 9)'
        """
        if self.pid is None:
            if self.state == "TIME_WAIT":  # a closed connection: no process has it
                return "TIME_WAIT (no process)"
            return "a process portsafe cannot inspect (another user's?)"
        return _process(self.pid, self.command)


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {port!r}")
    if not 0 <= port <= 65535:
        raise InvalidSettingError(f"port must be in 0..65535, not {port}")
    return port


def _socktypes(socktype: object) -> tuple[int, ...]:
    if socktype == 0:
        return (socket.SOCK_STREAM, socket.SOCK_DGRAM)
    if socktype in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        return (int(socktype),)  # type: ignore[call-overload]
    raise InvalidSettingError(
        f"socktype must be socket.SOCK_STREAM, socket.SOCK_DGRAM or 0 (both), not {socktype!r}"
    )


def _decode_address(hex_address: str) -> str:
    # The kernel prints each 32-bit word of the address as a number in host byte order,
    # so packing the words natively recovers the bytes in network order.
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw)


@dataclasses.dataclass(frozen=True)
class _Entry:
    inode: int
    uid: int | None
    state: str
    host: str
    port: int
    family: socket.AddressFamily
    socktype: socket.SocketKind


def _entries(port: int | None, socktypes: Iterable[int]) -> Iterator[_Entry]:
    """Yield the kernel's sockets bound to ``port`` (all ports when ``None``)."""
    wanted = set(socktypes)
    for name, family, socktype in _TABLES:
        if socktype not in wanted:
            continue
        raw = read_proc(f"{_PROC}/net/{name}")
        if raw is None:  # no /proc (not Linux), or no IPv6 in this kernel
            continue
        lines = raw.decode("ascii", "replace").splitlines()[1:]
        states = _TCP_STATES if socktype == socket.SOCK_STREAM else _UDP_STATES
        for line in lines:
            fields = line.split()
            try:
                hex_host, hex_port = fields[1].split(":")
                local_port = int(hex_port, 16)
                if port is not None and local_port != port:
                    continue
                state_code = int(fields[3], 16)
                yield _Entry(
                    inode=int(fields[9]),
                    uid=int(fields[7]),
                    state=states.get(state_code, f"STATE_{state_code:02X}"),
                    host=_decode_address(hex_host),
                    port=local_port,
                    family=family,
                    socktype=socktype,
                )
            except (IndexError, ValueError):  # a format we do not know: skip, never crash
                continue


def _listening(port: int, host: str | None = None) -> bool:
    """Whether the kernel lists a TCP listener on ``port`` that ``host`` would reach."""
    for entry in _entries(port, (socket.SOCK_STREAM,)):
        if entry.state != "LISTEN":
            continue
        if host is None or entry.host in (host, f"::ffff:{host}"):
            return True
        # A wildcard listener serves every address of its family; "::" usually serves
        # IPv4 too (IPV6_V6ONLY is off by default, and /proc does not show it).
        if entry.host == "::" or (entry.host == "0.0.0.0" and ":" not in host):
            return True
    return False


def who_holds(port: int, *, socktype: int = socket.SOCK_STREAM) -> list[Holder]:
    """Return the sockets bound to ``port`` on this machine and the processes holding them.

    Reads the kernel's tables (Linux: ``/proc/net`` and ``/proc/<pid>/fd``); it sees the
    current network namespace only. Listeners come first, then other states; within a
    state, by pid. Where the OS offers no such tables the answer is empty.

    Args:
        port: The local port to look up (1..65535).
        socktype: ``socket.SOCK_STREAM`` (TCP, the default), ``socket.SOCK_DGRAM`` (UDP)
            or ``0`` for both.

    Returns:
        A list of :class:`Holder`, one per (socket, process) pair; ``pid=None`` where the
        process could not be inspected or no process has the socket any more.

    Raises:
        TypeError: ``port`` is not an int.
        portsafe.InvalidSettingError: ``port`` is out of range or ``socktype`` unknown.

    Example:
        >>> import os, portsafe
        >>> with portsafe.listen() as sock:
        ...     port = sock.getsockname()[1]
        ...     mine = [h for h in portsafe.who_holds(port) if h.pid == os.getpid()]
        >>> [h.state for h in mine]  # doctest: +SKIP
        ['LISTEN']
    """
    return [holder for holder, _ in _holders(_check_port(port), socktype)]


def _holders(port: int, socktype: int) -> list[tuple[Holder, int | None]]:
    """who_holds(), each holder with the socket's owner's uid (from the kernel's table)."""
    from portsafe import _platform as backend
    from portsafe._locking.holders import processes_of

    socktypes = _socktypes(socktype)
    if not backend.PROC:  # the lock-file backend run on Linux does as macOS: no /proc
        return []
    entries = list(_entries(port, socktypes))
    inodes = {e.inode for e in entries if e.inode}
    pids = processes_of(inodes, every=True, proc=_PROC) if inodes else {}
    commands: dict[int, str | None] = {}
    found: list[tuple[Holder, int | None]] = []
    for entry in entries:
        entry_pids: list[int | None] = list(pids.get(entry.inode, ())) or [None]
        for pid in entry_pids:
            if pid is not None and pid not in commands:
                commands[pid] = command_line(pid, unknown="") or None
            holder = Holder(pid=pid, command=None if pid is None else commands[pid],
                            state=entry.state, host=entry.host, port=entry.port,
                            family=entry.family, socktype=entry.socktype)
            found.append((holder, entry.uid))
    found.sort(key=lambda pair: (pair[0].state != "LISTEN", pair[0].pid is None,
                                 pair[0].pid or 0))
    return found


def _is_address_in_use(exc: OSError) -> bool:
    codes = {errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)}
    return exc.errno in codes or getattr(exc, "winerror", None) in codes


def explain_address_in_use(
    exc: OSError, port: int, *, socktype: int = socket.SOCK_STREAM
) -> OSError:
    """Turn an "Address already in use" error into one that names who holds the port.

    Args:
        exc: The error raised by ``bind()``.
        port: The port that could not be bound.
        socktype: ``socket.SOCK_STREAM``, ``socket.SOCK_DGRAM`` or ``0`` (both), as for
            :func:`who_holds`.

    Returns:
        An :class:`AddressInUseError` (``errno`` ``EADDRINUSE``) whose message names the
        holders and what to do, if ``exc`` is an ``EADDRINUSE`` error; otherwise ``exc``
        itself, unchanged. Raise the result ``from exc``. A holder that is this very
        process is named so (close that socket; it is never told to kill itself); one
        that cannot be inspected is named by its uid; on Linux, the process portsafe
        reserved the port for is named too, where it is not the socket's.

    Raises:
        TypeError: ``exc`` is not an ``OSError`` or ``port`` not an int.

    Example:
        >>> import socket, portsafe
        >>> with portsafe.listen() as held, socket.socket() as sock:
        ...     port = held.getsockname()[1]
        ...     try:
        ...         sock.bind(("127.0.0.1", port))
        ...     except OSError as exc:
        ...         print(portsafe.explain_address_in_use(exc, port))  # doctest: +ELLIPSIS
        port ... is held by this very process (pid ...) on 127.0.0.1:...: close that socket...
    """
    if not isinstance(exc, OSError):
        raise TypeError(f"exc must be an OSError, not {exc!r}")
    port = _check_port(port)
    if not _is_address_in_use(exc):
        return exc
    found = _holders(port, socktype)
    holders = [holder for holder, _ in found]
    return AddressInUseError(_explain(port, found, _reserved(port)), port=port,
                             holders=holders)


def _reserved(port: int) -> tuple[int | None, str] | None:
    """Who portsafe reserved *port* for (pid, in words), where names hold reservations."""
    from portsafe import _platform as backend

    if not backend.NAMES:
        return None  # lock files: reading them opens the lock directory; not on an error
    from portsafe._locking.holders import holder_of

    holder = holder_of(port)
    if holder is None:
        return None
    if holder.pid == os.getpid():
        return holder.pid, "this very process"
    if holder.pid is not None:
        return holder.pid, _process(holder.pid, command_line(holder.pid, unknown="") or None)
    return None, holder.describe()


_ADVICE = ("pick another port (portsafe.reserve_port() hands out one nobody else gets, "
           "portsafe.listen() binds one and keeps it)")


def _explain(port: int, found: list[tuple[Holder, int | None]],
             reserved: tuple[int | None, str] | None) -> str:
    live = [(holder, uid) for holder, uid in found if holder.state != "TIME_WAIT"]
    known = [holder for holder, _ in live if holder.pid is not None]
    me = os.getpid()
    pids: list[int] = []
    parts: list[str] = []
    for holder in [h for h in known if h.state in ("LISTEN", "UNCONN")] or known:
        if holder.pid is not None and holder.pid not in pids:
            pids.append(holder.pid)
            what = f"this very process (pid {me})" if holder.pid == me else holder.describe()
            parts.append(f"{what} on {_address(holder)}")
    # The reservation, where it is not the socket's own process: someone took the port.
    note = ""
    if reserved is not None and (reserved[0] is None or reserved[0] not in pids):
        note = f", while portsafe reserved it for {reserved[1]}"
    if pids:
        held = f"port {port} is held by {', '.join(parts)}{note}"
        others = [pid for pid in pids if pid != me]
        if not others:  # never advise a process to kill itself
            return f"{held}: close that socket before binding the port again, or {_ADVICE}"
        stop = "stop it" if len(others) == 1 else "stop them"
        if me in pids:
            stop = f"close this process's socket and {stop}"
        return f"{held}; {_ADVICE}, or {stop} (kill {' '.join(map(str, others))})"
    if live:
        holder, uid = live[0]
        who, why = _unseen(uid)
        return (f"port {port} is held by {who} that portsafe cannot inspect ({holder.state} "
                f"on {_address(holder)}; {why}){note}; {_ADVICE}")
    if found:
        return (f"port {port} has only connections in TIME_WAIT, held by no process{note}: "
                f"set SO_REUSEADDR on the server socket or wait for them to expire; or "
                f"{_ADVICE}")
    return (f"port {port} is in use, but the OS did not say by whom (another network "
            f"namespace or an OS without /proc){note}; {_ADVICE}")


def _unseen(uid: int | None) -> tuple[str, str]:
    """(who, why) for a socket whose process could not be read, owned by *uid*."""
    if uid is None:
        return "a process", "another user's, or run as root to see it"
    elsewhere = "in another pid namespace (a container?)"
    if uid == os.geteuid():
        return (f"a process of yours (uid {uid})",
                f"{elsewhere}, or its socket is on its way between processes")
    if os.geteuid() == 0:
        return f"a process of another user (uid {uid})", elsewhere
    return f"a process of another user (uid {uid})", "run as root to see which"


def _process(pid: int, command: str | None) -> str:
    """``pid 42 (sleep 9)``: the command on one line, cut to a readable length."""
    if not command:
        return f"pid {pid}"
    command = " ".join(command.split())
    if len(command) > _MAX_COMMAND:
        command = command[: _MAX_COMMAND - 3] + "..."
    return f"pid {pid} ({command})"


def _address(holder: Holder) -> str:
    if holder.family == socket.AF_INET6:
        return f"[{holder.host}]:{holder.port}"
    return f"{holder.host}:{holder.port}"
